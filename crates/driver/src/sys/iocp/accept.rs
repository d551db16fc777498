//! Accepting with `AcceptEx`: sockets made in advance, several accepts kept posted, the peer's
//! address read with `GetAcceptExSockaddrs`, `SO_UPDATE_ACCEPT_CONTEXT` on every accepted socket.
//!
//! A listening socket can be associated with one completion port only, and `AcceptEx` completes
//! on the port of the *listening* socket. Every worker's driver is asked to accept on the same
//! listener (through duplicated handles of it, which share the association), so the first port to
//! associate it becomes its **owner** and posts the accepts; the others find it taken
//! (`ERROR_INVALID_PARAMETER`) and are **dormant**: their accept is armed but posts nothing and
//! completes only when it is cancelled. The server hands each connection to the worker owning a
//! free slot anyway (`Command::Adopt`), so one accepting port serves them all.
//!
//! Which port owns which listener is decided by the socket *object*, not its address or handle
//! value: the owner keeps a duplicate handle of the listener it associated for as long as it
//! lives (the association cannot be undone anyway), and a process-wide list holds those handles.
//! A port that finds the listener already associated compares it (`CompareObjectHandles`) with
//! its own listener, then with the owners' ones: its own, it accepts; a live owner's, it is
//! dormant; nobody's (the owning port is gone), accepting fails with an error, never silently.
//! The association and the list change together, under the list's lock.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::windows::io::{AsRawSocket, FromRawSocket, RawSocket};
use std::ptr;
use std::sync::Mutex;

use socket2::Socket;
use windows_sys::Win32::Foundation::{ERROR_INVALID_PARAMETER, HANDLE};
use windows_sys::Win32::Networking::WinSock::{
    INVALID_SOCKET, LPFN_ACCEPTEX, LPFN_GETACCEPTEXSOCKADDRS, SIO_GET_EXTENSION_FUNCTION_POINTER,
    SOCKADDR, SOCKADDR_STORAGE, SOCKET, WSAECONNRESET, WSAID_ACCEPTEX, WSAID_GETACCEPTEXSOCKADDRS,
    WSAIoctl,
};
use windows_sys::Win32::System::IO::OVERLAPPED;
use windows_sys::core::GUID;

use super::overlapped::{Entry, Table};
use super::socket::{self, IO_PENDING, WIN_TRUE};
use super::{KEY_LISTENER, canceled};
use crate::sys::Completion;

/// Room for one address in an `AcceptEx` buffer: the largest address plus the 16 bytes the
/// function requires.
const ADDR_LEN: usize = size_of::<SOCKADDR_STORAGE>() + 16;

/// Listeners associated with a live port: the owner's own handle of each (kept open while the
/// entry exists, so it names the socket object) and the owning port's id.
static OWNERS: Mutex<Vec<(SOCKET, u64)>> = Mutex::new(Vec::new());

/// What one posted `AcceptEx` writes: its `OVERLAPPED`, then the local and remote addresses.
#[repr(C)]
struct AcceptBuf {
    overlapped: OVERLAPPED,
    addrs: [u8; 2 * ADDR_LEN],
}

// SAFETY: `#[repr(C)]`, `OVERLAPPED` first, plain old data (all zeroes is valid).
unsafe impl Entry for AcceptBuf {}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    /// Not posted.
    Idle,
    /// Posted; its packet will come.
    Pending,
    /// Completed at once (skip-on-success): no packet comes, the next wait handles it.
    Done,
}

/// One of the accepts kept posted.
struct Op {
    /// The socket made for the connection it will accept, `INVALID_SOCKET` when idle.
    socket: SOCKET,
    state: State,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    /// This port owns the listener's association: it posts the accepts.
    Owner,
    /// Another port owns it: nothing is posted; the accept completes when cancelled.
    Dormant,
}

/// The extension functions of the listener's provider (`WSAIoctl(SIO_GET_EXTENSION_FUNCTION_POINTER)`).
#[derive(Clone, Copy)]
struct Extensions {
    accept_ex: unsafe extern "system" fn(
        SOCKET,
        SOCKET,
        *mut core::ffi::c_void,
        u32,
        u32,
        u32,
        *mut u32,
        *mut OVERLAPPED,
    ) -> i32,
    get_sockaddrs: unsafe extern "system" fn(
        *const core::ffi::c_void,
        u32,
        u32,
        u32,
        *mut *mut SOCKADDR,
        *mut i32,
        *mut *mut SOCKADDR,
        *mut i32,
    ),
}

