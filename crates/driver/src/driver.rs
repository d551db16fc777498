//! The common layer above the backends: connections, their send queues, and the rules of closing.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use socket2::Socket;

use crate::config::{Backend, Config, Features};
use crate::queue::{MAX_IOVECS, SendQueue};
use crate::stats::DriverStats;
use crate::sys::{self, AnyPort, Completion, Port, Raw, Waker};
use crate::token::{ConnId, Op, next_generation};

/// Copied sends are packed into blocks of this size, so that small messages cost no allocation.
const ARENA_BLOCK: usize = 16 * 1024;
/// First pause after `EMFILE`/`ENFILE`; doubled up to [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What happened, as the driver reports it to its owner.
#[derive(Debug)]
pub enum Event<'a> {
    /// A connection was accepted. Give it a slot with [`Io::attach`], or drop it to refuse it.
    Accepted(Socket),
    /// Accepting failed. On `EMFILE`, `ENFILE`, `ENOBUFS` and `ENOMEM` the driver pauses accepting
    /// for a while (10 ms, doubling up to 1 s) rather than spinning; on other errors it goes on.
    AcceptError(io::Error),
    /// Bytes arrived on a connection. They are lent until the callback returns.
    Received {
        /// The connection.
        conn: ConnId,
        /// The bytes, in order.
        data: &'a [u8],
    },
    /// The peer finished sending (it half-closed or closed). The connection can still send.
    ReadClosed {
        /// The connection.
        conn: ConnId,
    },
    /// The connection is closed and its slot free: every operation has completed and the socket
    /// is closed. `error` is the I/O error that closed it, if one did.
    Closed {
        /// The connection (its id is stale from now on).
        conn: ConnId,
        /// The error that made the driver close the connection, if any.
        error: Option<io::Error>,
    },
    /// [`Waker::wake`] was called.
    Woken,
}

/// How [`Io::close`] treats the bytes still queued.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CloseMode {
    /// Stop receiving, send what is queued, then close. Calling `close` again with
    /// [`CloseMode::Abort`] cuts the flush short.
    Flush,
    /// Stop receiving, cancel the send in flight, drop the queue and close.
    Abort,
    /// As [`CloseMode::Abort`], and reset the connection (`SO_LINGER` 0: the peer gets a RST)
    /// so that the kernel frees at once what it still holds for it, unsent bytes included
    /// (a peer that stopped reading would otherwise keep them in `FIN-WAIT-1` for minutes).
    Reset,
}

/// Why a connection refused an operation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ConnError {
    /// The id is stale: the connection was closed (its slot may already serve another one).
    Stale,
    /// The connection is closing and takes no more data.
    Closing,
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConnError::Stale => "connection id is stale (the connection was closed)",
            ConnError::Closing => "connection is closing",
        })
    }
}

impl std::error::Error for ConnError {}

/// A completion port for one thread: the backend plus the connections it serves.
///
/// ```no_run
/// use iocp_driver::{Config, Driver, Event};
/// let mut driver = Driver::new(&Config::default())?;
/// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
/// driver.io().start_accepting(&listener.into())?;
/// loop {
///     driver.turn(None, |io, event| match event {
///         Event::Accepted(socket) => {
///             let _ = io.attach(0, socket);
///         }
///         Event::Received { conn, data } => {
///             let _ = io.send_copy(conn, data);
///         }
///         _ => {}
///     })?;
/// }
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// A driver stays on the thread that made it (an io_uring ring is made for a single issuer,
/// and submitting from another thread fails), so it is not `Send`:
///
/// ```compile_fail,E0277
/// fn send<T: Send>(_: T) {}
/// let driver = iocp_driver::Driver::new(&iocp_driver::Config::default()).unwrap();
/// send(driver);
/// ```
pub struct Driver {
    io: Io,
    port: AnyPort,
    backend: Backend,
    features: Features,
    /// Not `Send`, not `Sync`, whatever the backends hold (their raw pointers made it so by
    /// accident before; now it is promised).
    _thread: PhantomData<*const ()>,
}

// `Driver` must not be `Send` (compio's `assert_not_impl!`): if it were, both impls below would
// apply and the name would be ambiguous, which does not compile.
const _: fn() = || {
    trait AmbiguousIfSend<A> {
        fn some_item() {}
    }
    impl<T: ?Sized> AmbiguousIfSend<()> for T {}
    impl<T: ?Sized + Send> AmbiguousIfSend<u8> for T {}
    let _ = <Driver as AmbiguousIfSend<_>>::some_item;
};

