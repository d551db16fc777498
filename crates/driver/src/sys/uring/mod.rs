//! The io_uring backend: one ring per worker thread.
//!
//! - accept: one multishot `IORING_OP_ACCEPT` on the listening socket (one-shot, re-armed, where
//!   multishot is missing);
//! - receive: multishot `IORING_OP_RECV` picking buffers from a provided-buffer ring, so an idle
//!   connection holds no buffer (one-shot `recv` into a pooled buffer where that is missing);
//! - send: `IORING_OP_SEND` for one queued message, `IORING_OP_SENDMSG` gathering up to 64,
//!   `MSG_NOSIGNAL`;
//! - wake-up: an `eventfd` watched by a multishot `IORING_OP_POLL_ADD`;
//! - descriptors: each connection's socket goes into the ring's file table at its slot's index
//!   before its first operation, and its descriptor is closed; operations name it by that index,
//!   so the kernel neither looks it up nor takes a reference to it per operation, and open
//!   connections take no room in the process's descriptor table (`RLIMIT_NOFILE` bounds each
//!   ring's file table instead, on its own). Removing it from the table closes the connection.
//!   The listener and the wake-up `eventfd` stay plain descriptors.

mod bufring;
mod probe;

use std::fs::File;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use socket2::Socket;

use super::{Completion, WakeInner, Waker};
use crate::config::{Config, Features};
use crate::token::{Op, Token};
use bufring::{Buffers, Ring};

pub(crate) use probe::explain_failure;

/// Setting this variable makes ring creation fail with `EPERM`, as a seccomp filter would.
pub(crate) const FORCE_FAILURE_ENV: &str = "IOCP_FORCE_URING_FAILURE";

/// `sendmsg` headers and their iovecs live here from `send` until the submission queue has been
/// emptied: the kernel copies them when it consumes the entry (`IORING_FEAT_SUBMIT_STABLE`). A
/// slot is never given out twice before then (see `Port::push`).
const IOVEC_ARENA: usize = 4096;
const MSG_ARENA: usize = 256;
const BUFFER_GROUP: u16 = 0;

pub(crate) struct Port {
    /// The io_uring, and the receive buffers of multishot receives registered with it.
    ring: Ring,
    /// Buffers of one-shot receives, one per connection slot (the fall-back path, without a
    /// buffer ring).
    oneshot: Option<Buffers>,
    /// Receives outstanding: the kernel may write into `bufs` or `oneshot` while this is non-zero.
    recvs: usize,
    multishot_accept: bool,
    listener: RawFd,
    iovecs: Box<[libc::iovec]>,
    iovecs_used: usize,
    msgs: Box<[libc::msghdr]>,
    msgs_used: usize,
    wake: Arc<EventFd>,
    wake_armed: bool,
    leak: bool,
    /// Why submitting failed, if it did: the ring is unusable from then on, and every
    /// [`super::Port::wait`] reports it.
    failed: Option<io::Error>,
    /// Whether each index of the ring's file table holds a connection's socket (empty: the
    /// ring has no table).
    files: Box<[bool]>,
    /// Waits that found the completion queue overflowed (`Port::cq_overflows` of the backend contract).
    cq_overflows: u64,
}

/// How an entry names a connection's socket.
#[derive(Clone, Copy)]
enum Target {
    Fd(RawFd),
    Fixed(u32),
}

/// Builds an entry from an opcode constructor that takes either kind of descriptor.
macro_rules! on_target {
    ($target:expr, |$fd:ident| $build:expr) => {
        match $target {
            Target::Fd(raw) => {
                let $fd = types::Fd(raw);
                $build
            }
            Target::Fixed(index) => {
                let $fd = types::Fixed(index);
                $build
            }
        }
    };
}

