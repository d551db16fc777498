//! The IOCP backend: Windows I/O completion ports, the API the seed was written for.
//!
//! One completion port per worker thread, like the io_uring rings (see `docs/iocp.md` for why not
//! the seed's single shared port):
//!
//! - **accept**: `AcceptEx` into sockets made in advance, [`Config::accept_depth`] of them kept
//!   posted, `SO_UPDATE_ACCEPT_CONTEXT` and `GetAcceptExSockaddrs` on each connection. Only the
//!   port that owns the listener's association posts them (see `accept.rs`).
//! - **receive**: a zero-byte `WSARecv`, so an idle connection holds no buffer. When it
//!   completes, the socket (non-blocking) is read with `recv` into one scratch buffer per worker
//!   until `WSAEWOULDBLOCK`, each read lent to the callback as `Recv { more: true }`, and the
//!   zero-byte `WSARecv` is posted again. A connection reads at most `READ_BUDGET` bytes per
//!   wait, then waits its turn (the loop is shared with the poll backend: `sys/reader.rs`).
//! - **send**: one `WSASend` gathering the queued messages as several `WSABUF`s.
//! - **cancel**: `CancelIoEx` on the operation's `OVERLAPPED`; its completion still arrives.
//! - **wait**: `GetQueuedCompletionStatusEx`; **wake-up**: `PostQueuedCompletionStatus`.
//!
//! Every socket is put in `FILE_SKIP_COMPLETION_PORT_ON_SUCCESS | FILE_SKIP_SET_EVENT_ON_HANDLE`
//! mode: an operation that succeeds at once posts no packet, and the backend queues its completion
//! itself, for the next wait (which then does not block).
//!
//! Each slot has two `OVERLAPPED`s (receive, send) in one table allocated at start; an
//! `OVERLAPPED` is reused only after its operation completed, and if the port is dropped with
//! operations pending, the table is leaked rather than freed under the kernel.
//!
//! Any failed completion that was not cancelled on purpose closes the connection, whatever its
//! code: Windows and Wine disagree on codes (Wine has reported `ERROR_HANDLES_CLOSED` (676) where
//! Windows documents `ERROR_OPERATION_ABORTED` (995); a reset is `WSAECONNRESET` through
//! `WSAGetOverlappedResult`, `ERROR_NETNAME_DELETED` (64) through `GetQueuedCompletionStatus`).

mod accept;
mod overlapped;
mod socket;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::ptr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use socket2::Socket;
use windows_sys::Win32::Foundation::{
    CloseHandle, ERROR_OPERATION_ABORTED, FALSE, HANDLE, WAIT_TIMEOUT,
};
use windows_sys::Win32::Networking::WinSock::{INVALID_SOCKET, SOCKET, WSAECONNABORTED};
use windows_sys::Win32::System::IO::{
    GetQueuedCompletionStatusEx, OVERLAPPED, OVERLAPPED_ENTRY, PostQueuedCompletionStatus,
};
use windows_sys::Win32::System::Threading::INFINITE;

use super::reader::{ReadEnd, Reader, final_completion};
use super::{Completion, Raw, WakeInner, Waker};
use crate::config::{Config, Features};
use crate::token::{Op, Token};
use accept::Acceptor;
use overlapped::Table;
use socket::Started;

/// Completion key of connection sockets (the `OVERLAPPED` says which slot and operation).
const KEY_CONN: usize = 1;
/// Completion key of the listening socket.
const KEY_LISTENER: usize = 2;
/// Completion key of wake-up packets (`PostQueuedCompletionStatus`).
const KEY_WAKE: usize = 3;

/// Packets taken from the port by one `GetQueuedCompletionStatusEx`.
const ENTRIES: usize = 256;
/// How long a dropped port waits for its cancelled accepts before leaking their buffers.
const DROP_DRAIN: Duration = Duration::from_secs(1);

/// Ids of ports, for the list of listener owners.
static NEXT_PORT_ID: AtomicU64 = AtomicU64::new(1);

