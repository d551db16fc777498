//! A worker thread: one completion port, its share of the session pool, and the loop that turns
//! completions into handler calls (the seed's `WokerThread` on `GetQueuedCompletionStatus`).

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use bytes::Bytes;
use iocp_driver::{
    Backend, CloseMode, Config as DriverConfig, ConnId, Driver, Event, Features, Io,
};
use socket2::Socket;

use crate::error::{Error, Result};
use crate::handler::{Context, Handler};
use crate::server::{Command, ServerHandle, Shared};
use crate::session::{CloseReason, SessionId};

/// Bytes to send: borrowed (copied into the send queue) or shared.
pub(crate) enum Payload<'a> {
    Copy(&'a [u8]),
    Shared(Bytes),
}

/// Refused connections and accept errors are logged at most this often per worker.
const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// What a worker calls into: the application's handler, and the handle its callbacks get.
pub(crate) struct App<'a, H> {
    handler: &'a H,
    handle: &'a ServerHandle,
}

impl<H> Clone for App<'_, H> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<H> Copy for App<'_, H> {}

/// The part of a worker that callbacks reach through [`Context`].
pub(crate) struct Local {
    worker: usize,
    /// Global index of this worker's first slot.
    base: u32,
    shared: Arc<Shared>,
    /// Why each slot's session is closing, once that is decided.
    reasons: Vec<Option<CloseReason>>,
    /// Sessions flushing before close, with the time after which they are cut off.
    lingering: VecDeque<(ConnId, Instant)>,
    open: usize,
    shutting_down: bool,
    refused_since_log: u64,
    last_refusal_log: Option<Instant>,
    last_accept_error_log: Option<Instant>,
}

impl Local {
    pub(crate) fn worker(&self) -> usize {
        self.worker
    }

    /// Whether `session`'s slot belongs to this worker.
    #[inline]
    pub(crate) fn owns(&self, session: SessionId) -> bool {
        session.index.wrapping_sub(self.base) < self.reasons.len() as u32
    }

    #[inline]
    pub(crate) fn conn(&self, session: SessionId) -> ConnId {
        ConnId {
            index: session.index - self.base,
            generation: session.generation,
        }
    }

    #[inline]
    fn session(&self, conn: ConnId) -> SessionId {
        SessionId {
            index: self.base + conn.index,
            generation: conn.generation,
        }
    }

    fn stats(&self) -> &crate::stats::WorkerStats {
        &self.shared.stats[self.worker]
    }

    /// Queues bytes on a session of this worker, enforcing the queue limit.
    pub(crate) fn send(
        &mut self,
        io: &mut Io,
        session: SessionId,
        payload: Payload<'_>,
    ) -> Result<()> {
        let conn = self.conn(session);
        let (len, queued) = match payload {
            Payload::Copy(data) => (data.len(), io.send_copy(conn, data)),
            Payload::Shared(bytes) => (bytes.len(), io.send(conn, bytes)),
        };
        let queued = queued.map_err(|_| Error::SessionClosed(session))?;
        self.stats().sent(len);
        let limit = self.shared.config.send_queue_limit;
        if queued > limit {
            tracing::warn!(
                "session {session}: {queued} bytes queued, over the limit of {limit}: disconnecting"
            );
            self.close_conn(io, conn, CloseReason::SendQueueFull, CloseMode::Abort);
            return Err(Error::SendQueueFull(session));
        }
        Ok(())
    }

    /// Closes a session of this worker after its queue is flushed.
    pub(crate) fn close(
        &mut self,
        io: &mut Io,
        session: SessionId,
        reason: CloseReason,
    ) -> Result<()> {
        let conn = self.conn(session);
        if !io.is_open(conn) && io.queued(conn).is_none() {
            return Err(Error::SessionClosed(session));
        }
        self.close_conn(io, conn, reason, CloseMode::Flush);
        Ok(())
    }

    fn close_conn(&mut self, io: &mut Io, conn: ConnId, reason: CloseReason, mode: CloseMode) {
        if io.close(conn, mode).is_err() {
            return;
        }
        let slot = &mut self.reasons[conn.index as usize];
        if slot.is_none() {
            *slot = Some(reason);
        }
        if mode == CloseMode::Flush {
            let deadline = Instant::now() + self.shared.config.linger;
            self.lingering.push_back((conn, deadline));
        }
    }