/// Where accepted connections (or the final completion) go.
pub(super) type Emit<'e> = &'e mut dyn FnMut(io::Result<Socket>, bool);

/// The accept side of one port.
pub(super) struct Acceptor {
    /// This port's id in [`OWNERS`].
    port_id: u64,
    /// Accepts kept posted while armed.
    depth: usize,
    /// Armed: the final completion (`more == false`) has not been emitted.
    armed: bool,
    canceling: bool,
    role: Role,
    listener: SOCKET,
    family: u16,
    /// Skip-on-success is in effect on the listener.
    skip: bool,
    ext: Option<Extensions>,
    /// The listener this port's completion port is associated with (its own handle of it, kept
    /// while the port lives; its raw value is in [`OWNERS`]), and whether skip-on-success is in
    /// effect on it.
    owned: Option<(Socket, bool)>,
    /// Made when this port first owns a listener.
    bufs: Option<Table<AcceptBuf>>,
    ops: Vec<Op>,
    /// Ops `Pending` or `Done`.
    outstanding: usize,
    /// Ops that completed at once, handled by the next wait.
    done: Vec<usize>,
}

impl Acceptor {
    pub(super) fn new(port_id: u64, depth: usize) -> Acceptor {
        Acceptor {
            port_id,
            depth: depth.max(1),
            armed: false,
            canceling: false,
            role: Role::Dormant,
            listener: INVALID_SOCKET,
            family: 0,
            skip: false,
            ext: None,
            owned: None,
            bufs: None,
            ops: Vec::new(),
            outstanding: 0,
            done: Vec::new(),
        }
    }

    /// Whether an operation of the kernel may still write into this acceptor's buffers.
    pub(super) fn has_outstanding(&self) -> bool {
        self.outstanding > 0
    }

    /// Whether accepts completed at once wait for the next wait.
    pub(super) fn has_done(&self) -> bool {
        !self.done.is_empty()
    }

    /// Starts accepting on `listener`: posts `depth` accepts if this port owns (or can take) the
    /// listener's association, else arms a dormant accept.
    pub(super) fn arm(&mut self, port: HANDLE, listener: &Socket, emit: Emit<'_>) {
        debug_assert!(!self.armed, "accept armed twice");
        debug_assert_eq!(self.outstanding, 0);
        self.armed = true;
        self.canceling = false;
        let claimed = socket::local_addr(listener.as_raw_socket() as SOCKET)
            .and_then(|addr| Ok((addr, self.claim(port, listener)?)));
        let listener = listener.as_raw_socket() as SOCKET;
        let (addr, skip) = match claimed {
            Ok((addr, Some(skip))) => (addr, skip),
            Ok((addr, None)) => {
                tracing::debug!(
                    "iocp: the listener on {addr} is associated with another worker's port: \
                     this port accepts nothing (connections are handed to it)"
                );
                self.role = Role::Dormant;
                return;
            }
            Err(e) => {
                self.armed = false;
                emit(Err(e), false);
                return;
            }
        };
        self.role = Role::Owner;
        self.listener = listener;
        self.family = if addr.is_ipv4() {
            windows_sys::Win32::Networking::WinSock::AF_INET
        } else {
            windows_sys::Win32::Networking::WinSock::AF_INET6
        };
        self.skip = skip;
        if self.ext.is_none() {
            match load_extensions(listener) {
                Ok(ext) => self.ext = Some(ext),
                Err(e) => {
                    self.armed = false;
                    emit(Err(e), false);
                    return;
                }
            }
        }
        if self.bufs.is_none() {
            self.bufs = Some(Table::new(self.depth));
            self.ops = (0..self.depth)
                .map(|_| Op {
                    socket: INVALID_SOCKET,
                    state: State::Idle,
                })
                .collect();
        }
        tracing::debug!(
            "iocp: accepting on {addr} with {} AcceptEx posted",
            self.depth
        );
        for i in 0..self.depth {
            if let Err(e) = self.post(i) {
                self.fail(e, emit);
                return;
            }
        }
    }