/// The completion port of one worker thread.
pub(crate) struct Port {
    handle: Arc<PortHandle>,
    waker: Arc<IocpWaker>,
    entries: Box<[OVERLAPPED_ENTRY]>,
    acceptor: Acceptor,
    conns: Conns,
    leak: bool,
}

/// The connections' side of the port, borrowed apart from the rest while packets are handled.
struct Conns {
    port: HANDLE,
    slots: Box<[Slot]>,
    /// Two per slot: `2 i` for its receive, `2 i + 1` for its send. `None` once leaked.
    overlapped: Option<Table<OVERLAPPED>>,
    /// Completions produced outside a wait, delivered by the next one.
    ready: VecDeque<Completion<'static>>,
    /// The receive buffer of every connection, and the slots to read in the next wait (they
    /// have data, and no packet will say so again).
    reader: Reader<u32>,
}

/// Where a slot's receive stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum RecvState {
    /// No receive armed (its final completion was produced).
    Idle,
    /// A zero-byte `WSARecv` is pending in the kernel.
    Pending,
    /// Data (or the end, or an error) is there: read it in the next wait.
    Readable,
}

/// What the port knows of one connection slot.
struct Slot {
    socket: SOCKET,
    generation: u32,
    /// The socket is associated with this port.
    associated: bool,
    /// Skip-on-success is in effect on the socket.
    skip: bool,
    recv: RecvState,
    recv_cancel: bool,
    /// A `WSASend` is pending in the kernel.
    send: bool,
    send_cancel: bool,
    /// The slot is in `readable` or `reading`.
    listed: bool,
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            socket: INVALID_SOCKET,
            generation: 0,
            associated: false,
            skip: false,
            recv: RecvState::Idle,
            recv_cancel: false,
            send: false,
            send_cancel: false,
            listed: false,
        }
    }
}

impl Slot {
    fn is_busy(&self) -> bool {
        self.recv != RecvState::Idle || self.send
    }

    fn token(&self, op: Op, index: usize) -> Token {
        Token::new(op, index as u32, self.generation)
    }
}

impl Port {
    /// Creates the completion port, its waker and the tables of `config.capacity` connections.
    pub(crate) fn new(config: &Config) -> io::Result<(Port, Features)> {
        socket::startup();
        let handle = Arc::new(PortHandle(socket::create_port()?));
        let capacity = config.capacity as usize;
        let depth = (config.accept_depth.max(1)).min(config.capacity.max(1)) as usize;
        let features = Features {
            summary: Some(format!(
                "{depth} AcceptEx posted by the port that owns the listener, zero-byte WSARecv \
                 (an idle connection holds no buffer), gathering WSASend"
            )),
            ..Features::default()
        };
        let port = Port {
            waker: Arc::new(IocpWaker {
                port: handle.clone(),
                pending: AtomicBool::new(false),
            }),
            // SAFETY: `OVERLAPPED_ENTRY` is plain old data; all zeroes is valid.
            entries: (0..ENTRIES)
                .map(|_| unsafe { std::mem::zeroed() })
                .collect(),
            acceptor: Acceptor::new(NEXT_PORT_ID.fetch_add(1, Ordering::Relaxed), depth),
            conns: Conns {
                port: handle.0,
                slots: (0..capacity).map(|_| Slot::default()).collect(),
                overlapped: Some(Table::new(2 * capacity)),
                ready: VecDeque::new(),
                reader: Reader::new(config),
            },
            handle,
            leak: false,
        };
        Ok((port, features))
    }

    /// Takes the packets the port has, waiting up to `timeout`. Returns how many there are.
    fn dequeue(&mut self, timeout: Option<Duration>) -> io::Result<usize> {
        let ms = match timeout {
            None => INFINITE,
            // Rounded up, so that a short timeout does not become a busy loop.
            Some(t) => t
                .as_nanos()
                .div_ceil(1_000_000)
                .min(u128::from(INFINITE - 1)) as u32,
        };
        let mut n = 0u32;
        // SAFETY: `entries` is a writable array of `entries.len()` entries, and `n` a valid
        // `u32`; the call is not alertable, so no APC runs inside it.
        let ok = unsafe {
            GetQueuedCompletionStatusEx(
                self.handle.0,
                self.entries.as_mut_ptr(),
                self.entries.len() as u32,
                &mut n,
                ms,
                FALSE,
            )
        };
        if ok == FALSE {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(WAIT_TIMEOUT as i32) {
                return Ok(0);
            }
            return Err(e);
        }
        Ok(n as usize)
    }