    /// Cuts off sessions that did not finish flushing in time.
    fn expire_lingering(&mut self, io: &mut Io) {
        let now = Instant::now();
        while let Some(&(conn, deadline)) = self.lingering.front() {
            if deadline > now {
                break;
            }
            self.lingering.pop_front();
            if io.queued(conn).is_some() {
                tracing::debug!(
                    "session {}: flush not finished within the linger time: dropping the rest",
                    self.session(conn)
                );
                let _ = io.close(conn, CloseMode::Abort);
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.lingering.front().map(|&(_, deadline)| deadline)
    }

    /// Gives a connection its slot and tells the handler.
    fn open_session<H: Handler>(
        &mut self,
        io: &mut Io,
        app: App<'_, H>,
        index: u32,
        socket: Socket,
    ) {
        let shared = self.shared.clone();
        if self.shutting_down {
            shared.free_slot(self.worker, index);
            self.stats().refused();
            return;
        }
        if shared.config.nodelay {
            if let Err(e) = socket.set_tcp_nodelay(true) {
                tracing::debug!("TCP_NODELAY: {e}");
            }
        }
        let peer = match socket.peer_addr().map(|a| a.as_socket()) {
            Ok(Some(peer)) => peer,
            Ok(None) | Err(_) => {
                // The peer already left (reset before we got to it).
                shared.free_slot(self.worker, index);
                return;
            }
        };
        let conn = match io.attach(index, socket) {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!("setting up an accepted connection failed: {e}");
                shared.free_slot(self.worker, index);
                return;
            }
        };
        let session = self.session(conn);
        self.reasons[index as usize] = None;
        self.open += 1;
        shared.slots.set_open(session);
        self.stats().accepted();
        tracing::trace!("session {session}: connected from {peer}");
        self.call(io, app, session, |h, ctx| h.on_connect(ctx, session, peer));
    }

    fn refuse(&mut self) {
        self.stats().refused();
        self.refused_since_log += 1;
        let now = Instant::now();
        if self
            .last_refusal_log
            .is_none_or(|t| now.duration_since(t) >= LOG_INTERVAL)
        {
            let max = self.shared.config.max_sessions;
            tracing::warn!(
                "session pool full ({max} sessions): refused {} connection(s)",
                self.refused_since_log
            );
            self.refused_since_log = 0;
            self.last_refusal_log = Some(now);
        }
    }

    fn accept_error(&mut self, error: io::Error) {
        let now = Instant::now();
        if self
            .last_accept_error_log
            .is_none_or(|t| now.duration_since(t) >= LOG_INTERVAL)
        {
            tracing::warn!("accept failed: {error} (accepting pauses and backs off)");
            self.last_accept_error_log = Some(now);
        }
    }

    /// Runs a callback of `session`. A panic in it costs that session only: it is caught, logged,
    /// and the session is closed ([`CloseReason::HandlerPanicked`]).
    fn call<H: Handler>(
        &mut self,
        io: &mut Io,
        app: App<'_, H>,
        session: SessionId,
        f: impl FnOnce(&H, &mut Context<'_>),
    ) {
        let mut ctx = Context {
            io,
            local: self,
            handle: app.handle,
        };
        let caught =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(app.handler, &mut ctx)));
        if caught.is_err() {
            tracing::error!("session {session}: the handler panicked; closing the session");
            let conn = self.conn(session);
            self.close_conn(io, conn, CloseReason::HandlerPanicked, CloseMode::Abort);
        }
    }

    fn on_event<H: Handler>(&mut self, io: &mut Io, app: App<'_, H>, event: Event<'_>) {
        match event {
            Event::Received { conn, data } => {
                self.stats().received(data.len());
                let session = self.session(conn);
                self.call(io, app, session, |h, ctx| h.on_receive(ctx, session, data));
            }
            Event::ReadClosed { conn } => {
                let session = self.session(conn);
                self.call(io, app, session, |h, ctx| h.on_read_closed(ctx, session));
            }
            Event::Closed { conn, error } => {
                let session = self.session(conn);
                let reason = self.reasons[conn.index as usize]
                    .take()
                    .or_else(|| error.as_ref().map(CloseReason::from_io))
                    .unwrap_or(CloseReason::PeerClosed);
                let shared = self.shared.clone();
                shared.slots.set_closed(session);
                self.open -= 1;
                match &error {
                    Some(e) => tracing::debug!("session {session}: closed: {reason} ({e})"),
                    None => tracing::debug!("session {session}: closed: {reason}"),
                }
                let counted = reason.clone();
                self.call(io, app, session, |h, ctx| h.on_close(ctx, session, reason));
                // Counted after on_close: whoever sees the session gone from the statistics
                // knows its on_close has run (and, say, queued its disconnect for a logic thread).
                self.stats().closed(&counted);
                shared.free_slot(self.worker, conn.index);
            }
            Event::Accepted(socket) => {
                let shared = self.shared.clone();
                if shared.is_shutting_down() {
                    self.stats().refused();
                    return;
                }
                match shared.take_slot() {
                    Some((w, index)) if w == self.worker => {
                        self.open_session(io, app, index, socket)
                    }
                    Some((w, index)) => shared.inboxes[w].push(Command::Adopt(index, socket)),
                    None => self.refuse(),
                }
            }
            Event::AcceptError(error) => self.accept_error(error),
            Event::Woken => {}
        }
    }

