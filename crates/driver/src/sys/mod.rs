//! The operating-system layer: one folder per backend, one contract for all of them.
//!
//! # The contract
//!
//! A backend is a *completion port* owned by one thread. The common layer above it
//! ([`crate::Driver`]) submits operations, each tagged with a [`Token`], and the backend later hands
//! back exactly one final completion per operation (multishot operations hand back several, the
//! last one with `more == false`). A backend never decides what to do with a connection; it only
//! reports what happened.
//!
//! | operation | io_uring | poll (`mio`) | IOCP |
//! |---|---|---|---|
//! | [`Port::accept`] | multishot `IORING_OP_ACCEPT` | `accept4` on readable | `AcceptEx` × depth (on the port that owns the listener) |
//! | [`Port::recv`] | multishot `IORING_OP_RECV` + buffer ring | `read` on readable | zero-byte `WSARecv`, then `recv` until `WSAEWOULDBLOCK` |
//! | [`Port::send`] | `IORING_OP_SENDMSG` (gathering) | `sendmsg` at once; 0 bytes after writable when full | `WSASend` (gathering `WSABUF`s) |
//! | [`Port::cancel`] | `IORING_OP_ASYNC_CANCEL` | deregister | `CancelIoEx` |
//! | [`Port::wait`] | `io_uring_enter` + reap | `epoll_wait` | `GetQueuedCompletionStatusEx` |
//! | [`Waker::wake`] | `eventfd` write | `mio::Waker` | `PostQueuedCompletionStatus` |
//!
//! Rules every backend keeps:
//!
//! - **Receive is armed once and stays armed.** After [`Port::recv`] the backend delivers
//!   [`Completion::Recv`] with data for as long as it can (`more == true`). It ends with a final
//!   completion (`more == false`): end of stream (`Ok` with no data), an error, `ECANCELED` after
//!   [`Port::cancel`], or `ENOBUFS` when its buffers ran out (the caller re-arms). Data is lent to
//!   the callback only; the backend reclaims the buffer when the callback returns.
//! - **Send takes what the socket takes.** [`Port::send`] completes with the number of bytes
//!   accepted, which may be fewer than offered, even zero (a readiness backend completes with zero
//!   when the socket becomes writable again); the caller submits the rest. The buffers are owned by
//!   the caller, who keeps them unchanged until the completion (see the `# Safety` of
//!   [`Port::send`]); the slice of `IoSlice`s itself is copied at submission.
//! - **Every operation completes**, cancelled ones included, and the caller closes a socket only
//!   when none of its operations is outstanding. So no
//!   backend ever writes into, or reads from, memory that was freed.
//! - **Accept is armed until cancelled**, like receive; `more == false` says it must be re-armed.
//! - [`Port::wait`] returns without blocking when completions are already waiting, and returns
//!   early (possibly with no completion) after a [`Waker::wake`] or the timeout.
//! - An operation that finishes inside the call that started it (a readiness backend's `sendmsg`,
//!   an IOCP operation that succeeds at once under `FILE_SKIP_COMPLETION_PORT_ON_SUCCESS`) still
//!   completes through [`Port::wait`], never from inside the call.
//! - Several ports may be asked to accept on one listening socket. Where the OS lets only one of
//!   them accept (IOCP: a socket is associated with one completion port), the others' accept stays
//!   armed without completing until [`Port::cancel_accept`]. If none can (the port that owned the
//!   association is gone), the accept ends with an error.
//! - [`Port::wait`] returning an error means the port cannot go on (io_uring: submitting
//!   failed); its owner stops using it.
//!
//! The promises the driver's `unsafe` code relies on are the `# Safety` of [`Port`], an `unsafe
//! trait`. `tests/contract.rs` checks the rules on every backend.

use std::io::{self, IoSlice};
use std::time::Duration;

use socket2::Socket;

use crate::config::{Backend, BackendChoice, Config, Features};
use crate::token::Token;

#[cfg(windows)]
pub(crate) mod iocp;
#[cfg(unix)]
pub(crate) mod poll;
#[cfg(any(unix, windows))]
mod reader;
#[cfg(target_os = "linux")]
pub(crate) mod uring;

