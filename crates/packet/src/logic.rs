//! The second mode: all packets of all sessions are handled on **one logic thread**, fed by a
//! bounded queue — the tutorial's `PacketManager` thread, so that game logic needs no locks.
//!
//! ```text
//!  I/O worker 0 ─┐  frames of its sessions, connect, disconnect     ┌─────────────────────┐
//!  I/O worker 1 ─┼──────────────────────────────────────────────────▶│ bounded queue       │──▶ logic thread:
//!  other threads ┘  your messages (LogicSender), e.g. DB results    └─────────────────────┘    &mut L, no locks
//! ```
//!
//! - **Framing stays on the I/O worker.** Each session's bytes are decoded there (its decoder
//!   is its session state on the worker, see `slots.rs`: no lock); whole frames of known ids are copied into one buffer per read
//!   (one allocation per receive, not per packet) and queued as shared slices of it. Unknown ids
//!   and bad lengths are found there, and the session's later bytes dropped there; the close
//!   itself goes through the queue, so that the packets before the bad one are handled and
//!   their replies sent first.
//! - **System packets in order with the data.** A session's connect (the tutorial's
//!   `SYS_USER_CONNECT`) and disconnect (`SYS_USER_DISCONNECT`) go through the same queue as its
//!   packets, from the same worker, so the logic thread sees connect, then the packets in the
//!   order they arrived, then disconnect — always, whatever closed the session.
//! - **Back-pressure when the queue is full ([`WhenFull`]).** By default the I/O worker *waits*
//!   for room: no packet is ever dropped, and a logic thread that falls behind slows the input
//!   down (TCP's flow control then pushes back on the clients) instead of growing a queue without
//!   bound. Alternatively ([`WhenFull::Disconnect`]) the session whose packet does not fit is
//!   closed, with a logged [`CloseReason::Protocol`] saying so — the worker never waits, and the
//!   logic thread sees that session's disconnect. Connect and disconnect always wait: they are
//!   two per session and the logic's bookkeeping depends on them.
//! - **Nothing on the logic thread blocks.** Sends go to the sessions' workers through
//!   [`ServerHandle`] (a queue push and a wake-up); slow work (password hashing, a database)
//!   belongs on other threads, which report back through a [`LogicSender`] as messages
//!   ([`Logic::on_message`]), in the same queue.
//! - **A panic costs one session.** As on the I/O workers, a handler that panics on the logic
//!   thread is caught and logged, and the session concerned is closed
//!   ([`CloseReason::HandlerPanicked`]); the logic thread goes on.
//! - **Stopping.** [`LogicServer::shutdown`] (or [`LogicServer::join`]) stops the server first —
//!   every session's disconnect is queued — and then the logic thread, after everything before
//!   the stop has been handled. If the logic thread ends while the server runs (it was stopped
//!   early), the server is shut down: a game without its logic would only accept clients it
//!   cannot serve.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;

use bytes::{Bytes, BytesMut};
use iocp_server::{CloseReason, Config, Context, Handler, Server, ServerHandle, SessionId};
use iocp_wire::{Frame, MAX_FRAME_LEN, TypedPacket};

use crate::slots::PacketSession;
use crate::table::Table;
use crate::{BadPacket, PacketError, PacketOptions, PacketResult};

/// The game logic that runs on the logic thread: it owns its state (`&mut self`), and is called
/// for each system event in queue order. Packets go to the handlers registered with
/// [`LogicPackets::on`].
pub trait Logic: Send + 'static {
    /// Messages that other threads post to the logic thread ([`LogicSender`]), e.g. the result
    /// of a database query. Use `()` if there are none.
    type Message: Send + 'static;

    /// A session opened (the tutorial's `SYS_USER_CONNECT`). Comes before its packets.
    fn on_connect(&mut self, ctx: &mut LogicContext<'_>, session: SessionId, peer: SocketAddr) {
        let _ = (ctx, session, peer);
    }

    /// A session ended (the tutorial's `SYS_USER_DISCONNECT`): after its last packet, whatever
    /// closed it. Its id is stale from now on: forget it here.
    fn on_disconnect(
        &mut self,
        ctx: &mut LogicContext<'_>,
        session: SessionId,
        reason: CloseReason,
    ) {
        let _ = (ctx, session, reason);
    }

    /// A message posted with a [`LogicSender`].
    fn on_message(&mut self, ctx: &mut LogicContext<'_>, message: Self::Message) {
        let _ = (ctx, message);
    }

    /// The logic's tick, every [`QueueOptions::tick`] (when set): timed work — deadlines,
    /// rounds, retries — on the logic thread, with no thread of its own.
    fn on_tick(&mut self, ctx: &mut LogicContext<'_>) {
        let _ = ctx;
    }
}