    /// Cancels the pending accepts of a port being dropped and waits (briefly) for them, so that
    /// their buffers can be freed.
    fn drain_accepts(&mut self) {
        let deadline = Instant::now() + DROP_DRAIN;
        while self.acceptor.has_outstanding() && Instant::now() < deadline {
            self.acceptor.deliver_done(&mut |_, _| {});
            let n = match self.dequeue(Some(Duration::from_millis(50))) {
                Ok(n) => n,
                Err(_) => break,
            };
            for i in 0..n {
                let entry = self.entries[i];
                if entry.lpCompletionKey == KEY_LISTENER {
                    self.acceptor.complete(entry.lpOverlapped, &mut |_, _| {});
                }
            }
        }
    }
}

// SAFETY: see the module documentation and the comments at each operation: every operation
// completes once through `wait`, sends read the caller's bytes only until their completion, and
// receive buffers are kept (or leaked) while the kernel may write them.
unsafe impl super::Port for Port {
    fn accept(&mut self, listener: &Socket) {
        let ready = &mut self.conns.ready;
        self.acceptor
            .arm(self.handle.0, listener, &mut accept::queue_into(ready));
    }

    fn cancel_accept(&mut self) {
        let ready = &mut self.conns.ready;
        self.acceptor.cancel(&mut accept::queue_into(ready));
    }

    fn recv(&mut self, fd: Raw, token: Token) {
        let c = &mut self.conns;
        let id = token.conn();
        let index = id.index as usize;
        let armed = c.open(index, fd as SOCKET, id.generation).and_then(|()| {
            // A hard check: posting with a pending `OVERLAPPED` would hand it to the kernel twice.
            assert_eq!(c.slots[index].recv, RecvState::Idle, "receive armed twice");
            c.post_recv(index)
        });
        if let Err(e) = armed {
            c.ready.push_back(Completion::Recv {
                token,
                result: Err(e),
                more: false,
            });
        }
    }