    /// Stops accepting: pending accepts are cancelled; the final completion (`more == false`)
    /// follows when the last one has completed.
    pub(super) fn cancel(&mut self, emit: Emit<'_>) {
        if !self.armed || self.canceling {
            return;
        }
        self.canceling = true;
        if self.role == Role::Owner {
            let bufs = self.bufs.as_ref().expect("an owner has buffers");
            for (i, op) in self.ops.iter().enumerate() {
                if op.state == State::Pending {
                    // SAFETY: the address is one of this port's `OVERLAPPED`s; it is compared
                    // only.
                    unsafe { socket::cancel(self.listener, bufs.overlapped(i)) };
                }
            }
        }
        self.settle(emit);
    }

    /// Handles the accepts that completed at once.
    pub(super) fn deliver_done(&mut self, emit: Emit<'_>) {
        // Taken whole: accepts posted again meanwhile and done at once wait for the next wait.
        for i in std::mem::take(&mut self.done) {
            self.finish(i, Ok(()), emit);
        }
    }

    /// Handles the packet of an accept. Returns false if `overlapped` is not one of ours.
    pub(super) fn complete(&mut self, overlapped: *mut OVERLAPPED, emit: Emit<'_>) -> bool {
        let Some(i) = self.bufs.as_ref().and_then(|b| b.index_of(overlapped)) else {
            return false;
        };
        if self.ops[i].state != State::Pending {
            tracing::error!("iocp: a packet for an accept that is not pending; ignored");
            return true;
        }
        // SAFETY: the packet was dequeued, so the operation is over and its `OVERLAPPED` is ours
        // to read.
        let status = unsafe { ptr::addr_of!((*overlapped).Internal).read() };
        let result = if socket::nt_success(status) {
            Ok(())
        } else {
            // SAFETY: the operation on the listener has completed (its packet was dequeued).
            unsafe { socket::overlapped_result(self.listener, overlapped) }.map(drop)
        };
        self.finish(i, result, emit);
        true
    }

    /// Gives the kernel's buffers up for ever (a port dropped with accepts still pending, which
    /// [`Acceptor::cancel`] has asked to end): the sockets made for them are closed, so that no
    /// connection is accepted into a socket nobody sees, but the buffers, which the kernel may
    /// still write, are never freed.
    pub(super) fn leak(&mut self) {
        if let Some(bufs) = self.bufs.take() {
            bufs.leak();
        }
        for op in self.ops.drain(..) {
            if op.socket != INVALID_SOCKET {
                socket::close(op.socket);
            }
        }
        self.outstanding = 0;
    }

    /// Forgets this port's association (the port is going away): from now on nobody owns the
    /// listener.
    pub(super) fn forget_owned(&mut self) {
        lock_owners().retain(|&(_, id)| id != self.port_id);
        self.owned = None;
    }

