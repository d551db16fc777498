//! A worker thread: one completion port, its share of the session pool, and the loop that turns
//! completions, commands and timers into handler calls (the seed's `WokerThread` on
//! `GetQueuedCompletionStatus`).

use std::io;
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use iocp_driver::{Backend, CloseMode, Config as DriverConfig, Driver, Event, Features, Io};
use socket2::{Socket, TcpKeepalive};

use crate::error::{Error, Result};
use crate::handle::ServerHandle;
use crate::handler::{Context, Handler};
use crate::inbox::Command;
use crate::local::{Fired, Local, Payload};
use crate::session::{CloseReason, SessionId};

/// Refused connections and accept errors are logged at most this often per worker.
const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// A worker: its own state, the handler's state of each session, and what it calls into.
struct Worker<'a, H: Handler> {
    local: Local,
    states: Vec<H::Session>,
    handler: &'a H,
    handle: &'a ServerHandle,
    refused_since_log: u64,
    last_refusal_log: Option<Instant>,
    last_accept_error_log: Option<Instant>,
    /// Events handed over in this turn of the loop (for the statistics).
    turn_events: u64,
}

impl<H: Handler> Worker<'_, H> {
    /// Runs a callback. A panic in it costs `session` only (when there is one): it is caught,
    /// logged, and the session is closed ([`CloseReason::HandlerPanicked`]).
    fn call(
        &mut self,
        io: &mut Io,
        session: Option<SessionId>,
        f: impl FnOnce(&H, &mut Context<'_, H::Session>),
    ) {
        let handler = self.handler;
        let mut ctx = Context {
            io,
            local: &mut self.local,
            states: &mut self.states,
            handle: self.handle,
        };
        let caught =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(handler, &mut ctx)));
        if caught.is_err() {
            match session {
                Some(session) => {
                    tracing::error!("session {session}: the handler panicked; closing the session");
                    let conn = self.local.conn(session);
                    self.local
                        .close_conn(io, conn, CloseReason::HandlerPanicked, CloseMode::Abort);
                }
                None => tracing::error!(
                    "worker {}: the handler panicked in on_tick",
                    self.local.worker
                ),
            }
        }
    }

    /// Gives a connection its slot and tells the handler.
    fn open_session(&mut self, io: &mut Io, index: u32, socket: Socket) {
        let shared = self.local.shared.clone();
        let worker = self.local.worker;
        if self.local.shutting_down {
            shared.free_slot(worker, index);
            self.local.stats().refused();
            return;
        }
        let config = &shared.config;
        if config.nodelay {
            if let Err(e) = socket.set_tcp_nodelay(true) {
                tracing::debug!("TCP_NODELAY: {e}");
            }
        }
        if let Some(time) = config.tcp_keepalive {
            if let Err(e) = socket.set_tcp_keepalive(&keepalive(time)) {
                tracing::debug!("TCP keepalive: {e}");
            }
        }
        let peer = match socket.peer_addr().map(|a| a.as_socket()) {
            Ok(Some(peer)) => peer,
            Ok(None) | Err(_) => {
                // The peer already left (reset before we got to it).
                shared.free_slot(worker, index);
                return;
            }
        };
        let conn = match io.attach(index, socket) {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!("setting up an accepted connection failed: {e}");
                shared.free_slot(worker, index);
                return;
            }
        };
        let session = self.local.session(conn);
        self.states[index as usize] = H::Session::default();
        self.local.opened(conn);
        shared.slots.set_open(session);
        self.local.stats().accepted();
        tracing::trace!("session {session}: connected from {peer}");
        self.call(io, Some(session), |h, ctx| h.on_connect(ctx, session, peer));
    }

    fn refuse(&mut self) {
        self.local.stats().refused();
        self.refused_since_log += 1;
        let now = Instant::now();
        if self
            .last_refusal_log
            .is_none_or(|t| now.duration_since(t) >= LOG_INTERVAL)
        {
            let max = self.local.shared.config.max_sessions;
            tracing::warn!(
                "session pool full ({max} sessions): refused {} connection(s)",
                self.refused_since_log
            );
            self.refused_since_log = 0;
            self.last_refusal_log = Some(now);
        }
    }

    fn accept_error(&mut self, io: &Io, error: io::Error) {
        if let Some(until) = io.accept_paused_until() {
            self.local.accept_paused(until);
        }
        let now = Instant::now();
        if self
            .last_accept_error_log
            .is_none_or(|t| now.duration_since(t) >= LOG_INTERVAL)
        {
            tracing::warn!("accept failed: {error} (accepting pauses and backs off)");
            self.last_accept_error_log = Some(now);
        }
    }

    fn on_event(&mut self, io: &mut Io, event: Event<'_>) {
        self.turn_events += 1;
        match event {
            Event::Received { conn, data } => {
                self.local.stats().received(data.len());
                self.local.received(conn);
                let session = self.local.session(conn);
                self.call(io, Some(session), |h, ctx| h.on_receive(ctx, session, data));
            }
            Event::ReadClosed { conn } => {
                let session = self.local.session(conn);
                self.call(io, Some(session), |h, ctx| h.on_read_closed(ctx, session));
            }
            Event::Closed { conn, error } => {
                let session = self.local.session(conn);
                let reason = self
                    .local
                    .take_reason(conn)
                    .or_else(|| error.as_ref().map(CloseReason::from_io))
                    .unwrap_or(CloseReason::PeerClosed);
                let shared = self.local.shared.clone();
                shared.slots.set_closed(session);
                match &error {
                    Some(e) => tracing::debug!("session {session}: closed: {reason} ({e})"),
                    None => tracing::debug!("session {session}: closed: {reason}"),
                }
                let counted = reason.clone();
                self.call(io, Some(session), |h, ctx| h.on_close(ctx, session, reason));
                self.local.closed(conn);
                // The state goes with its session.
                self.states[conn.index as usize] = H::Session::default();
                // Counted after on_close: whoever sees the session gone from the statistics
                // knows its on_close has run (and, say, queued its disconnect for a logic thread).
                self.local.stats().closed(&counted);
                shared.free_slot(self.local.worker, conn.index);
            }
            Event::Accepted(socket) => {
                let shared = self.local.shared.clone();
                if shared.is_shutting_down() {
                    self.local.stats().refused();
                    return;
                }
                match shared.take_slot() {
                    Some((w, index)) if w == self.local.worker => {
                        self.open_session(io, index, socket)
                    }
                    Some((w, index)) => shared.inboxes[w].push(Command::Adopt(index, socket)),
                    None => self.refuse(),
                }
            }
            Event::AcceptError(error) => self.accept_error(io, error),
            Event::Woken => {}
        }
    }

    fn run_command(&mut self, io: &mut Io, command: Command) {
        match command {
            Command::Send(session, bytes) => {
                if let Err(e) = self.local.send(io, session, Payload::Shared(bytes)) {
                    tracing::trace!("send from another thread dropped: {e}");
                }
            }
            Command::Close(session, reason) => {
                let _ = self.local.close(io, session, reason);
            }
            Command::Adopt(index, socket) => self.open_session(io, index, socket),
            Command::Broadcast(bytes) => {
                for session in self.local.open_sessions(io) {
                    let _ = self.local.send(io, session, Payload::Shared(bytes.clone()));
                }
            }
            Command::Shutdown => self.begin_shutdown(io),
        }
    }

    /// Runs every timer that is due.
    fn fire_timers(&mut self, io: &mut Io) {
        while let Some(fired) = self.local.fire_next(io) {
            match fired {
                Fired::Session(session, token) => {
                    self.call(io, Some(session), |h, ctx| h.on_timer(ctx, session, token));
                }
                Fired::Tick => self.call(io, None, |h, ctx| h.on_tick(ctx)),
                Fired::Internal => {}
            }
        }
    }

    fn begin_shutdown(&mut self, io: &mut Io) {
        if self.local.shutting_down {
            return;
        }
        self.local.shutting_down = true;
        io.stop_accepting();
        for session in self.local.open_sessions(io) {
            let conn = self.local.conn(session);
            self.local
                .close_conn(io, conn, CloseReason::Shutdown, CloseMode::Flush);
        }
    }
}