    fn run_command<H: Handler>(&mut self, io: &mut Io, app: App<'_, H>, command: Command) {
        match command {
            Command::Send(session, bytes) => {
                if let Err(e) = self.send(io, session, Payload::Shared(bytes)) {
                    tracing::trace!("send from another thread dropped: {e}");
                }
            }
            Command::Close(session, reason) => {
                let _ = self.close(io, session, reason);
            }
            Command::Adopt(index, socket) => self.open_session(io, app, index, socket),
            Command::Broadcast(bytes) => {
                for session in self.open_sessions(io) {
                    let _ = self.send(io, session, Payload::Shared(bytes.clone()));
                }
            }
            Command::Shutdown => self.begin_shutdown(io),
        }
    }

    fn open_sessions(&self, io: &Io) -> Vec<SessionId> {
        let slots = &self.shared.slots;
        (0..self.reasons.len() as u32)
            .filter_map(|i| {
                let session = slots.session_at(self.base + i)?;
                io.is_open(self.conn(session)).then_some(session)
            })
            .collect()
    }

    fn begin_shutdown(&mut self, io: &mut Io) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        io.stop_accepting();
        for session in self.open_sessions(io) {
            let conn = self.conn(session);
            self.close_conn(io, conn, CloseReason::Shutdown, CloseMode::Flush);
        }
    }
}

/// Runs worker `worker` until shutdown. Reports on `ready` whether its completion port started.
pub(crate) fn run<H: Handler>(
    worker: usize,
    handle: ServerHandle,
    handler: Arc<H>,
    listener: Socket,
    ready: Sender<Result<(Backend, Features)>>,
) -> Result<()> {
    let shared = handle.shared.clone();
    let config = &shared.config;
    if config.pin_workers {
        // Before the ring exists, so that its memory is allocated on this CPU's node.
        match iocp_driver::pin_current_thread(worker) {
            Ok(cpu) => tracing::debug!(worker, cpu, "worker pinned"),
            Err(e) => tracing::warn!(worker, "cannot pin the worker to a CPU: {e}"),
        }
    }
    let per_worker = shared.slots.per_worker();
    let base = worker as u32 * per_worker;
    let capacity = per_worker.min(shared.slots.len() - base);
    let driver_config = DriverConfig {
        backend: config.backend,
        capacity,
        ring_entries: config.ring_entries,
        recv_buffer_size: config.recv_buffer_size,
        recv_buffer_count: config.recv_buffer_count,
        accept_depth: config.accept_depth,
        uring: config.uring,
    };
    let mut driver = match Driver::new(&driver_config).and_then(|mut d| {
        d.io().listen(&listener)?;
        Ok(d)
    }) {
        Ok(driver) => driver,
        Err(source) => {
            let _ = ready.send(Err(Error::Io {
                op: "creating a completion port",
                source,
            }));
            return Ok(());
        }
    };
    drop(listener);
    shared.inboxes[worker].set_waker(driver.waker());
    let _ = ready.send(Ok((driver.backend(), driver.features().clone())));
    drop(ready);
    // Accepting starts on the first turn: only once every worker can take connections.
    if !shared.wait_for_go() {
        return Ok(());
    }

    let mut local = Local {
        worker,
        base,
        shared: shared.clone(),
        reasons: vec![None; capacity as usize],
        lingering: VecDeque::new(),
        open: 0,
        shutting_down: false,
        refused_since_log: 0,
        last_refusal_log: None,
        last_accept_error_log: None,
    };
    let app = App {
        handler: &*handler,
        handle: &handle,
    };
    let mut commands = Vec::new();
    loop {
        let timeout = local
            .next_deadline()
            .map(|d| d.saturating_duration_since(Instant::now()));
        driver
            .turn(timeout, |io, event| local.on_event(io, app, event))
            .map_err(|source| Error::Io {
                op: "waiting for completions",
                source,
            })?;
        shared.inboxes[worker].take(&mut commands);
        for command in commands.drain(..) {
            local.run_command(driver.io(), app, command);
        }
        local.expire_lingering(driver.io());
        if local.shutting_down && local.open == 0 && !driver.io().is_accepting() {
            break;
        }
    }
    // Connections handed to us after we stopped are refused by dropping them with the inbox.
    tracing::debug!("worker {worker} stopped");
    Ok(())
}