/// What the logic thread's callbacks act through: send to and close sessions.
pub struct LogicContext<'a> {
    handle: &'a ServerHandle,
    closing: &'a mut HashSet<SessionId>,
}

impl LogicContext<'_> {
    /// Queues a copy of `data` for `session` (see [`ServerHandle::send`]). Never blocks.
    pub fn send(&self, session: SessionId, data: &[u8]) -> iocp_server::Result<()> {
        self.handle.send(session, data)
    }

    /// Queues shared bytes for `session`: encode a broadcast once, send clones of it to every
    /// member (see [`ServerHandle::send_bytes`]). Never blocks.
    pub fn send_bytes(&self, session: SessionId, data: Bytes) -> iocp_server::Result<()> {
        self.handle.send_bytes(session, data)
    }

    /// Closes `session` after what is queued for it is sent. Its packets still in the logic
    /// queue are dropped; its disconnect will follow.
    pub fn close(&mut self, session: SessionId) -> iocp_server::Result<()> {
        self.close_with(session, CloseReason::Closed)
    }

    /// Closes `session` with `reason` (see [`LogicContext::close`]).
    pub fn close_with(
        &mut self,
        session: SessionId,
        reason: CloseReason,
    ) -> iocp_server::Result<()> {
        self.closing.insert(session);
        self.handle.close_with(session, reason)
    }

    /// Whether the logic closed `session` and its disconnect has not arrived yet.
    pub fn is_closing(&self, session: SessionId) -> bool {
        self.closing.contains(&session)
    }

    /// The server's handle (statistics, shutdown, sends from other threads).
    pub fn handle(&self) -> &ServerHandle {
        self.handle
    }
}

/// What the I/O worker does when the logic queue is full. See the [module notes](self).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WhenFull {
    /// Wait until the logic thread makes room: nothing is dropped, input slows down. The worker
    /// waits at most [`QueueOptions::max_wait`] for one packet (then the session is closed,
    /// [`CloseReason::Overloaded`]), and not at all once the server is shutting down, so that a
    /// logic thread that falls far behind holds a worker's other sessions and timers for at
    /// most that long per packet. A session's connect and disconnect still wait for room: the
    /// logic's bookkeeping depends on them (two per session).
    #[default]
    Wait,
    /// Close the session whose packet does not fit ([`CloseReason::Protocol`], logged); its
    /// disconnect is still delivered. The I/O worker never waits for a packet.
    Disconnect,
}

/// The logic queue's size and policy.
#[derive(Clone, Copy, Debug)]
pub struct QueueOptions {
    /// Events the queue holds (packets, connects, disconnects and messages together).
    pub capacity: usize,
    /// What the I/O worker does when it is full.
    pub when_full: WhenFull,
    /// With [`WhenFull::Wait`], the longest an I/O worker waits to queue one packet.
    pub max_wait: std::time::Duration,
    /// Call [`Logic::on_tick`] this often; `None`: never.
    pub tick: Option<std::time::Duration>,
}

impl Default for QueueOptions {
    /// 16,384 events, [`WhenFull::Wait`] for up to 1 s, no tick.
    fn default() -> Self {
        QueueOptions {
            capacity: 16 * 1024,
            when_full: WhenFull::Wait,
            max_wait: std::time::Duration::from_secs(1),
            tick: None,
        }
    }
}