    /// Associates `listener` with `port` unless it is associated already. `Some(skip mode)` when
    /// this port owns the association (now or from an earlier call), `None` when another live
    /// port does; an error when no live port does (the association outlives the port that made
    /// it: nobody can accept on that socket any more).
    fn claim(&mut self, port: HANDLE, listener: &Socket) -> io::Result<Option<bool>> {
        let raw = listener.as_raw_socket() as SOCKET;
        let mut owners = lock_owners();
        if let Some((own, skip)) = &self.owned {
            if socket::same_socket(own.as_raw_socket() as SOCKET, raw) {
                return Ok(Some(*skip));
            }
        }
        match socket::associate(port, raw, KEY_LISTENER) {
            Ok(()) => {
                let skip = socket::skip_completion_on_success(raw);
                let own = listener.try_clone()?;
                owners.retain(|&(_, id)| id != self.port_id);
                owners.push((own.as_raw_socket() as SOCKET, self.port_id));
                // The listener this port owned before (if any) is of no use to anyone now.
                self.owned = Some((own, skip));
                Ok(Some(skip))
            }
            Err(e) if e.raw_os_error() == Some(ERROR_INVALID_PARAMETER as i32) => {
                if owners.iter().any(|&(h, _)| socket::same_socket(h, raw)) {
                    Ok(None)
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "the listening socket is associated with a completion port that is gone \
                         (or not this driver's): no port can accept on it; listen on a new socket",
                    ))
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Posts accept `i` with a new socket.
    fn post(&mut self, i: usize) -> io::Result<()> {
        // A hard check: posting with a pending `OVERLAPPED` would hand it to the kernel twice.
        assert_eq!(self.ops[i].state, State::Idle, "accept posted twice");
        let ext = self.ext.expect("extensions are loaded before posting");
        let bufs = self.bufs.as_ref().expect("an owner has buffers");
        loop {
            let accepted = socket::new_stream_socket(self.family)?;
            // SAFETY: the op is idle, so nothing pends on its entry.
            unsafe { bufs.reset(i) };
            let entry = bufs.get(i);
            let mut bytes = 0u32;
            // SAFETY:
            // - `entry` is this op's zeroed `AcceptBuf`, at a stable address, used by nothing
            //   else until the op completes (its state says so), and never freed while pending
            //   (`leak`);
            // - the address buffer is `2 * ADDR_LEN` bytes: no data is received (0), and each
            //   address gets `ADDR_LEN` bytes, 16 more than the largest address;
            // - `accepted` is a fresh unbound overlapped socket, owned by the op from now on.
            let ok = unsafe {
                (ext.accept_ex)(
                    self.listener,
                    accepted,
                    ptr::addr_of_mut!((*entry).addrs).cast(),
                    0,
                    ADDR_LEN as u32,
                    ADDR_LEN as u32,
                    &mut bytes,
                    entry.cast(),
                )
            };
            let started = if ok == WIN_TRUE {
                Some(true)
            } else {
                let e = socket::last_wsa_error();
                match e.raw_os_error() {
                    Some(IO_PENDING) => Some(false),
                    // A connection reset before we took it: take the next one.
                    Some(WSAECONNRESET) => None,
                    _ => {
                        socket::close(accepted);
                        return Err(e);
                    }
                }
            };
            let Some(at_once) = started else {
                socket::close(accepted);
                continue;
            };
            let op = &mut self.ops[i];
            op.socket = accepted;
            self.outstanding += 1;
            if at_once && self.skip {
                op.state = State::Done;
                self.done.push(i);
            } else {
                op.state = State::Pending;
            }
            return Ok(());
        }
    }

    /// Ends accept `i`: hands over its connection, or drops it, and posts it again.
    fn finish(&mut self, i: usize, result: io::Result<()>, emit: Emit<'_>) {
        let op = &mut self.ops[i];
        debug_assert_ne!(op.state, State::Idle);
        op.state = State::Idle;
        self.outstanding -= 1;
        let accepted = std::mem::replace(&mut op.socket, INVALID_SOCKET);
        let result = match result {
            Ok(()) => self.take_connection(i, accepted),
            Err(e) => {
                // Cancelled, or a connection reset before it was taken: the socket was for it.
                socket::close(accepted);
                Err(e)
            }
        };
        match result {
            Ok(socket) => emit(Ok(socket), true),
            Err(e) => {
                // The socket (closed by now) was for one connection only: a reset before it was
                // accepted, or the cancellation. Nothing to report; the accept goes on.
                if !self.canceling {
                    tracing::debug!(error = %e, "iocp: an accept failed; posting it again");
                }
            }
        }
        if self.armed && !self.canceling {
            if let Err(e) = self.post(i) {
                self.fail(e, emit);
                return;
            }
        }
        self.settle(emit);
    }

    /// Makes the socket accepted by op `i` a connection: `SO_UPDATE_ACCEPT_CONTEXT`, the peer's
    /// address, non-blocking. Closes it on failure.
    fn take_connection(&self, i: usize, accepted: SOCKET) -> io::Result<Socket> {
        let setup = socket::update_accept_context(accepted, self.listener)
            .and_then(|()| socket::set_nonblocking(accepted));
        if let Err(e) = setup {
            socket::close(accepted);
            return Err(e);
        }
        let peer = self.peer_of(i);
        tracing::trace!(?peer, "iocp: accepted");
        // SAFETY: `accepted` is a socket this acceptor created and owns; ownership moves to the
        // `Socket`, which closes it.
        Ok(unsafe { Socket::from_raw_socket(accepted as RawSocket) })
    }

    /// The peer address `AcceptEx` wrote into op `i`'s buffer (`GetAcceptExSockaddrs`).
    fn peer_of(&self, i: usize) -> Option<SocketAddr> {
        let ext = self.ext?;
        let entry = self.bufs.as_ref()?.get(i);
        let (mut local, mut remote) = (ptr::null_mut(), ptr::null_mut());
        let (mut local_len, mut remote_len) = (0i32, 0i32);
        // SAFETY: the op has completed, so its buffer is ours; the lengths are the ones given to
        // `AcceptEx`; the function sets the pointers to places inside that buffer.
        unsafe {
            (ext.get_sockaddrs)(
                ptr::addr_of!((*entry).addrs).cast(),
                0,
                ADDR_LEN as u32,
                ADDR_LEN as u32,
                &mut local,
                &mut local_len,
                &mut remote,
                &mut remote_len,
            );
        }
        // SAFETY: `remote` is null or points at `remote_len` bytes inside the op's buffer.
        unsafe { socket::to_socket_addr(remote, remote_len) }
    }

    /// Posting failed: report it. While other accepts are pending it is reported with
    /// `more == true` (the owner backs off on a shortage by cancelling the rest); when none is,
    /// it is the final completion.
    fn fail(&mut self, e: io::Error, emit: Emit<'_>) {
        if self.outstanding > 0 {
            emit(Err(e), true);
        } else {
            self.armed = false;
            self.canceling = false;
            emit(Err(e), false);
        }
    }

    /// Emits the final completion of a cancelled accept once nothing is outstanding.
    fn settle(&mut self, emit: Emit<'_>) {
        if self.armed && self.canceling && self.outstanding == 0 {
            self.armed = false;
            self.canceling = false;
            emit(canceled(), false);
        }
    }
}

fn lock_owners() -> std::sync::MutexGuard<'static, Vec<(SOCKET, u64)>> {
    OWNERS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Looks `AcceptEx` and `GetAcceptExSockaddrs` up for the listener's provider.
fn load_extensions(listener: SOCKET) -> io::Result<Extensions> {
    let accept_ex: LPFN_ACCEPTEX = extension(listener, WSAID_ACCEPTEX)?;
    let get_sockaddrs: LPFN_GETACCEPTEXSOCKADDRS = extension(listener, WSAID_GETACCEPTEXSOCKADDRS)?;
    match (accept_ex, get_sockaddrs) {
        (Some(accept_ex), Some(get_sockaddrs)) => Ok(Extensions {
            accept_ex,
            get_sockaddrs,
        }),
        _ => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the socket provider has no AcceptEx",
        )),
    }
}