/// The submission half of a [`Driver`]: what a completion callback may do.
pub struct Io {
    conns: Box<[Conn]>,
    ops: Vec<Pending>,
    finished: VecDeque<(ConnId, Option<io::Error>)>,
    /// Connections with nothing in flight any more, whose socket is closed once the backend has
    /// let go of it ([`Port::release`]); then [`Event::Closed`] is reported.
    /// Bytes the kernel took from the send queues, since the start.
    bytes_sent: u64,
    /// Finished connections to release: id, error, socket, whether to reset it.
    released: Vec<(ConnId, Option<io::Error>, Option<Socket>, bool)>,
    arena: BytesMut,
    accept: Accept,
    /// Counters of what the owner does not see in the events.
    stats: DriverStats,
}

#[derive(Clone, Copy)]
enum Pending {
    /// Hand a newly attached socket to the backend ([`Port::adopt`]).
    Adopt(ConnId),
    Recv(ConnId),
    Send(ConnId),
    Cancel(ConnId, Op),
}

#[derive(Default)]
struct Accept {
    listener: Option<Socket>,
    /// Accepting is wanted (between `listen` and `stop_accepting`).
    wanted: bool,
    /// An accept is armed in the backend.
    armed: bool,
    cancel_sent: bool,
    paused_until: Option<Instant>,
    backoff: Duration,
}

/// Bits of [`Conn::flags`].
mod flag {
    pub const OPEN: u16 = 1;
    /// A receive is armed in the backend or about to be.
    pub const RECV: u16 = 1 << 1;
    /// The receive has been submitted (so cancelling it means asking the backend).
    pub const RECV_SUBMITTED: u16 = 1 << 2;
    /// A send is in flight in the backend or about to be.
    pub const SEND: u16 = 1 << 3;
    pub const SEND_SUBMITTED: u16 = 1 << 4;
    /// The peer finished sending; do not re-arm.
    pub const READ_DONE: u16 = 1 << 5;
    pub const CLOSING: u16 = 1 << 6;
    pub const ABORT: u16 = 1 << 7;
    /// Reset the connection when it is released ([`super::CloseMode::Reset`]).
    pub const RESET: u16 = 1 << 8;
}

#[derive(Default)]
struct Conn {
    /// The socket; `None` while the connection is open means the backend holds it without a
    /// descriptor ([`Port::adopt`]).
    socket: Option<Socket>,
    generation: u32,
    flags: u16,
    queue: SendQueue,
    error: Option<io::Error>,
    /// Bytes offered to the send in flight (to count partial sends).
    offered: usize,
}

impl Driver {
    /// Creates a driver with the backend `config` asks for.
    ///
    /// On io_uring, call this on the thread that will use the driver: the ring is created for a
    /// single issuer.
    pub fn new(config: &Config) -> io::Result<Driver> {
        let (port, backend, features) = AnyPort::new(config)?;
        let conns = (0..config.capacity).map(|_| Conn::default()).collect();
        Ok(Driver {
            io: Io {
                conns,
                ops: Vec::with_capacity(256),
                finished: VecDeque::new(),
                released: Vec::new(),
                bytes_sent: 0,
                stats: DriverStats::default(),
                arena: BytesMut::new(),
                accept: Accept {
                    backoff: ACCEPT_BACKOFF_MIN,
                    ..Accept::default()
                },
            },
            port,
            backend,
            features,
            _thread: PhantomData,
        })
    }

    /// The backend this driver runs on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// What the backend supports, and why it fell back if it did.
    pub fn features(&self) -> &Features {
        &self.features
    }

    /// The driver's counters since it started.
    pub fn stats(&self) -> DriverStats {
        DriverStats {
            cq_overflows: self.port.cq_overflows(),
            ..self.io.stats
        }
    }

    /// A handle that wakes this driver from another thread.
    pub fn waker(&self) -> Waker {
        self.port.waker()
    }

    /// The submission half, for use outside a completion callback.
    pub fn io(&mut self) -> &mut Io {
        &mut self.io
    }