/// Counters of the logic queue and thread, since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogicStats {
    /// Events the logic thread handled (packets, connects, disconnects, messages).
    pub events: u64,
    /// Packets handed to their handlers.
    pub packets: u64,
    /// Times an I/O worker (or a [`LogicSender`]) found the queue full and waited for room.
    pub queue_full_waits: u64,
    /// Sessions closed because the queue was full ([`WhenFull::Disconnect`]).
    pub closed_queue_full: u64,
    /// Packets refused: unknown id, or their handler returned an error.
    pub bad_packets: u64,
    /// Input dropped because its session was already being closed by the packet manager or the
    /// logic: queued packets on the logic thread, whole reads on the I/O workers.
    pub dropped_after_close: u64,
    /// Events put in the queue (packets, connects, disconnects, messages); less
    /// [`LogicStats::events`], what waits in the queue now ([`LogicStats::queue_depth`]).
    pub queued: u64,
}

impl LogicStats {
    /// Events waiting in the logic queue now (as near as counters read one after another can
    /// say).
    pub fn queue_depth(&self) -> u64 {
        self.queued.saturating_sub(self.events)
    }
}

/// Slots of [`Counters::queued`]: an I/O worker counts what it queues in slot `worker % this`,
/// its own cache line (as long as the workers are no more than this).
const QUEUED_SLOTS: usize = 32;

/// A counter alone on its cache line.
#[derive(Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