/// The raw handle a backend operates on.
#[cfg(unix)]
pub(crate) type Raw = std::os::fd::RawFd;

/// Stands for a socket the backend holds without a descriptor ([`Port::adopt`]).
#[cfg(unix)]
pub(crate) const NO_RAW: Raw = -1;

/// The raw handle of a socket.
#[cfg(unix)]
pub(crate) fn raw(socket: &Socket) -> Raw {
    use std::os::fd::AsRawFd;
    socket.as_raw_fd()
}

/// Whether an operation ended because it was cancelled.
#[cfg(unix)]
pub(crate) fn is_canceled(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ECANCELED)
}

/// Whether a receive ended with nothing wrong with the connection, so that it is re-armed: the
/// backend's buffers ran out (`ENOBUFS`), or the kernel gave up waiting for data on the
/// non-blocking socket (`EAGAIN`: io_uring, when a receive armed for readable finds nothing).
#[cfg(unix)]
pub(crate) fn is_out_of_buffers(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::EAGAIN))
}

/// Whether accepting failed for lack of descriptors or memory (accepting pauses and backs off).
#[cfg(unix)]
pub(crate) fn is_resource_shortage(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// The raw handle a backend operates on.
#[cfg(windows)]
pub(crate) type Raw = std::os::windows::io::RawSocket;

/// Stands for a socket the backend holds without a handle (never, on Windows).
#[cfg(windows)]
pub(crate) const NO_RAW: Raw = !0;

/// The raw handle of a socket.
#[cfg(windows)]
pub(crate) fn raw(socket: &Socket) -> Raw {
    use std::os::windows::io::AsRawSocket;
    socket.as_raw_socket()
}

/// Whether an operation ended because it was cancelled.
///
/// The IOCP backend reports a cancellation it asked for as `ERROR_OPERATION_ABORTED` (995, which
/// is also `WSA_OPERATION_ABORTED`); Wine has been seen to report `ERROR_HANDLES_CLOSED` (676).
/// An operation that failed with either code *without* having been cancelled is reported as
/// `WSAECONNABORTED` instead, so that it closes the connection: any failed completion that nobody
/// asked for means "closed".
#[cfg(windows)]
pub(crate) fn is_canceled(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(995 | 676))
}

/// Whether a receive ended because the backend's buffers ran out: never on IOCP (the zero-byte
/// `WSARecv` holds no buffer).
#[cfg(windows)]
pub(crate) fn is_out_of_buffers(_e: &io::Error) -> bool {
    false
}

/// Whether accepting failed for lack of handles or memory (accepting pauses and backs off):
/// `WSAEMFILE`, `WSAENOBUFS`, `ERROR_TOO_MANY_OPEN_FILES`, `ERROR_NOT_ENOUGH_MEMORY`,
/// `ERROR_OUTOFMEMORY`, `ERROR_NO_SYSTEM_RESOURCES`.
#[cfg(windows)]
pub(crate) fn is_resource_shortage(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(10024 | 10055 | 4 | 8 | 14 | 1450))
}

/// What a backend hands back for one operation.
pub(crate) enum Completion<'a> {
    /// A connection was accepted (the socket is non-blocking), or accepting failed.
    Accept {
        result: io::Result<Socket>,
        /// The accept is still armed.
        more: bool,
    },
    /// Data arrived (`Ok` with bytes), the peer finished sending (`Ok` and empty), or the receive
    /// failed.
    Recv {
        token: Token,
        result: io::Result<&'a [u8]>,
        /// The receive is still armed.
        more: bool,
    },
    /// A send finished: how many bytes the socket took.
    Send {
        token: Token,
        result: io::Result<usize>,
    },
    /// Another thread called [`Waker::wake`].
    Wake,
}