    /// Submits what was asked, waits up to `timeout` (`None`: until something happens) and hands
    /// each event to `f` with the submission half, in the order the backend completed them.
    ///
    /// Events of one connection are delivered in order. Operations asked for inside `f` are
    /// submitted on the next turn, so that they are batched.
    ///
    /// An error means the completion port cannot go on (io_uring: submitting failed); stop
    /// using the driver and drop it (what the kernel may still touch is leaked, not freed).
    pub fn turn<F>(&mut self, timeout: Option<Duration>, mut f: F) -> io::Result<()>
    where
        F: FnMut(&mut Io, Event<'_>),
    {
        let Driver { io, port, .. } = self;
        io.submit(port);
        let timeout = io.wait_timeout(timeout);
        let result = port.wait(timeout, &mut |completion| {
            if let Some(event) = io.complete(completion) {
                f(io, event);
            }
        });
        io.close_released(port);
        io.report_finished(&mut f);
        result
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The kernel may still read queued bytes of a send in flight, or write into a receive
        // buffer. Leak such memory rather than free it under the kernel (graceful shutdown closes
        // every connection first, so this only happens when a thread unwinds).
        if self
            .io
            .conns
            .iter()
            .any(|c| c.flags & (flag::SEND | flag::RECV) != 0)
        {
            std::mem::forget(std::mem::take(&mut self.io.conns));
            self.port.leak_buffers();
        }
    }
}

impl Io {
    /// Number of connection slots.
    pub fn capacity(&self) -> u32 {
        self.conns.len() as u32
    }

    /// Bytes the kernel has taken from the send queues (sent, or at least in the socket's
    /// buffer) since the driver started: what was delivered, as opposed to what was queued.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent
    }