#[derive(Default)]
struct Counters {
    events: AtomicU64,
    packets: AtomicU64,
    queue_full_waits: AtomicU64,
    closed_queue_full: AtomicU64,
    bad_packets: AtomicU64,
    dropped_after_close: AtomicU64,
    logic_gone_logged: AtomicBool,
    /// Events queued, by I/O worker ([`QUEUED_SLOTS`]): no cache line shared between workers.
    queued: [Padded; QUEUED_SLOTS],
    /// Messages queued through [`LogicSender`]s.
    messages_queued: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> LogicStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        LogicStats {
            events: get(&self.events),
            packets: get(&self.packets),
            queue_full_waits: get(&self.queue_full_waits),
            closed_queue_full: get(&self.closed_queue_full),
            bad_packets: get(&self.bad_packets),
            dropped_after_close: get(&self.dropped_after_close),
            queued: self.queued.iter().map(|p| get(&p.0)).sum::<u64>() + get(&self.messages_queued),
        }
    }

    /// Worker `worker` queued an event.
    #[inline]
    fn queued_by(&self, worker: usize) {
        self.queued[worker % QUEUED_SLOTS]
            .0
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// One entry of the logic queue.
enum Event<M> {
    Connect(SessionId, SocketAddr),
    /// One whole frame, header included.
    Packet(SessionId, Bytes),
    Disconnect(SessionId, CloseReason),
    /// The front found bad input: close the session once the packets before it are handled,
    /// so that their replies still go out.
    Close(SessionId, CloseReason),
    Message(M),
    /// Never queued: the loop's own tick.
    Tick,
    Stop,
}

/// Posts messages to the logic thread from any thread ([`Logic::on_message`]). Cloneable.
///
/// Do not [`send`](Self::send) from the logic thread itself: with the queue full it would wait
/// for itself.
pub struct LogicSender<M> {
    tx: SyncSender<Event<M>>,
    counters: Arc<Counters>,
}

impl<M> Clone for LogicSender<M> {
    fn clone(&self) -> Self {
        LogicSender {
            tx: self.tx.clone(),
            counters: self.counters.clone(),
        }
    }
}

impl<M: Send> LogicSender<M> {
    /// Queues `message`, waiting while the queue is full. Gives it back if the logic thread
    /// has ended.
    pub fn send(&self, message: M) -> Result<(), M> {
        let event = match self.tx.try_send(Event::Message(message)) {
            Ok(()) => {
                bump(&self.counters.messages_queued);
                return Ok(());
            }
            Err(TrySendError::Full(event)) => {
                bump(&self.counters.queue_full_waits);
                event
            }
            Err(TrySendError::Disconnected(event)) => return Err(unwrap_message(event)),
        };
        self.tx.send(event).map_err(|e| unwrap_message(e.0))?;
        bump(&self.counters.messages_queued);
        Ok(())
    }

    /// Queues `message` if there is room now.
    pub fn try_send(&self, message: M) -> Result<(), TrySendError<M>> {
        self.tx
            .try_send(Event::Message(message))
            .inspect(|()| bump(&self.counters.messages_queued))
            .map_err(|e| match e {
                TrySendError::Full(event) => TrySendError::Full(unwrap_message(event)),
                TrySendError::Disconnected(event) => {
                    TrySendError::Disconnected(unwrap_message(event))
                }
            })
    }
}

fn unwrap_message<M>(event: Event<M>) -> M {
    match event {
        Event::Message(m) => m,
        _ => unreachable!("a LogicSender only sends messages"),
    }
}

type LogicFn<L> =
    Box<dyn Fn(&mut L, &mut LogicContext<'_>, SessionId, Frame<'_>) -> PacketResult + Send>;

/// Builds the logic-thread packet manager: the packet-id → handler table for handlers that run
/// on the logic thread with `&mut L`.
pub struct LogicPackets<L: Logic> {
    table: Table<LogicFn<L>>,
}

impl<L: Logic> Default for LogicPackets<L> {
    fn default() -> Self {
        Self::new()
    }
}

impl<L: Logic> LogicPackets<L> {
    /// An empty table.
    pub fn new() -> Self {
        LogicPackets {
            table: Table::default(),
        }
    }

    /// Registers the handler of packet `id`, replacing an earlier one. Methods fit:
    /// `packets.on(LOGIN_REQUEST, Game::on_login)` with
    /// `fn on_login(&mut self, ctx: &mut LogicContext<'_>, session: SessionId, frame: Frame<'_>) -> PacketResult`.
    pub fn on<F>(&mut self, id: u16, handler: F) -> &mut Self
    where
        F: Fn(&mut L, &mut LogicContext<'_>, SessionId, Frame<'_>) -> PacketResult + Send + 'static,
    {
        self.table.insert(id, Box::new(handler));
        self
    }

    /// Registers `handler` for packets of type `P` (id [`TypedPacket::ID`]): the frame is decoded
    /// before the call, and a body that does not fit `P` is refused as a handler's error would be
    /// ([`BadPacket`]).
    pub fn on_packet<P, F>(&mut self, handler: F) -> &mut Self
    where
        P: TypedPacket + 'static,
        F: Fn(&mut L, &mut LogicContext<'_>, SessionId, P) -> PacketResult + Send + 'static,
    {
        self.on(P::ID, move |logic, ctx, session, frame| {
            handler(logic, ctx, session, P::decode(&frame)?)
        })
    }

    /// Splits the packet manager into the [`Handler`] to start the server with (the I/O side)
    /// and the logic side, to [`spawn`](LogicBack::spawn) once the server has started.
    pub fn build(
        self,
        options: PacketOptions,
        queue: QueueOptions,
    ) -> (LogicFront<L::Message>, LogicBack<L>) {
        let (tx, rx) = sync_channel(queue.capacity.max(1));
        let counters = Arc::new(Counters::default());
        let front = LogicFront {
            tx: tx.clone(),
            ids: self.table.ids(),
            max_frame_len: options.max_frame_len,
            bad_packet: options.bad_packet,
            queue,
            counters: counters.clone(),
        };
        let back = LogicBack {
            rx,
            tx,
            table: self.table,
            bad_packet: options.bad_packet,
            tick: queue.tick,
            counters,
        };
        (front, back)
    }

    /// Starts the server with `config` and the logic thread with the logic that `make_logic`
    /// builds; `make_logic` gets a [`LogicSender`] for threads that will report to the logic
    /// (a database pool, say). The packet options are the defaults ([`PacketOptions::default`]).
    pub fn start<F>(
        self,
        config: Config,
        queue: QueueOptions,
        make_logic: F,
    ) -> iocp_server::Result<LogicServer<L>>
    where
        F: FnOnce(LogicSender<L::Message>) -> L,
    {
        let options = PacketOptions::default();
        self.start_with(config, options, queue, make_logic)
    }

    /// [`start`](Self::start) with chosen packet options.
    pub fn start_with<F>(
        self,
        config: Config,
        options: PacketOptions,
        queue: QueueOptions,
        make_logic: F,
    ) -> iocp_server::Result<LogicServer<L>>
    where
        F: FnOnce(LogicSender<L::Message>) -> L,
    {
        let (front, back) = self.build(options, queue);
        let logic = make_logic(back.sender());
        let server = Server::start(config, front)?;
        match back.spawn(server.handle(), logic) {
            Ok(logic) => Ok(LogicServer { server, logic }),
            Err(source) => {
                let _ = server.shutdown();
                Err(iocp_server::Error::Io {
                    op: "spawning the logic thread",
                    source,
                })
            }
        }
    }
}

/// The I/O side of the logic-thread packet manager: the [`Handler`] the server runs on its
/// workers. It frames each session's bytes and queues whole frames, connects and disconnects for
/// the logic thread.
pub struct LogicFront<M> {
    tx: SyncSender<Event<M>>,
    /// Registered ids, sorted: packets of other ids are refused here.
    ids: Vec<u16>,
    max_frame_len: usize,
    bad_packet: BadPacket,
    queue: QueueOptions,
    counters: Arc<Counters>,
}

impl<M: Send + 'static> LogicFront<M> {
    /// Queues a system event (connect, disconnect): always waits for room.
    fn push_system<S>(&self, ctx: &mut Context<'_, S>, event: Event<M>) -> bool {
        let event = match self.tx.try_send(event) {
            Ok(()) => {
                self.counters.queued_by(ctx.worker());
                return true;
            }
            Err(TrySendError::Full(event)) => {
                bump(&self.counters.queue_full_waits);
                event
            }
            Err(TrySendError::Disconnected(_)) => {
                self.logic_gone(ctx);
                return false;
            }
        };
        if self.tx.send(event).is_err() {
            self.logic_gone(ctx);
            return false;
        }
        self.counters.queued_by(ctx.worker());
        true
    }

    /// Queues one packet of `session` by the [`WhenFull`] policy. Returns false if the session
    /// was closed instead.
    fn push_packet(
        &self,
        ctx: &mut Context<'_, PacketSession>,
        session: SessionId,
        frame: Bytes,
    ) -> bool {
        let closing = |ctx: &mut Context<'_, PacketSession>| {
            if let Some(state) = ctx.state(session) {
                state.closing = true;
            }
        };
        let mut event = match self.tx.try_send(Event::Packet(session, frame)) {
            Ok(()) => {
                self.counters.queued_by(ctx.worker());
                return true;
            }
            Err(TrySendError::Full(event)) => event,
            Err(TrySendError::Disconnected(_)) => {
                closing(ctx);
                self.logic_gone(ctx);
                let _ = ctx.close_with(
                    session,
                    CloseReason::Protocol("the logic thread has stopped".into()),
                );
                return false;
            }
        };
        let overloaded = match self.queue.when_full {
            WhenFull::Wait => {
                bump(&self.counters.queue_full_waits);
                // Wait for room, but not for ever: this worker's other sessions, its timers
                // and a shutdown wait meanwhile.
                let deadline = std::time::Instant::now() + self.queue.max_wait;
                let mut pause = std::time::Duration::from_micros(50);
                loop {
                    match self.tx.try_send(event) {
                        Ok(()) => {
                            self.counters.queued_by(ctx.worker());
                            return true;
                        }
                        Err(TrySendError::Full(back)) => event = back,
                        Err(TrySendError::Disconnected(_)) => {
                            closing(ctx);
                            self.logic_gone(ctx);
                            return false;
                        }
                    }
                    if ctx.handle().is_shutting_down() {
                        closing(ctx);
                        let _ = ctx.close_with(session, CloseReason::Shutdown);
                        return false;
                    }
                    if std::time::Instant::now() >= deadline {
                        break format!(
                            "logic queue full ({} events) for {:?}: the server is overloaded",
                            self.queue.capacity, self.queue.max_wait
                        );
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_millis(5));
                }
            }
            WhenFull::Disconnect => format!(
                "logic queue full ({} events): the server is overloaded",
                self.queue.capacity
            ),
        };
        bump(&self.counters.closed_queue_full);
        closing(ctx);
        crate::ratelog::closing(session, &overloaded);
        let _ = ctx.close_with(session, CloseReason::Overloaded(overloaded));
        false
    }

    /// The logic thread has ended while the server runs: shut the server down (once).
    fn logic_gone<S>(&self, ctx: &mut Context<'_, S>) {
        if !self
            .counters
            .logic_gone_logged
            .swap(true, Ordering::Relaxed)
        {
            if !ctx.handle().is_shutting_down() {
                tracing::error!("the logic thread has stopped: shutting the server down");
            }
            ctx.handle().shutdown();
        }
    }

    /// Closes `session` for bad input — through the queue, after the packets of `session`
    /// queued before it (their replies still go out). With [`WhenFull::Disconnect`] and the
    /// queue full, at once.
    fn refuse<S>(&self, ctx: &mut Context<'_, S>, session: SessionId, error: &PacketError) {
        crate::ratelog::closing(session, &error);
        let event = Event::Close(session, CloseReason::Protocol(error.to_string()));
        match (self.queue.when_full, self.tx.try_send(event)) {
            (_, Ok(())) => self.counters.queued_by(ctx.worker()),
            (WhenFull::Wait, Err(TrySendError::Full(event))) => {
                self.push_system(ctx, event);
            }
            (_, Err(TrySendError::Full(_))) => {
                let _ = ctx.close_with(session, CloseReason::Protocol(error.to_string()));
            }
            (_, Err(TrySendError::Disconnected(_))) => {
                self.logic_gone(ctx);
                let _ = ctx.close_with(session, CloseReason::Protocol(error.to_string()));
            }
        }
    }

    #[inline]
    fn known(&self, id: u16) -> bool {
        self.ids.binary_search(&id).is_ok()
    }
}