/// What every backend provides. See the module documentation for the rules.
///
/// # Safety
///
/// The driver's `unsafe` code relies on these promises; an implementation must keep every one:
///
/// - **Every operation completes exactly once** through [`Port::wait`] (a multishot one: once
///   with `more == false`, after any number with `more == true`), whether it succeeds, fails or
///   is cancelled, and never from inside the call that started it. A completion carries the
///   token it was submitted with, and none comes after the final one. (The caller frees the
///   memory of a send, or reuses a slot, on the strength of that final completion.)
/// - **Send reads only what it was given, until its completion**: [`Port::send`] copies the
///   `IoSlice` array itself before returning (the caller drops it at once), reads the bytes the
///   slices point to at most until the send's completion is delivered, and never writes them.
/// - **Receive memory is the backend's own**: the bytes lent by [`Completion::Recv`] stay valid
///   and unchanged until the sink returns, and the backend keeps every buffer the kernel may
///   write into alive until the operation writing it has completed, or for ever after
///   [`Port::leak_buffers`].
/// - **[`Port::release`] is called only when none of the slot's operations is outstanding**, and
///   the backend then forgets everything it knew of the slot's connection (a new connection in
///   the slot, with the same raw handle, is a new connection).
pub(crate) unsafe trait Port {
    /// Starts accepting connections on `listener`, a listening socket that outlives the accept.
    fn accept(&mut self, listener: &Socket);

    /// Stops accepting: the armed accept completes with `more == false`.
    fn cancel_accept(&mut self);

    /// Arms receiving on `fd`; completions carry `token`.
    fn recv(&mut self, fd: Raw, token: Token);

    /// Sends as much of `bufs` as the socket takes, as one operation.
    ///
    /// # Safety
    ///
    /// The memory the slices point to must stay valid and unchanged until the completion for
    /// `token` has been delivered by [`Port::wait`]. The slice array itself may be dropped as soon
    /// as this returns.
    unsafe fn send(&mut self, fd: Raw, token: Token, bufs: &[IoSlice<'_>]);

    /// Asks the operation `token` on `fd` to finish early; its completion still arrives.
    fn cancel(&mut self, fd: Raw, token: Token);

    /// Connection slot `index` starts using `socket`, before any operation on it. A backend that
    /// can reach the socket without its descriptor keeps it and closes the descriptor, returning
    /// `None` (io_uring: the socket goes into the ring's file table at `index`, and operations
    /// then name it by that index; the descriptor's raw value is ignored). Otherwise it hands
    /// the socket back, and operations name it by its descriptor.
    fn adopt(&mut self, _index: u32, socket: Socket) -> Option<Socket> {
        Some(socket)
    }

    /// Connection slot `index` is finished, none of its operations is outstanding: the backend
    /// lets go of whatever it holds of the socket (io_uring: its entry in the file table), which
    /// closes the connection, and `socket` (what [`Port::adopt`] handed back) is closed. With
    /// `reset`, the connection is reset: the driver has set `SO_LINGER` 0 on `socket` already;
    /// a backend that holds the socket without it sets it before letting go.
    fn release(&mut self, _index: u32, socket: Option<Socket>, _reset: bool) {
        drop(socket);
    }

    /// Keeps every buffer the kernel may still touch alive for ever: called when the port is
    /// dropped while operations may be outstanding (a thread unwinding).
    fn leak_buffers(&mut self);

    /// Submits what was asked, waits up to `timeout` (`None`: forever) for at least one
    /// completion, and hands every available completion to `sink`.
    fn wait(
        &mut self,
        timeout: Option<Duration>,
        sink: &mut dyn FnMut(Completion<'_>),
    ) -> io::Result<()>;

    /// A handle that wakes [`Port::wait`] from another thread.
    fn waker(&self) -> Waker;

    /// Waits that found the kernel's completion queue overflowed, since the start (io_uring
    /// only).
    fn cq_overflows(&self) -> u64 {
        0
    }
}

/// Wakes a driver's thread from any other thread (`PostQueuedCompletionStatus` on IOCP, an
/// `eventfd` on io_uring, `mio::Waker` with the `poll` backend).
#[derive(Clone)]
pub struct Waker {
    inner: std::sync::Arc<dyn WakeInner>,
}

pub(crate) trait WakeInner: Send + Sync {
    fn wake(&self) -> io::Result<()>;
}

impl Waker {
    pub(crate) fn new(inner: std::sync::Arc<dyn WakeInner>) -> Waker {
        Waker { inner }
    }

    /// Makes the driver's current or next wait return.
    pub fn wake(&self) -> io::Result<()> {
        self.inner.wake()
    }
}

impl std::fmt::Debug for Waker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Waker")
    }
}

/// The backend chosen at run time.
// One per worker thread, never moved after start: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum AnyPort {
    #[cfg(target_os = "linux")]
    Uring(uring::Port),
    #[cfg(unix)]
    Poll(poll::Port),
    #[cfg(windows)]
    Iocp(iocp::Port),
}