    /// Starts accepting connections on `listener`, a socket that is already listening (the
    /// caller binds it and calls `listen`). The driver keeps its own
    /// handle to it (a duplicate) for as long as it accepts, and makes it non-blocking (a flag
    /// the caller's handle shares).
    ///
    /// Fails if an accept is still armed: call [`Io::stop_accepting`] and turn until
    /// [`Io::is_accepting`] is false first.
    pub fn start_accepting(&mut self, listener: &Socket) -> io::Result<()> {
        if self.accept.armed {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "already accepting: stop_accepting() and wait for !is_accepting() first",
            ));
        }
        listener.set_nonblocking(true)?;
        self.accept.listener = Some(listener.try_clone()?);
        self.accept.wanted = true;
        Ok(())
    }

    /// While accepting is paused after an error (a back-off: out of descriptors, say), when it
    /// may resume. The driver does not wait for it by itself: whoever turns the driver must turn
    /// again by then (the server keeps it as a timer), and the next turn re-arms the accept.
    pub fn accept_paused_until(&self) -> Option<Instant> {
        self.accept
            .paused_until
            .filter(|_| self.accept.wanted && !self.accept.armed)
    }

    /// Stops accepting. Connections already accepted are not affected.
    pub fn stop_accepting(&mut self) {
        self.accept.wanted = false;
    }

    /// Whether the backend still has an accept armed (it is disarmed some time after
    /// [`Io::stop_accepting`]).
    pub fn is_accepting(&self) -> bool {
        self.accept.armed
    }

    /// Gives slot `index` to a connected socket and starts receiving on it.
    ///
    /// # Panics
    ///
    /// If the slot is in use (a connection is open or still closing in it).
    pub fn attach(&mut self, index: u32, socket: Socket) -> io::Result<ConnId> {
        let conn = &mut self.conns[index as usize];
        assert!(
            conn.flags == 0 && conn.socket.is_none(),
            "slot {index} is in use"
        );
        socket.set_nonblocking(true)?;
        conn.socket = Some(socket);
        conn.flags = flag::OPEN | flag::RECV;
        conn.error = None;
        let id = ConnId {
            index,
            generation: conn.generation,
        };
        self.ops.push(Pending::Adopt(id));
        self.ops.push(Pending::Recv(id));
        Ok(id)
    }

    /// The socket of an open connection (for options and addresses).
    ///
    /// `None` once the backend holds the socket without a descriptor: on io_uring the socket
    /// goes into the ring's file table and its descriptor is closed when the connection's
    /// first operation is submitted (so that the process's descriptor limit does not cap the
    /// connections). Set options and read addresses before [`Io::attach`].
    pub fn socket(&self, conn: ConnId) -> Option<&Socket> {
        self.get(conn).and_then(|c| c.socket.as_ref())
    }

    /// Whether `conn` is open and not closing.
    pub fn is_open(&self, conn: ConnId) -> bool {
        self.get(conn)
            .is_some_and(|c| c.flags & (flag::OPEN | flag::CLOSING) == flag::OPEN)
    }

    /// Bytes queued on `conn` and not yet sent (the part in flight included).
    pub fn queued(&self, conn: ConnId) -> Option<usize> {
        self.get(conn).map(|c| c.queue.len())
    }

    /// Queues `bytes` for sending on `conn`, after everything queued before. Returns the bytes now
    /// queued on the connection.
    ///
    /// The bytes are shared, not copied: encode a broadcast once and send it to many.
    pub fn send(&mut self, conn: ConnId, bytes: Bytes) -> Result<usize, ConnError> {
        let c = self.get_mut(conn).ok_or(ConnError::Stale)?;
        if c.flags & flag::CLOSING != 0 {
            return Err(ConnError::Closing);
        }
        let before = c.queue.len();
        c.queue.push(bytes);
        let queued = c.queue.len();
        if c.flags & flag::SEND == 0 && queued > 0 {
            c.flags |= flag::SEND;
            self.ops.push(Pending::Send(conn));
        }
        self.stats.send_queue_bytes += (queued - before) as u64;
        Ok(queued)
    }

    /// Copies `data` and queues it like [`Io::send`]. Copies are packed into shared blocks, so
    /// small messages cost no allocation each.
    pub fn send_copy(&mut self, conn: ConnId, data: &[u8]) -> Result<usize, ConnError> {
        if self.get(conn).is_none() {
            return Err(ConnError::Stale);
        }
        if self.arena.capacity() - self.arena.len() < data.len() {
            // Reuses the block in place when every earlier copy has been sent.
            self.arena.reserve(data.len().max(ARENA_BLOCK));
        }
        self.arena.extend_from_slice(data);
        let bytes = self.arena.split().freeze();
        self.send(conn, bytes)
    }

    /// Closes `conn`. [`Event::Closed`] follows once every operation on it has completed.
    ///
    /// Closing a connection that is already closing only upgrades [`CloseMode::Flush`] to
    /// [`CloseMode::Abort`].
    pub fn close(&mut self, conn: ConnId, mode: CloseMode) -> Result<(), ConnError> {
        let c = self.get_mut(conn).ok_or(ConnError::Stale)?;
        let mut flags = c.flags | flag::CLOSING;
        match mode {
            CloseMode::Flush => {}
            CloseMode::Abort => flags |= flag::ABORT,
            CloseMode::Reset => flags |= flag::ABORT | flag::RESET,
        }
        if flags == c.flags {
            return Ok(());
        }
        let was = c.flags;
        c.flags = flags;
        if was & flag::CLOSING == 0 && was & flag::RECV_SUBMITTED != 0 {
            self.ops.push(Pending::Cancel(conn, Op::Recv));
        }
        if mode != CloseMode::Flush && was & flag::SEND_SUBMITTED != 0 {
            self.ops.push(Pending::Cancel(conn, Op::Send));
        }
        self.finish_if_done(conn.index);
        Ok(())
    }

    fn get(&self, conn: ConnId) -> Option<&Conn> {
        self.conns
            .get(conn.index as usize)
            .filter(|c| c.flags & flag::OPEN != 0 && c.generation == conn.generation)
    }

    fn get_mut(&mut self, conn: ConnId) -> Option<&mut Conn> {
        self.conns
            .get_mut(conn.index as usize)
            .filter(|c| c.flags & flag::OPEN != 0 && c.generation == conn.generation)
    }

    fn wait_timeout(&self, timeout: Option<Duration>) -> Option<Duration> {
        // A connection may finish during submission (a receive or send it no longer needs):
        // its socket is closed and its `Event::Closed` reported right after this wait, which
        // must not block.
        if !self.finished.is_empty() || !self.ops.is_empty() || !self.released.is_empty() {
            return Some(Duration::ZERO);
        }
        timeout
    }

    /// Hands the operations asked for since the last turn to the backend.
    fn submit(&mut self, port: &mut AnyPort) {
        self.close_released(port);
        self.submit_accept(port);
        let mut ops = std::mem::take(&mut self.ops);
        for op in ops.drain(..) {
            match op {
                Pending::Adopt(id) => {
                    let Some(c) = self.get_mut(id) else { continue };
                    if let Some(socket) = c.socket.take() {
                        c.socket = port.adopt(id.index, socket);
                    }
                }
                Pending::Recv(id) => {
                    let Some(c) = self.get_mut(id) else { continue };
                    if c.flags & flag::CLOSING != 0 {
                        c.flags &= !flag::RECV;
                        self.finish_if_done(id.index);
                        continue;
                    }
                    c.flags |= flag::RECV_SUBMITTED;
                    port.recv(raw(c), id.token(Op::Recv));
                }
                Pending::Send(id) => {
                    let Some(c) = self.get_mut(id) else { continue };
                    if c.flags & flag::ABORT != 0 || c.queue.is_empty() {
                        c.flags &= !flag::SEND;
                        self.finish_if_done(id.index);
                        continue;
                    }
                    c.flags |= flag::SEND_SUBMITTED;
                    let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
                    let n = c.queue.slices(&mut slices);
                    let fd: Raw = raw(c);
                    // SAFETY: the slices point into `Bytes` held by the connection's queue. They
                    // are dropped only by `SendQueue::advance` or `clear`, which run after this
                    // send's completion (`complete` with `Op::Send`; `Port` promises exactly one,
                    // delivered by `wait`), or never (the driver leaks the table in `Drop` while
                    // a send is in flight). `Bytes` are immutable, and `Port` promises to copy
                    // the slice array itself before returning.
                    unsafe { port.send(fd, id.token(Op::Send), &slices[..n]) };
                    c.offered = slices[..n].iter().map(|s| s.len()).sum();
                }
                Pending::Cancel(id, op) => {
                    let Some(c) = self.get(id) else { continue };
                    port.cancel(raw(c), id.token(op));
                }
            }
        }
        self.ops = ops;
    }

    /// Closes the sockets of finished connections, each after the backend let go of it, and
    /// queues their [`Event::Closed`].
    fn close_released(&mut self, port: &mut AnyPort) {
        for (id, error, socket, reset) in self.released.drain(..) {
            if reset {
                if let Some(socket) = &socket {
                    if let Err(e) = socket.set_linger(Some(Duration::ZERO)) {
                        tracing::debug!("connection {}: SO_LINGER 0: {e}", id.index);
                    }
                }
            }
            port.release(id.index, socket, reset);
            self.finished.push_back((id, error));
        }
    }

    fn submit_accept(&mut self, port: &mut AnyPort) {
        let a = &mut self.accept;
        let Some(listener) = a.listener.as_ref() else {
            return;
        };
        let paused = a.paused_until.is_some_and(|until| Instant::now() < until);
        if !paused {
            a.paused_until = None;
        }
        let want_armed = a.wanted && !paused;
        if want_armed && !a.armed {
            a.armed = true;
            a.cancel_sent = false;
            port.accept(listener);
        } else if !want_armed && a.armed && !a.cancel_sent {
            a.cancel_sent = true;
            port.cancel_accept();
        } else if !a.wanted && !a.armed {
            a.listener = None;
        }
    }

    /// Turns one backend completion into bookkeeping and, maybe, an event for the owner.
    fn complete<'a>(&mut self, completion: Completion<'a>) -> Option<Event<'a>> {
        match completion {
            Completion::Accept { result, more } => {
                if !more {
                    self.accept.armed = false;
                }
                match result {
                    Ok(socket) => {
                        self.accept.backoff = ACCEPT_BACKOFF_MIN;
                        Some(Event::Accepted(socket))
                    }
                    Err(e) if sys::is_canceled(&e) => None,
                    Err(e) => {
                        // Out of descriptors or memory: pause. Any other error that disarmed the
                        // accept pauses too, so a lasting error cannot make it spin.
                        if sys::is_resource_shortage(&e) || !more {
                            let a = &mut self.accept;
                            a.paused_until = Some(Instant::now() + a.backoff);
                            a.backoff = (a.backoff * 2).min(ACCEPT_BACKOFF_MAX);
                            self.stats.accept_backoffs += 1;
                        }
                        Some(Event::AcceptError(e))
                    }
                }
            }
            Completion::Recv {
                token,
                result,
                more,
            } => {
                let id = token.conn();
                let c = self.conn_of(id)?;
                if !more {
                    c.flags &= !(flag::RECV | flag::RECV_SUBMITTED);
                }
                let closing = c.flags & flag::CLOSING != 0;
                let event = match result {
                    Ok([]) => {
                        c.flags |= flag::READ_DONE;
                        (!closing).then_some(Event::ReadClosed { conn: id })
                    }
                    Ok(data) => {
                        if !more && !closing {
                            c.flags |= flag::RECV;
                            self.ops.push(Pending::Recv(id));
                        }
                        (!closing).then_some(Event::Received { conn: id, data })
                    }
                    Err(e) => {
                        if sys::is_out_of_buffers(&e) && !more && !closing {
                            // The buffer ring ran dry; buffers come back as callbacks return.
                            c.flags |= flag::RECV;
                            self.ops.push(Pending::Recv(id));
                            self.stats.recv_out_of_buffers += 1;
                        } else if !sys::is_canceled(&e) {
                            self.fail(id, e);
                        }
                        None
                    }
                };
                self.finish_if_done(id.index);
                event
            }
            Completion::Send { token, result } => {
                if let Ok(n) = result {
                    self.bytes_sent += n as u64;
                }
                let id = token.conn();
                let c = self.conn_of(id)?;
                c.flags &= !(flag::SEND | flag::SEND_SUBMITTED);
                match result {
                    Ok(n) => {
                        let messages = c.queue.messages();
                        let advanced = c.queue.advance(n);
                        if advanced.is_ok() {
                            let done = (messages - c.queue.messages()) as u64;
                            let partial = n > 0 && n < c.offered;
                            let s = &mut self.stats;
                            s.send_queue_bytes = s.send_queue_bytes.saturating_sub(n as u64);
                            s.messages_sent += done;
                            s.partial_sends += u64::from(partial);
                        }
                        let c = self.conn_of(id)?;
                        if let Err(overrun) = advanced {
                            // Never expected; closing this connection is the safe way out.
                            tracing::error!("connection {}: {overrun}: closing it", id.index);
                            self.fail(id, io::Error::other(overrun.to_string()));
                        } else if !c.queue.is_empty() && c.flags & flag::ABORT == 0 {
                            c.flags |= flag::SEND;
                            self.ops.push(Pending::Send(id));
                        }
                    }
                    Err(e) if sys::is_canceled(&e) => {}
                    Err(e) => self.fail(id, e),
                }
                self.finish_if_done(id.index);
                None
            }
            Completion::Wake => Some(Event::Woken),
        }
    }

    /// The slot a completion belongs to. Completions always match their slot's generation: a slot
    /// is reused only after all of its operations completed.
    fn conn_of(&mut self, id: ConnId) -> Option<&mut Conn> {
        let c = self.conns.get_mut(id.index as usize)?;
        debug_assert!(
            c.flags & flag::OPEN != 0 && c.generation == id.generation,
            "completion for a closed connection"
        );
        (c.generation == id.generation && c.flags & flag::OPEN != 0).then_some(c)
    }

    /// An I/O error: remember it and close without flushing.
    fn fail(&mut self, id: ConnId, error: io::Error) {
        if let Some(c) = self.get_mut(id) {
            c.error.get_or_insert(error);
        }
        let _ = self.close(id, CloseMode::Abort);
    }

    /// Closes the socket of a closing connection once nothing of it is in flight.
    fn finish_if_done(&mut self, index: u32) {
        let c = &mut self.conns[index as usize];
        let busy = flag::RECV | flag::SEND;
        if c.flags & flag::CLOSING == 0 || c.flags & busy != 0 {
            return;
        }
        if c.flags & flag::ABORT == 0 && !c.queue.is_empty() {
            // Flushing: a send is queued or in flight, or will be.
            if c.flags & flag::SEND == 0 {
                c.flags |= flag::SEND;
                let id = ConnId {
                    index,
                    generation: c.generation,
                };
                self.ops.push(Pending::Send(id));
            }
            return;
        }
        let id = ConnId {
            index,
            generation: c.generation,
        };
        self.stats.send_queue_bytes = self
            .stats
            .send_queue_bytes
            .saturating_sub(c.queue.len() as u64);
        c.queue.clear();
        let socket = c.socket.take();
        let reset = c.flags & flag::RESET != 0;
        c.flags = 0;
        c.generation = next_generation(c.generation);
        self.released.push((id, c.error.take(), socket, reset));
    }

    fn report_finished<F: FnMut(&mut Io, Event<'_>)>(&mut self, f: &mut F) {
        while let Some((conn, error)) = self.finished.pop_front() {
            f(self, Event::Closed { conn, error });
        }
    }
}

/// How the backend names a connection's socket: its descriptor, or none when the backend holds
/// the socket itself ([`Port::adopt`]; the backend then ignores the value).
fn raw(c: &Conn) -> Raw {
    c.socket.as_ref().map_or(sys::NO_RAW, sys::raw)
}