/// One extension function pointer (`Option<fn>`, `None` if the provider lacks it).
fn extension<F: Copy>(socket: SOCKET, guid: GUID) -> io::Result<Option<F>> {
    let mut f: Option<F> = None;
    let mut bytes = 0u32;
    // SAFETY:
    // - the input is a `GUID` read from a local of the size given;
    // - the output is an `Option<fn>` (a nullable function pointer, the size of a pointer), to
    //   which Winsock writes at most the size given;
    // - no `OVERLAPPED`: the call completes at once.
    let r = unsafe {
        WSAIoctl(
            socket,
            SIO_GET_EXTENSION_FUNCTION_POINTER,
            (&guid as *const GUID).cast(),
            size_of::<GUID>() as u32,
            (&mut f as *mut Option<F>).cast(),
            size_of::<Option<F>>() as u32,
            &mut bytes,
            ptr::null_mut(),
            None,
        )
    };
    if r != 0 {
        return Err(socket::last_wsa_error());
    }
    Ok(f)
}

/// Turns the emitted accepts into completions queued for the next wait.
pub(super) fn queue_into<'a>(
    ready: &'a mut VecDeque<Completion<'static>>,
) -> impl FnMut(io::Result<Socket>, bool) + 'a {
    move |result, more| ready.push_back(Completion::Accept { result, more })
}