impl Port {
    pub(crate) fn new(config: &Config) -> io::Result<(Port, Features)> {
        if config.uring.force_setup_failure
            || std::env::var_os(FORCE_FAILURE_ENV).is_some_and(|v| v != "0")
        {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        let kernel = probe::kernel_version();
        let mut features = Features::default();
        let entries = config.ring_entries.max(8);
        let ring = if kernel >= (6, 1) {
            let built = IoUring::builder()
                .setup_single_issuer()
                .setup_defer_taskrun()
                .setup_submit_all()
                .setup_cqsize(entries * 4)
                .build(entries);
            match built {
                Ok(ring) => {
                    features.defer_taskrun = true;
                    ring
                }
                Err(_) => IoUring::builder()
                    .setup_cqsize(entries * 4)
                    .build(entries)?,
            }
        } else {
            IoUring::builder()
                .setup_cqsize(entries * 4)
                .build(entries)?
        };
        if !ring.params().is_feature_submit_stable() || !ring.params().is_feature_nodrop() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        for code in [
            opcode::Accept::CODE,
            opcode::Recv::CODE,
            opcode::Send::CODE,
            opcode::SendMsg::CODE,
            opcode::AsyncCancel::CODE,
            opcode::PollAdd::CODE,
        ] {
            if !probe.is_supported(code) {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
        }

        features.multishot_accept = kernel >= (5, 19) && !config.uring.no_multishot_accept;
        if !features.multishot_accept {
            features.notes.push(if config.uring.no_multishot_accept {
                "multishot accept turned off by configuration".to_owned()
            } else {
                format!(
                    "kernel {}.{} lacks multishot accept (5.19)",
                    kernel.0, kernel.1
                )
            });
        }
        let mut ring = Ring::new(ring);
        if kernel >= (6, 0) && !config.uring.no_multishot_recv {
            let count = config.recv_buffer_count.max(1).next_power_of_two();
            if let Err(e) = ring.register_buffers(BUFFER_GROUP, count, config.recv_buffer_size) {
                features
                    .notes
                    .push(format!("buffer ring registration failed: {e}"));
            }
        } else {
            features.notes.push(if config.uring.no_multishot_recv {
                "multishot recv turned off by configuration".to_owned()
            } else {
                format!(
                    "kernel {}.{} lacks multishot recv (6.0)",
                    kernel.0, kernel.1
                )
            });
        }
        features.multishot_recv = ring.bufs().is_some();

        let mut files: Box<[bool]> = Box::new([]);
        if config.uring.no_registered_files {
            features
                .notes
                .push("registered files turned off by configuration".to_owned());
        } else if kernel < (6, 13) {
            // Before 6.13 a file removed from the table was freed only once every request issued
            // before the removal had completed; one idle connection's multishot receive then
            // kept every later-closed connection open (no FIN) and its memory (liburing#1192).
            features.notes.push(format!(
                "kernel {}.{}: no file table for sockets (removing one from it closes it \
                 reliably from 6.13)",
                kernel.0, kernel.1
            ));
        } else {
            // A table may not be larger than RLIMIT_NOFILE (each ring's on its own); slots past
            // it keep their descriptors.
            let capacity = config.capacity.max(1);
            let soft = crate::limits::open_file_limit().map_or(0, |l| l.rlim_cur);
            let slots = capacity.min(soft.min(u32::MAX.into()) as u32);
            if slots < capacity {
                features.notes.push(format!(
                    "the file table holds {slots} of {capacity} connections (RLIMIT_NOFILE)"
                ));
            }
            match ring.uring().submitter().register_files_sparse(slots) {
                Ok(()) => files = vec![false; slots as usize].into_boxed_slice(),
                Err(e) => features
                    .notes
                    .push(format!("file table of {slots} registration failed: {e}")),
            }
        }
        features.registered_files = !files.is_empty();
        if ring.bufs().is_none() {
            features
                .notes
                .push("each armed receive holds a buffer".to_owned());
        }

        // SAFETY: `eventfd` has no memory-safety preconditions; its result, when not an error, is
        // a fresh descriptor that nothing else owns, given to the `File`.
        let efd = unsafe {
            match libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) {
                fd if fd < 0 => return Err(io::Error::last_os_error()),
                fd => File::from_raw_fd(fd),
            }
        };
        let wake = Arc::new(EventFd(efd));

        let empty_msg = libc::msghdr {
            msg_name: std::ptr::null_mut(),
            msg_namelen: 0,
            msg_iov: std::ptr::null_mut(),
            msg_iovlen: 0,
            msg_control: std::ptr::null_mut(),
            msg_controllen: 0,
            msg_flags: 0,
        };
        let oneshot = match ring.bufs() {
            Some(_) => None,
            None => Some(Buffers::new(
                0,
                config.capacity as usize,
                config.recv_buffer_size.max(1) as usize,
            )?),
        };
        let mut port = Port {
            ring,
            oneshot,
            recvs: 0,
            multishot_accept: features.multishot_accept,
            listener: -1,
            iovecs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                IOVEC_ARENA
            ]
            .into_boxed_slice(),
            iovecs_used: 0,
            msgs: vec![empty_msg; MSG_ARENA].into_boxed_slice(),
            msgs_used: 0,
            wake,
            wake_armed: false,
            leak: false,
            failed: None,
            files,
            cq_overflows: 0,
        };
        port.arm_wake();
        Ok((port, features))
    }