impl<M: Send + 'static> Handler for LogicFront<M> {
    type Session = PacketSession;

    fn on_connect(
        &self,
        ctx: &mut Context<'_, PacketSession>,
        session: SessionId,
        peer: SocketAddr,
    ) {
        if let Some(state) = ctx.state(session) {
            state.open(self.max_frame_len);
        }
        self.push_system(ctx, Event::Connect(session, peer));
    }

    fn on_receive(&self, ctx: &mut Context<'_, PacketSession>, session: SessionId, data: &[u8]) {
        let Some(slot) = ctx.state(session) else {
            return;
        };
        if slot.closing {
            bump(&self.counters.dropped_after_close);
            return;
        }
        // The whole frames of this read, back to back in one buffer: one allocation per read.
        let mut batch = BytesMut::new();
        let mut failure = None;
        let mut frames = slot.decoder.feed(data);
        loop {
            match frames.next_frame() {
                Ok(Some(frame)) if self.known(frame.id()) => {
                    if batch.capacity() == 0 {
                        batch.reserve(data.len() + frame.as_bytes().len());
                    }
                    batch.extend_from_slice(frame.as_bytes());
                }
                Ok(Some(frame)) => {
                    let error = PacketError::UnknownId { id: frame.id() };
                    bump(&self.counters.bad_packets);
                    if self.bad_packet == BadPacket::Ignore {
                        tracing::debug!("session {session}: {error}: packet ignored");
                        continue;
                    }
                    failure = Some(error);
                    break;
                }
                Ok(None) => break,
                Err(e) => {
                    failure = Some(PacketError::Frame(e));
                    break;
                }
            }
        }
        drop(frames);
        if failure.is_some() {
            slot.closing = true;
        }
        let batch = batch.freeze();
        let mut at = 0;
        while at < batch.len() {
            let len = usize::from(u16::from_le_bytes([batch[at], batch[at + 1]]));
            let frame = batch.slice(at..at + len);
            at += len;
            if !self.push_packet(ctx, session, frame) {
                return;
            }
        }
        if let Some(error) = failure {
            self.refuse(ctx, session, &error);
        }
    }

    /// The peer sent all it will send: close the session through the queue, after the packets
    /// it sent before (their replies still go out, then the session closes).
    fn on_read_closed(&self, ctx: &mut Context<'_, PacketSession>, session: SessionId) {
        if !self.push_system(ctx, Event::Close(session, CloseReason::PeerClosed)) {
            let _ = ctx.close_with(session, CloseReason::PeerClosed);
        }
    }

    fn on_close(
        &self,
        ctx: &mut Context<'_, PacketSession>,
        session: SessionId,
        reason: CloseReason,
    ) {
        if let Some(state) = ctx.state(session) {
            state.closing = true;
        }
        self.push_system(ctx, Event::Disconnect(session, reason));
    }
}