/// TCP keepalive: the first probe after `time` of silence, then every `time / 3`, giving up
/// after 3 probes (where the platform lets the interval and count be set).
fn keepalive(time: Duration) -> TcpKeepalive {
    let keepalive = TcpKeepalive::new().with_time(time);
    #[cfg(any(unix, windows))]
    let keepalive = keepalive.with_interval((time / 3).max(Duration::from_secs(1)));
    #[cfg(all(unix, not(target_os = "openbsd")))]
    let keepalive = keepalive.with_retries(3);
    keepalive
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
        d.io().start_accepting(&listener)?;
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

    let mut w = Worker {
        local: Local::new(worker, base, capacity, shared.clone()),
        states: (0..capacity).map(|_| H::Session::default()).collect(),
        handler: &*handler,
        handle: &handle,
        refused_since_log: 0,
        last_refusal_log: None,
        last_accept_error_log: None,
        turn_events: 0,
    };
    let mut commands = Vec::new();
    loop {
        let timeout = w.local.wait_timeout();
        w.local.new_turn();
        if let Err(source) = driver.turn(timeout, |io, event| w.on_event(io, event)) {
            // The completion port itself failed (an io_uring submit refused, say): this worker
            // cannot go on, and a server missing a worker's sessions should not pretend to run.
            // It shuts down as a whole, and `Server::join` returns this error.
            tracing::error!("worker {worker}: waiting for completions: {source}: shutting down");
            handle.shutdown();
            return Err(Error::Io {
                op: "waiting for completions",
                source,
            });
        }
        shared.inboxes[worker].take(&mut commands);
        for command in commands.drain(..) {
            w.run_command(driver.io(), command);
        }
        w.fire_timers(driver.io());
        let stats = w.local.stats();
        stats.set_delivered(driver.io().bytes_sent());
        stats.set_driver(&driver.stats());
        stats.turned(std::mem::take(&mut w.turn_events), w.local.timers_armed());
        if w.local.shutting_down && w.local.open == 0 && !driver.io().is_accepting() {
            break;
        }
    }
    // Connections handed to us after we stopped are refused by dropping them with the inbox.
    tracing::debug!("worker {worker} stopped");
    Ok(())
}