    /// Queues `entry`. If the ring takes no more entries (submitting failed), the entry is
    /// dropped: the port is broken, and the next wait reports why.
    fn push(&mut self, entry: &squeue::Entry) {
        loop {
            // SAFETY: every entry built by this backend points only at memory that outlives the
            // operation: buffers owned by the caller until completion (`send`), this port's
            // buffers (kept or leaked until no receive is outstanding), or header arenas whose
            // slots are given out again only once every entry that used them has been submitted
            // (`submit_queued` keeps them; `free_arenas` is called only with the queue empty).
            if unsafe { self.ring.uring_mut().submission().push(entry) }.is_ok() {
                return;
            }
            // The entry being pushed may point into the arenas: submit what is queued before it,
            // but keep the arenas' slots taken.
            if !self.submit_queued() {
                return;
            }
        }
    }

    /// Submits every queued entry. The `sendmsg` arenas stay as they are: an entry about to be
    /// pushed may point into them. Returns false if submitting failed (the ring is unusable:
    /// `failed` says why).
    fn submit_queued(&mut self) -> bool {
        if self.failed.is_some() {
            return false;
        }
        loop {
            match self.ring.uring().submit() {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    // The completion queue is full: the caller drains it on its next wait.
                }
                Err(e) => {
                    // `EEXIST`: a ring made for a single issuer, used from another thread.
                    tracing::error!("io_uring submit failed: {e}");
                    self.failed = Some(e);
                    return false;
                }
            }
            if self.ring.uring_mut().submission().is_empty() {
                return true;
            }
            // Only a full completion queue stops the kernel taking entries: wait for room.
            let _ = self.ring.uring().submit_and_wait(1);
        }
    }

    /// Gives the `sendmsg` arenas' slots out again. Only when the submission queue is empty: the
    /// kernel has copied every header and iovec array of the entries it took
    /// (`IORING_FEAT_SUBMIT_STABLE`), and no entry not yet pushed points into them.
    fn free_arenas(&mut self) {
        debug_assert!(self.ring.uring_mut().submission().is_empty() || self.failed.is_some());
        self.iovecs_used = 0;
        self.msgs_used = 0;
    }

    /// How entries name the socket of connection slot `index`: by its place in the file table,
    /// or by its descriptor `fd`.
    fn target(&self, fd: RawFd, index: u32) -> Target {
        if self.files.get(index as usize) == Some(&true) {
            Target::Fixed(index)
        } else {
            Target::Fd(fd)
        }
    }

    fn arm_wake(&mut self) {
        let entry = opcode::PollAdd::new(types::Fd(self.wake.0.as_raw_fd()), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(Token::bare(Op::Wake).0);
        self.push(&entry);
        self.wake_armed = true;
    }

    fn arm_accept(&mut self) {
        let entry = if self.multishot_accept {
            opcode::AcceptMulti::new(types::Fd(self.listener))
                .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
                .build()
        } else {
            opcode::Accept::new(
                types::Fd(self.listener),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
            .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
            .build()
        };
        self.push(&entry.user_data(Token::bare(Op::Accept).0));
    }
}

// SAFETY: see the module documentation and the comments at each operation: every operation
// completes once through `wait`, sends read the caller's bytes only until their completion, and
// receive buffers are kept (or leaked) while the kernel may write them.
unsafe impl super::Port for Port {
    fn accept(&mut self, listener: &Socket) {
        self.listener = listener.as_raw_fd();
        self.arm_accept();
    }

    fn cancel_accept(&mut self) {
        let entry = opcode::AsyncCancel::new(Token::bare(Op::Accept).0)
            .build()
            .user_data(Token::bare(Op::Cancel).0);
        self.push(&entry);
    }

    fn adopt(&mut self, index: u32, socket: Socket) -> Option<Socket> {
        let Some(slot) = self.files.get_mut(index as usize) else {
            return Some(socket);
        };
        debug_assert!(!*slot, "slot {index} was not released");
        match self
            .ring
            .uring()
            .submitter()
            .register_files_update(index, &[socket.as_raw_fd()])
        {
            Ok(_) => {
                *slot = true;
                // The table holds its own reference to the socket: closing the descriptor
                // leaves the connection open.
                drop(socket);
                None
            }
            // Out of kernel memory: this connection keeps its descriptor.
            Err(_) => Some(socket),
        }
    }

    fn recv(&mut self, fd: RawFd, token: Token) {
        let target = self.target(fd, token.conn().index);
        let entry = if let Some(bufs) = self.ring.bufs() {
            on_target!(target, |fd| opcode::RecvMulti::new(fd, bufs.group).build())
        } else {
            let bufs = self
                .oneshot
                .as_ref()
                .expect("one-shot buffers without a buffer ring");
            let buf = bufs.ptr(token.conn().index as usize);
            let len = bufs.size().min(u32::MAX as usize) as u32;
            on_target!(target, |fd| opcode::Recv::new(fd, buf, len).build())
        };
        self.recvs += 1;
        self.push(&entry.user_data(token.0));
    }

    unsafe fn send(&mut self, fd: RawFd, token: Token, bufs: &[IoSlice<'_>]) {
        let target = self.target(fd, token.conn().index);
        if let [one] = bufs {
            // One buffer (the common case of a request and its reply): a plain send, without a
            // message header for the kernel to copy in.
            // (A send of more than 4 GiB takes what fits; the rest follows as for any partial send.)
            let len = one.len().min(u32::MAX as usize) as u32;
            let entry = on_target!(target, |fd| opcode::Send::new(fd, one.as_ptr(), len)
                .flags(libc::MSG_NOSIGNAL)
                .build())
            .user_data(token.0);
            self.push(&entry);
            return;
        }
        if self.iovecs_used + bufs.len() > IOVEC_ARENA || self.msgs_used == MSG_ARENA {
            // Nothing being built points into the arenas here: submit, then reuse them.
            self.submit_queued();
            self.free_arenas();
        }
        let iov = &mut self.iovecs[self.iovecs_used..self.iovecs_used + bufs.len()];
        for (dst, src) in iov.iter_mut().zip(bufs) {
            *dst = libc::iovec {
                iov_base: src.as_ptr() as *mut libc::c_void,
                iov_len: src.len(),
            };
        }
        let msg = &mut self.msgs[self.msgs_used];
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = bufs.len() as _;
        let msg: *const libc::msghdr = msg;
        self.iovecs_used += bufs.len();
        self.msgs_used += 1;
        let entry = on_target!(target, |fd| opcode::SendMsg::new(fd, msg)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build())
        .user_data(token.0);
        self.push(&entry);
    }

    fn cancel(&mut self, _fd: RawFd, token: Token) {
        let entry = opcode::AsyncCancel::new(token.0)
            .build()
            .user_data(Token::bare(Op::Cancel).0);
        self.push(&entry);
    }

    fn release(&mut self, index: u32, socket: Option<Socket>, reset: bool) {
        drop(socket);
        if self.files.get(index as usize) != Some(&true) {
            return;
        }
        if reset {
            // The socket has no descriptor: set SO_LINGER 0 through the ring (6.7+; the file
            // table is used from 6.13 only). Submitted now, before the entry is removed below,
            // so the request holds the file until it is done; its completion is ignored.
            static LINGER_RESET: libc::linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            let entry = opcode::SetSockOpt::new(
                types::Fixed(index),
                libc::SOL_SOCKET as u32,
                libc::SO_LINGER as u32,
                (&raw const LINGER_RESET).cast(),
                size_of::<libc::linger>() as u32,
            )
            .build()
            .user_data(Token::bare(Op::Cancel).0);
            self.push(&entry);
            self.submit_queued();
        }
        let slot = &mut self.files[index as usize];
        // Dropping the table's reference closes the connection.
        if let Err(e) = self
            .ring
            .uring()
            .submitter()
            .register_files_update(index, &[-1])
        {
            // Cannot fail for a valid index on a live ring; if it did, the connection would stay
            // open until the ring is dropped, so say so.
            tracing::error!(
                index,
                "removing a socket from the io_uring file table failed: {e}"
            );
        }
        *slot = false;
    }

    fn leak_buffers(&mut self) {
        self.leak = true;
    }

    fn wait(
        &mut self,
        timeout: Option<Duration>,
        sink: &mut dyn FnMut(Completion<'_>),
    ) -> io::Result<()> {
        if let Some(e) = &self.failed {
            return Err(io::Error::new(
                e.kind(),
                format!("io_uring submit failed earlier: {e}"),
            ));
        }
        if !self.wake_armed {
            self.arm_wake();
        }
        let ring = self.ring.uring();
        let result = match timeout {
            None => ring.submit_and_wait(1),
            Some(t) => {
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                ring.submitter().submit_with_args(1, &args)
            }
        };
        // The kernel holds completions back when the queue is full (`IORING_SQ_CQ_OVERFLOW`),
        // and refuses submissions meanwhile (`EBUSY`): counted, and drained below.
        let busy = matches!(&result, Err(e) if e.raw_os_error() == Some(libc::EBUSY));
        match result {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) => {}
            Err(e) => return Err(e),
        }
        if busy || self.ring.uring_mut().submission().cq_overflow() {
            self.cq_overflows += 1;
        }
        // Everything queued was consumed by that enter (`IORING_SETUP_SUBMIT_ALL`), unless the
        // completion queue was full; then submit again after draining.
        let pending_submissions = !self.ring.uring_mut().submission().is_empty();
        if !pending_submissions {
            self.free_arenas();
        }

        let Port {
            ring,
            oneshot,
            recvs,
            wake,
            wake_armed,
            ..
        } = self;
        let (ring, mut bufs) = ring.parts();
        let mut cq = ring.completion();
        cq.sync();
        for cqe in &mut cq {
            let token = Token(cqe.user_data());
            let res = cqe.result();
            let flags = cqe.flags();
            let more = cqueue::more(flags);
            match token.op() {
                Some(Op::Recv) => {
                    if !more {
                        *recvs -= 1;
                    }
                    let result = if res < 0 {
                        Err(io::Error::from_raw_os_error(-res))
                    } else {
                        Ok(res as usize)
                    };
                    if let Some(bufs) = bufs.as_mut() {
                        match (result, cqueue::buffer_select(flags)) {
                            (Ok(n), Some(bid)) => {
                                // SAFETY: the kernel handed buffer `bid` back with this
                                // completion; it is pushed back only after the callback.
                                let data = unsafe { bufs.buffers().filled(usize::from(bid), n) };
                                sink(Completion::Recv {
                                    token,
                                    result: Ok(data),
                                    more,
                                });
                                bufs.push(bid);
                            }
                            (Ok(_), None) => sink(Completion::Recv {
                                token,
                                result: Ok(&[]),
                                more,
                            }),
                            (Err(e), bid) => {
                                if let Some(bid) = bid {
                                    bufs.push(bid);
                                }
                                sink(Completion::Recv {
                                    token,
                                    result: Err(e),
                                    more,
                                });
                            }
                        }
                    } else {
                        let index = token.conn().index as usize;
                        let bufs = oneshot.as_ref().expect("one-shot receive without buffers");
                        // SAFETY: this was the receive into the slot's buffer, and it is over
                        // (one receive per slot at a time).
                        let result = result.map(|n| unsafe { bufs.filled(index, n) });
                        sink(Completion::Recv {
                            token,
                            result,
                            more: false,
                        });
                    }
                }
                Some(Op::Send) => sink(Completion::Send {
                    token,
                    result: match res {
                        // The socket is non-blocking: when a send armed for writable finds it
                        // full again, the kernel gives up with `EAGAIN`. Nothing was sent; the
                        // owner submits again, which waits for room anew.
                        _ if res == -libc::EAGAIN => Ok(0),
                        _ if res < 0 => Err(io::Error::from_raw_os_error(-res)),
                        _ => Ok(res as usize),
                    },
                }),
                Some(Op::Accept) => {
                    let result = if res < 0 {
                        Err(io::Error::from_raw_os_error(-res))
                    } else {
                        // SAFETY: the kernel just created this descriptor for us.
                        Ok(unsafe { Socket::from_raw_fd(res) })
                    };
                    sink(Completion::Accept { result, more });
                }
                Some(Op::Wake) => {
                    // Resets the counter; `EAGAIN` (already reset) is fine.
                    let _ = (&wake.0).read(&mut [0; 8]);
                    if !more {
                        *wake_armed = false;
                    }
                    sink(Completion::Wake);
                }
                Some(Op::Cancel) | None => {}
            }
        }
        drop(cq);
        if let Some(bufs) = bufs {
            bufs.publish();
        }
        if pending_submissions {
            self.submit_queued();
            self.free_arenas();
        }
        Ok(())
    }

    fn waker(&self) -> Waker {
        Waker::new(self.wake.clone())
    }

    fn cq_overflows(&self) -> u64 {
        self.cq_overflows
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        if self.leak || self.recvs > 0 {
            // The kernel may still write into them (`Ring` drops the io_uring before it frees
            // the buffer ring, and leaks it now).
            self.ring.leak_buffers();
            if let Some(bufs) = self.oneshot.take() {
                bufs.leak();
            }
        }
    }
}

/// The wake-up `eventfd`, read and written as a file of 8-byte counters.
struct EventFd(File);

impl WakeInner for EventFd {
    fn wake(&self) -> io::Result<()> {
        match (&self.0).write(&1u64.to_ne_bytes()) {
            Ok(_) => Ok(()),
            // A full counter means a wake-up is already pending.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::Port as _;

    /// A ring that cannot submit any more (here: told so; in life, `EEXIST` when a
    /// single-issuer ring is used from another thread) drops what is pushed instead of looping or
    /// panicking, and every wait reports the error.
    #[test]
    fn a_failed_submit_is_an_error_of_every_wait() {
        let config = Config {
            capacity: 4,
            ..Config::default()
        };
        // On a thread of its own: see `uring_unavailable` in the tests' support module.
        std::thread::spawn(move || {
            let Ok((mut port, _)) = Port::new(&config) else {
                eprintln!("skipped: io_uring unavailable");
                return;
            };
            port.failed = Some(io::Error::from_raw_os_error(libc::EEXIST));
            // More entries than the submission queue holds: each push past it tries to submit.
            for _ in 0..2 * config.ring_entries {
                port.cancel_accept();
            }
            for _ in 0..2 {
                let error = port
                    .wait(Some(Duration::ZERO), &mut |_| panic!("a completion"))
                    .unwrap_err();
                assert_eq!(error.kind(), io::ErrorKind::AlreadyExists, "{error}");
            }
        })
        .join()
        .unwrap();
    }
}