    unsafe fn send(&mut self, fd: Raw, token: Token, bufs: &[IoSlice<'_>]) {
        let c = &mut self.conns;
        let id = token.conn();
        let index = id.index as usize;
        if let Err(e) = c.open(index, fd as SOCKET, id.generation) {
            c.ready.push_back(Completion::Send {
                token,
                result: Err(e),
            });
            return;
        }
        let slot = &mut c.slots[index];
        // A hard check: posting with a pending `OVERLAPPED` would hand it to the kernel twice.
        assert!(!slot.send, "two sends at once");
        let table = c.overlapped.as_ref().expect("not leaked while in use");
        // SAFETY: no send is pending on this slot (one at a time, checked above), so its
        // `OVERLAPPED` is free.
        unsafe { table.reset(2 * index + 1) };
        // SAFETY:
        // - the caller keeps the bytes of `bufs` valid and unchanged until this send's completion
        //   has been delivered (`Port::send`'s contract);
        // - the `OVERLAPPED` is this slot's send entry, zeroed, stable, used by nothing else
        //   until the completion, and never freed while pending (leaked by `Drop` instead).
        let started = unsafe { socket::send(slot.socket, bufs, table.overlapped(2 * index + 1)) };
        #[cfg(test)]
        tests::count_send(&started);
        match started {
            Ok(Started::Done(n)) if slot.skip => c.ready.push_back(Completion::Send {
                token,
                result: Ok(n),
            }),
            // Without skip-on-success the packet comes even when it is done already.
            Ok(Started::Done(_) | Started::Pending) => slot.send = true,
            Err(e) => c.ready.push_back(Completion::Send {
                token,
                result: Err(e),
            }),
        }
    }

    fn cancel(&mut self, fd: Raw, token: Token) {
        let c = &mut self.conns;
        let id = token.conn();
        let index = id.index as usize;
        let Some(slot) = c.slots.get_mut(index) else {
            return;
        };
        if slot.socket != fd as SOCKET || slot.generation != id.generation {
            return;
        }
        let table = c.overlapped.as_ref().expect("not leaked while in use");
        match token.op() {
            Some(Op::Recv) => match slot.recv {
                RecvState::Pending if !slot.recv_cancel => {
                    slot.recv_cancel = true;
                    // SAFETY: the address is this slot's receive `OVERLAPPED`; compared only.
                    unsafe { socket::cancel(slot.socket, table.overlapped(2 * index)) };
                }
                RecvState::Readable => {
                    // Not in the kernel: end it here (the list entry is skipped).
                    slot.recv = RecvState::Idle;
                    c.ready.push_back(Completion::Recv {
                        token,
                        result: canceled(),
                        more: false,
                    });
                }
                RecvState::Pending | RecvState::Idle => {}
            },
            Some(Op::Send) if slot.send && !slot.send_cancel => {
                slot.send_cancel = true;
                // SAFETY: the address is this slot's send `OVERLAPPED`; compared only.
                unsafe { socket::cancel(slot.socket, table.overlapped(2 * index + 1)) };
            }
            // Not pending: its completion is queued or delivered.
            _ => {}
        }
    }

    fn release(&mut self, index: u32, socket: Option<Socket>, _reset: bool) {
        // Forget the connection: the next one in the slot (whatever its handle's value, which
        // Windows may give again) is associated and set up anew.
        if let Some(slot) = self.conns.slots.get_mut(index as usize) {
            // A hard check: forgetting a pending operation would let its `OVERLAPPED` be handed
            // to the kernel again.
            assert!(
                !slot.is_busy(),
                "slot released while an operation is outstanding"
            );
            *slot = Slot {
                // A stale list entry of the connection is still to be skipped.
                listed: slot.listed,
                ..Slot::default()
            };
        }
        drop(socket);
    }

    fn leak_buffers(&mut self) {
        self.leak = true;
    }

    fn wait(
        &mut self,
        timeout: Option<Duration>,
        sink: &mut dyn FnMut(Completion<'_>),
    ) -> io::Result<()> {
        let mut busy = !self.conns.ready.is_empty() || self.acceptor.has_done();
        while let Some(completion) = self.conns.ready.pop_front() {
            sink(completion);
        }
        self.acceptor
            .deliver_done(&mut |result, more| sink(Completion::Accept { result, more }));
        // Accepts posted again by `deliver_done` may have completed at once too.
        busy |= self.conns.reader.has_readable() || self.acceptor.has_done();
        let n = self.dequeue(if busy { Some(Duration::ZERO) } else { timeout })?;

        // Slots left over from the last wait are read after the new packets, in one pass each.
        let c = &mut self.conns;
        c.reader.begin_wait();
        for i in 0..n {
            let entry = self.entries[i];
            match entry.lpCompletionKey {
                KEY_WAKE => {
                    self.waker.pending.store(false, Ordering::Release);
                    sink(Completion::Wake);
                }
                KEY_LISTENER => {
                    let known = self
                        .acceptor
                        .complete(entry.lpOverlapped, &mut |result, more| {
                            sink(Completion::Accept { result, more })
                        });
                    if !known {
                        tracing::error!("iocp: a packet for an unknown accept; ignored");
                    }
                }
                KEY_CONN => self.conns.complete(&entry, sink),
                key => tracing::error!(key, "iocp: a packet with an unknown key; ignored"),
            }
        }
        let c = &mut self.conns;
        let mut reading = c.reader.take_this_wait();
        for index in reading.drain(..) {
            let index = index as usize;
            let slot = &mut c.slots[index];
            slot.listed = false;
            if slot.recv == RecvState::Readable {
                c.read(index, sink);
            }
        }
        c.reader.end_wait(reading);
        Ok(())
    }

    fn waker(&self) -> Waker {
        Waker::new(self.waker.clone())
    }
}

impl Conns {
    /// Gives slot `index` to `socket` (a new connection when the socket or generation differ)
    /// and associates the socket with the port on its first operation.
    fn open(&mut self, index: usize, socket: SOCKET, generation: u32) -> io::Result<()> {
        let slot = &mut self.slots[index];
        if slot.socket != socket || slot.generation != generation {
            // A hard check: forgetting a pending operation would let its `OVERLAPPED` be
            // handed to the kernel again.
            assert!(
                !slot.is_busy(),
                "slot reused while an operation is outstanding"
            );
            *slot = Slot {
                socket,
                generation,
                // A stale list entry of the slot's last connection is still to be skipped.
                listed: slot.listed,
                ..Slot::default()
            };
        }
        if !slot.associated {
            socket::associate(self.port, socket, KEY_CONN)?;
            slot.associated = true;
            slot.skip = socket::skip_completion_on_success(socket);
        }
        Ok(())
    }

    /// Posts the zero-byte receive of slot `index`.
    fn post_recv(&mut self, index: usize) -> io::Result<()> {
        let slot = &mut self.slots[index];
        let table = self.overlapped.as_ref().expect("not leaked while in use");
        // SAFETY: the receive is not pending (it is idle or was readable), so its `OVERLAPPED`
        // is free.
        unsafe { table.reset(2 * index) };
        // SAFETY: the `OVERLAPPED` is this slot's receive entry, zeroed, stable, used by nothing
        // else until the completion, and never freed while pending (leaked by `Drop` instead).
        let started = unsafe { socket::recv_zero(slot.socket, table.overlapped(2 * index)) };
        match started {
            Ok(Started::Done(_)) if slot.skip => {
                #[cfg(test)]
                tests::count_recv_at_once();
                // Data is there already, and no packet will say so.
                slot.recv = RecvState::Readable;
                if !slot.listed {
                    slot.listed = true;
                    self.reader.read_next_wait(index as u32);
                }
            }
            Ok(Started::Done(_) | Started::Pending) => slot.recv = RecvState::Pending,
            Err(e) => {
                slot.recv = RecvState::Idle;
                return Err(e);
            }
        }
        Ok(())
    }

    /// Handles the packet of a connection's operation.
    fn complete(&mut self, entry: &OVERLAPPED_ENTRY, sink: &mut dyn FnMut(Completion<'_>)) {
        let table = self.overlapped.as_ref().expect("not leaked while in use");
        let Some(i) = table.index_of(entry.lpOverlapped) else {
            tracing::error!("iocp: a packet for an unknown operation; ignored");
            return;
        };
        let (index, is_send) = (i / 2, i % 2 == 1);
        let slot = &mut self.slots[index];
        if (is_send && !slot.send) || (!is_send && slot.recv != RecvState::Pending) {
            tracing::error!(
                index,
                is_send,
                "iocp: a packet for an operation not pending"
            );
            return;
        }
        let overlapped = entry.lpOverlapped;
        // SAFETY: the packet was dequeued, so the operation is over and its `OVERLAPPED` is ours
        // to read.
        let status = unsafe { ptr::addr_of!((*overlapped).Internal).read() };
        let result = if socket::nt_success(status) {
            Ok(entry.dwNumberOfBytesTransferred as usize)
        } else {
            // SAFETY: the operation on `slot.socket` has completed (its packet was dequeued).
            unsafe { socket::overlapped_result(slot.socket, overlapped) }
        };
        if is_send {
            slot.send = false;
            let canceled_here = std::mem::take(&mut slot.send_cancel);
            let result = match result {
                Ok(n) => Ok(n),
                Err(_) if canceled_here => canceled(),
                Err(e) => Err(closed(e)),
            };
            let token = slot.token(Op::Send, index);
            sink(Completion::Send { token, result });
            return;
        }
        let token = slot.token(Op::Recv, index);
        let canceled_here = std::mem::take(&mut slot.recv_cancel);
        match result {
            // Data may have come too, but the owner asked to stop: it is closing.
            _ if canceled_here => {
                slot.recv = RecvState::Idle;
                sink(Completion::Recv {
                    token,
                    result: canceled(),
                    more: false,
                });
            }
            Ok(_) => {
                slot.recv = RecvState::Readable;
                if !slot.listed {
                    slot.listed = true;
                    self.reader.read_this_wait(index as u32);
                }
            }
            Err(e) => {
                slot.recv = RecvState::Idle;
                sink(Completion::Recv {
                    token,
                    result: Err(closed(e)),
                    more: false,
                });
            }
        }
    }

    /// Reads slot `index` until `WSAEWOULDBLOCK` (then posts the zero-byte receive again), the end
    /// of stream, an error or its budget.
    fn read(&mut self, index: usize, sink: &mut dyn FnMut(Completion<'_>)) {
        let token = self.slots[index].token(Op::Recv, index);
        let socket = self.slots[index].socket;
        let result = match self
            .reader
            .read(token, false, |buf| socket::recv_now(socket, buf), sink)
        {
            ReadEnd::Budget => {
                // More may be waiting, and no packet will say so: come back next wait.
                self.slots[index].listed = true;
                self.reader.read_next_wait(index as u32);
                return;
            }
            ReadEnd::Drained | ReadEnd::Short => match self.post_recv(index) {
                Ok(()) => return,
                Err(e) => Err(e),
            },
            ReadEnd::Over(result) => result,
        };
        self.slots[index].recv = RecvState::Idle;
        sink(final_completion(token, result));
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        let pending = self
            .conns
            .slots
            .iter()
            .any(|s| s.recv == RecvState::Pending || s.send);
        if self.leak || pending {
            if let Some(table) = self.conns.overlapped.take() {
                table.leak();
            }
        }
        // Posted accepts are cancelled in any case: left posted, they would accept clients into
        // sockets nobody sees.
        self.acceptor.cancel(&mut |_, _| {});
        if self.acceptor.has_outstanding() && !self.leak {
            self.drain_accepts();
        }
        if self.acceptor.has_outstanding() {
            self.acceptor.leak();
        }
        self.acceptor.forget_owned();
    }
}

/// The result of an operation cancelled on purpose.
fn canceled<T>() -> io::Result<T> {
    Err(io::Error::from_raw_os_error(ERROR_OPERATION_ABORTED as i32))
}

/// The error of a failed operation that nobody cancelled: a cancellation code there (the socket
/// was closed under it, or Wine's 676) still means the connection is gone, so it must not read as
/// "cancelled" to the common layer, which would then wait for a close that nobody asked for.
fn closed(e: io::Error) -> io::Error {
    if super::is_canceled(&e) {
        io::Error::from_raw_os_error(WSAECONNABORTED)
    } else {
        e
    }
}

/// The port's handle, closed when the port and every waker are gone.
struct PortHandle(HANDLE);

// SAFETY: a completion port handle may be used from any thread (posting, waiting, closing).
unsafe impl Send for PortHandle {}
// SAFETY: as above; the handle value is never changed.
unsafe impl Sync for PortHandle {}

impl Drop for PortHandle {
    fn drop(&mut self) {
        // SAFETY: the handle was created by `create_port` and is closed only here, once. (Closing
        // it wakes no waiting thread under Wine; no thread waits on it any more.)
        unsafe { CloseHandle(self.0) };
    }
}

/// [`Waker`] of the IOCP backend: one posted packet at a time.
struct IocpWaker {
    port: Arc<PortHandle>,
    /// A wake-up packet is posted and not yet dequeued.
    pending: AtomicBool,
}

impl WakeInner for IocpWaker {
    fn wake(&self) -> io::Result<()> {
        if self.pending.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // SAFETY: posts a packet with no `OVERLAPPED` to a port handle that is still open (this
        // waker holds it).
        let ok = unsafe { PostQueuedCompletionStatus(self.port.0, 0, KEY_WAKE, ptr::null()) };
        if ok == FALSE {
            let e = io::Error::last_os_error();
            self.pending.store(false, Ordering::Release);
            return Err(e);
        }
        Ok(())
    }
}