/// The logic side of the packet manager, before its thread starts.
pub struct LogicBack<L: Logic> {
    rx: Receiver<Event<L::Message>>,
    tx: SyncSender<Event<L::Message>>,
    table: Table<LogicFn<L>>,
    bad_packet: BadPacket,
    tick: Option<std::time::Duration>,
    counters: Arc<Counters>,
}

impl<L: Logic> LogicBack<L> {
    /// A sender of messages to the logic thread, for other threads.
    pub fn sender(&self) -> LogicSender<L::Message> {
        LogicSender {
            tx: self.tx.clone(),
            counters: self.counters.clone(),
        }
    }

    /// Starts the logic thread (named `logic`), sending through `handle`.
    pub fn spawn(self, handle: ServerHandle, logic: L) -> std::io::Result<LogicThread<L>> {
        let LogicBack {
            rx,
            tx,
            table,
            bad_packet,
            tick,
            counters,
        } = self;
        let thread_counters = counters.clone();
        let thread = std::thread::Builder::new()
            .name("logic".into())
            .spawn(move || {
                let mut logic = logic;
                run(
                    rx,
                    &handle,
                    &table,
                    bad_packet,
                    tick,
                    &thread_counters,
                    &mut logic,
                );
                logic
            })?;
        Ok(LogicThread {
            thread: Some(thread),
            tx,
            counters,
        })
    }
}