macro_rules! each {
    ($self:ident, $p:ident => $e:expr) => {
        match $self {
            #[cfg(target_os = "linux")]
            AnyPort::Uring($p) => $e,
            #[cfg(unix)]
            AnyPort::Poll($p) => $e,
            #[cfg(windows)]
            AnyPort::Iocp($p) => $e,
        }
    };
}

impl AnyPort {
    /// Builds the backend `config` asks for, falling back from io_uring to `poll` under `auto`.
    pub(crate) fn new(config: &Config) -> io::Result<(AnyPort, Backend, Features)> {
        match config.backend {
            #[cfg(target_os = "linux")]
            BackendChoice::Uring => {
                let (port, features) = uring::Port::new(config)?;
                Ok((AnyPort::Uring(port), Backend::Uring, features))
            }
            #[cfg(target_os = "linux")]
            BackendChoice::Auto => match uring::Port::new(config) {
                Ok((port, features)) => Ok((AnyPort::Uring(port), Backend::Uring, features)),
                Err(error) => {
                    let port = poll::Port::new(config)?;
                    let features = Features {
                        fallback: Some(uring::explain_failure(&error)),
                        ..Features::default()
                    };
                    Ok((AnyPort::Poll(port), Backend::Poll, features))
                }
            },
            #[cfg(all(unix, not(target_os = "linux")))]
            BackendChoice::Auto => Ok((
                AnyPort::Poll(poll::Port::new(config)?),
                Backend::Poll,
                Features::default(),
            )),
            #[cfg(unix)]
            BackendChoice::Poll => Ok((
                AnyPort::Poll(poll::Port::new(config)?),
                Backend::Poll,
                Features::default(),
            )),
            #[cfg(windows)]
            BackendChoice::Auto | BackendChoice::Iocp => {
                let (port, features) = iocp::Port::new(config)?;
                Ok((AnyPort::Iocp(port), Backend::Iocp, features))
            }
            #[allow(unreachable_patterns)]
            other => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("the {other} backend is not available on this platform"),
            )),
        }
    }
}

// SAFETY: every variant forwards to a backend that implements `Port` (and keeps its promises).
unsafe impl Port for AnyPort {
    fn accept(&mut self, listener: &Socket) {
        each!(self, p => p.accept(listener))
    }

    fn cancel_accept(&mut self) {
        each!(self, p => p.cancel_accept())
    }

    fn recv(&mut self, fd: Raw, token: Token) {
        each!(self, p => p.recv(fd, token))
    }

    unsafe fn send(&mut self, fd: Raw, token: Token, bufs: &[IoSlice<'_>]) {
        // SAFETY: the caller upholds `Port::send`'s contract, which every backend shares.
        each!(self, p => unsafe { p.send(fd, token, bufs) })
    }

    fn cancel(&mut self, fd: Raw, token: Token) {
        each!(self, p => p.cancel(fd, token))
    }

    fn adopt(&mut self, index: u32, socket: Socket) -> Option<Socket> {
        each!(self, p => p.adopt(index, socket))
    }

    fn release(&mut self, index: u32, socket: Option<Socket>, reset: bool) {
        each!(self, p => p.release(index, socket, reset))
    }

    fn leak_buffers(&mut self) {
        each!(self, p => p.leak_buffers())
    }

    fn wait(
        &mut self,
        timeout: Option<Duration>,
        sink: &mut dyn FnMut(Completion<'_>),
    ) -> io::Result<()> {
        each!(self, p => p.wait(timeout, sink))
    }

    fn waker(&self) -> Waker {
        each!(self, p => p.waker())
    }

    fn cq_overflows(&self) -> u64 {
        each!(self, p => p.cq_overflows())
    }
}