/// The logic thread's loop (the tutorial's `PacketManager::ProcessPacket`). Takes the receiver by
/// value so that it is dropped when the loop ends: threads still posting then fail at once
/// instead of waiting for room.
fn run<L: Logic>(
    rx: Receiver<Event<L::Message>>,
    handle: &ServerHandle,
    table: &Table<LogicFn<L>>,
    bad_packet: BadPacket,
    tick: Option<std::time::Duration>,
    counters: &Counters,
    logic: &mut L,
) {
    let mut closing = HashSet::new();
    // Only this thread writes these two: a plain load and store, no locked instruction.
    let count = |c: &AtomicU64| c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    let mut next_tick = tick.map(|t| std::time::Instant::now() + t);
    loop {
        let received = match next_tick {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(at) => rx.recv_timeout(at.saturating_duration_since(std::time::Instant::now())),
        };
        let event = match received {
            Ok(Event::Stop) | Err(RecvTimeoutError::Disconnected) => break,
            Ok(event) => event,
            Err(RecvTimeoutError::Timeout) => Event::Tick,
        };
        if let (Event::Tick, Some(t)) = (&event, tick) {
            next_tick = Some(std::time::Instant::now() + t);
        } else if next_tick.is_some_and(|at| at <= std::time::Instant::now()) {
            // Events kept the queue busy past the tick: tick now, then this event.
            next_tick = tick.map(|t| std::time::Instant::now() + t);
            let mut ctx = LogicContext {
                handle,
                closing: &mut closing,
            };
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| logic.on_tick(&mut ctx)))
                .is_err()
            {
                tracing::error!("the logic's on_tick panicked; going on");
            }
        }
        if !matches!(event, Event::Tick) {
            count(&counters.events);
        }
        let mut ctx = LogicContext {
            handle,
            closing: &mut closing,
        };
        // The session a panic in this event's callback costs, if any.
        let mut session_of_event = None;
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match event {
            Event::Connect(session, peer) => {
                session_of_event = Some(session);
                logic.on_connect(&mut ctx, session, peer);
            }
            Event::Packet(session, bytes) => {
                if ctx.closing.contains(&session) {
                    bump(&counters.dropped_after_close);
                    return;
                }
                session_of_event = Some(session);
                let Ok(Some((frame, _))) = Frame::parse(&bytes, MAX_FRAME_LEN) else {
                    unreachable!("the front queues whole frames only");
                };
                let result = match table.get(frame.id()) {
                    Some(handler) => {
                        count(&counters.packets);
                        handler(logic, &mut ctx, session, frame)
                    }
                    None => Err(PacketError::UnknownId { id: frame.id() }),
                };
                if let Err(error) = result {
                    bump(&counters.bad_packets);
                    if bad_packet == BadPacket::Ignore && !error.is_framing() {
                        tracing::debug!("session {session}: {error}: packet ignored");
                    } else {
                        crate::ratelog::closing(session, &error);
                        let _ = ctx.close_with(session, CloseReason::Protocol(error.to_string()));
                    }
                }
            }
            Event::Disconnect(session, reason) => {
                ctx.closing.remove(&session);
                logic.on_disconnect(&mut ctx, session, reason);
            }
            Event::Close(session, reason) => {
                let _ = ctx.close_with(session, reason);
            }
            Event::Message(message) => logic.on_message(&mut ctx, message),
            Event::Tick => logic.on_tick(&mut ctx),
            Event::Stop => unreachable!("handled above"),
        }));
        if caught.is_err() {
            // As on the I/O workers: a panic costs the session concerned, not the server.
            match session_of_event {
                Some(session) => {
                    tracing::error!(
                        "session {session}: a logic handler panicked; closing the session"
                    );
                    let _ = ctx.close_with(session, CloseReason::HandlerPanicked);
                }
                None => tracing::error!("a logic callback panicked; going on"),
            }
        }
    }
}

/// The running logic thread. Stop it after the server has stopped ([`LogicServer`] does this
/// for you); dropping it stops it too.
pub struct LogicThread<L: Logic> {
    thread: Option<JoinHandle<L>>,
    tx: SyncSender<Event<L::Message>>,
    counters: Arc<Counters>,
}

impl<L: Logic> LogicThread<L> {
    /// The queue's and thread's counters.
    pub fn stats(&self) -> LogicStats {
        self.counters.snapshot()
    }

    /// Stops the logic thread once it has handled every event queued before this call, and
    /// gives back the logic's state.
    ///
    /// # Panics
    ///
    /// Resumes the panic of the logic thread, if it died of one (handlers' panics are caught:
    /// they cost their session only).
    pub fn stop(mut self) -> L {
        let thread = self.thread.take().expect("stopped once");
        let _ = self.tx.send(Event::Stop);
        match thread.join() {
            Ok(logic) => logic,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl<L: Logic> Drop for LogicThread<L> {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.tx.send(Event::Stop);
            let _ = thread.join();
        }
    }
}

/// A server whose packets are handled on a logic thread: the two, started and stopped in the
/// right order ([`LogicPackets::start`]).
pub struct LogicServer<L: Logic> {
    server: Server,
    logic: LogicThread<L>,
}

impl<L: Logic> LogicServer<L> {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The server's handle (statistics, sends, shutdown from any thread).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// The server itself (backend, features).
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// The logic queue's and thread's counters.
    pub fn logic_stats(&self) -> LogicStats {
        self.logic.stats()
    }

    /// The logic queue's and thread's counters, readable from any thread, for as long as
    /// anyone likes (by a metrics endpoint, say).
    pub fn logic_stats_source(&self) -> impl Fn() -> LogicStats + Send + Sync + 'static {
        let counters = self.logic.counters.clone();
        move || counters.snapshot()
    }

    /// Waits for the server to stop (after [`ServerHandle::shutdown`], e.g. on a signal), then
    /// stops the logic thread once it has handled every disconnect, and gives back the logic.
    pub fn join(self) -> iocp_server::Result<L> {
        let result = self.server.join();
        let logic = self.logic.stop();
        result.map(|()| logic)
    }

    /// Shuts the server down gracefully, then stops the logic thread ([`join`](Self::join)).
    pub fn shutdown(self) -> iocp_server::Result<L> {
        self.server.handle().shutdown();
        self.join()
    }
}
