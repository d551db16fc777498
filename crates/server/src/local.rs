//! What a worker owns and its callbacks reach through [`crate::Context`]: one record per
//! session slot, the worker's timers, and the operations on its sessions (send, close, timers).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use iocp_driver::{CloseMode, ConnId, Io};

use crate::error::{Error, Result};
use crate::pool::Shared;
use crate::session::{CloseReason, SessionId};
use crate::stats::WorkerStats;
use crate::timer::{TimerId, Timers};

/// Bytes to send: borrowed (copied into the send queue) or shared.
pub(crate) enum Payload<'a> {
    Copy(&'a [u8]),
    Shared(Bytes),
}

/// What a timer of the worker is for.
#[derive(Debug)]
pub(crate) enum Timer {
    /// The application's timer of a session ([`crate::Handler::on_timer`]).
    Session { session: SessionId, token: u64 },
    /// A closing session's time to flush is up.
    Linger(SessionId),
    /// Time to check whether a session has received nothing for the idle timeout.
    Idle(SessionId),
    /// Accepting may resume after a back-off.
    AcceptResume,
    /// The handler's tick ([`crate::Handler::on_tick`]).
    Tick,
}

/// What fired, for the worker to act on.
pub(crate) enum Fired {
    /// Call `on_timer(session, token)`.
    Session(SessionId, u64),
    /// Call `on_tick`.
    Tick,
    /// Nothing for the handler.
    Internal,
}

/// Bytes of one [`Record`].
pub(crate) const RECORD_BYTES: usize = size_of::<Record>();

/// What a worker keeps for one session slot.
#[derive(Default)]
pub(crate) struct Record {
    /// The session in the slot, from its accept until its `on_close` has returned.
    session: Option<SessionId>,
    /// Why it is closing, once that is decided.
    reason: Option<CloseReason>,
    /// When bytes last arrived (the worker's clock of that turn).
    last_receive: Option<Instant>,
    idle_timer: Option<TimerId>,
    linger_timer: Option<TimerId>,
}

/// A worker's own state.
pub(crate) struct Local {
    pub(crate) worker: usize,
    /// Global index of this worker's first slot.
    base: u32,
    pub(crate) shared: Arc<Shared>,
    records: Vec<Record>,
    timers: Timers<Timer>,
    /// Sessions open (accepted and not yet reported closed).
    pub(crate) open: usize,
    pub(crate) shutting_down: bool,
    /// The clock of the current turn, read once per turn when first needed.
    now: Option<Instant>,
}

impl Local {
    pub(crate) fn new(worker: usize, base: u32, capacity: u32, shared: Arc<Shared>) -> Local {
        let mut local = Local {
            worker,
            base,
            records: (0..capacity).map(|_| Record::default()).collect(),
            timers: Timers::default(),
            open: 0,
            shutting_down: false,
            now: None,
            shared,
        };
        if let Some(tick) = local.shared.config.tick {
            local.timers.insert(Instant::now() + tick, Timer::Tick);
        }
        local
    }

    /// Whether `session`'s slot belongs to this worker.
    #[inline]
    pub(crate) fn owns(&self, session: SessionId) -> bool {
        session.index.wrapping_sub(self.base) < self.records.len() as u32
    }

    #[inline]
    pub(crate) fn conn(&self, session: SessionId) -> ConnId {
        ConnId {
            index: session.index - self.base,
            generation: session.generation,
        }
    }

    #[inline]
    pub(crate) fn session(&self, conn: ConnId) -> SessionId {
        SessionId {
            index: self.base + conn.index,
            generation: conn.generation,
        }
    }

    pub(crate) fn stats(&self) -> &WorkerStats {
        &self.shared.stats[self.worker]
    }

    /// The index of `session`'s record if it is this worker's and in its slot now (open, or
    /// closing until its `on_close` returns).
    #[inline]
    pub(crate) fn live(&self, session: SessionId) -> Option<usize> {
        if !self.owns(session) {
            return None;
        }
        let i = (session.index - self.base) as usize;
        (self.records[i].session == Some(session)).then_some(i)
    }

    /// The clock of this turn.
    #[inline]
    pub(crate) fn now(&mut self) -> Instant {
        *self.now.get_or_insert_with(Instant::now)
    }

    /// A new turn: the clock is read again when next needed.
    pub(crate) fn new_turn(&mut self) {
        self.now = None;
    }

    /// How long the worker may wait for completions: until its earliest timer.
    pub(crate) fn wait_timeout(&self) -> Option<Duration> {
        self.timers
            .next_deadline()
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Timers armed now (for statistics and tests).
    pub(crate) fn timers_armed(&self) -> usize {
        self.timers.len()
    }

    /// A connection got slot `conn`: its record starts, and its idle timer.
    pub(crate) fn opened(&mut self, conn: ConnId) {
        let session = self.session(conn);
        let now = self.now();
        let idle = self.shared.config.idle_timeout;
        let idle_timer = idle.map(|t| self.timers.insert(now + t, Timer::Idle(session)));
        self.records[conn.index as usize] = Record {
            session: Some(session),
            reason: None,
            last_receive: Some(now),
            idle_timer,
            linger_timer: None,
        };
        self.open += 1;
    }

    /// Bytes arrived on `conn`.
    #[inline]
    pub(crate) fn received(&mut self, conn: ConnId) {
        if self.shared.config.idle_timeout.is_some() {
            let now = self.now();
            self.records[conn.index as usize].last_receive = Some(now);
        }
    }

    /// `conn` was reported closed: the reason it closed for, decided earlier or from the error.
    pub(crate) fn take_reason(&mut self, conn: ConnId) -> Option<CloseReason> {
        self.records[conn.index as usize].reason.take()
    }

    /// `conn`'s `on_close` has returned: its record ends, and its timers with it.
    pub(crate) fn closed(&mut self, conn: ConnId) {
        let record = std::mem::take(&mut self.records[conn.index as usize]);
        for id in [record.idle_timer, record.linger_timer]
            .into_iter()
            .flatten()
        {
            self.timers.cancel(id);
        }
        self.open -= 1;
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
            // A reset, so that the kernel frees the unsent bytes at once instead of keeping
            // them for a peer that does not read.
            self.close_conn(io, conn, CloseReason::SendQueueFull, CloseMode::Reset);
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

    pub(crate) fn close_conn(
        &mut self,
        io: &mut Io,
        conn: ConnId,
        reason: CloseReason,
        mode: CloseMode,
    ) {
        if io.close(conn, mode).is_err() {
            return;
        }
        let session = self.session(conn);
        let linger = self.shared.config.linger;
        let record = &mut self.records[conn.index as usize];
        if record.reason.is_none() {
            record.reason = Some(reason);
        }
        if mode == CloseMode::Flush && record.linger_timer.is_none() {
            let deadline = Instant::now().checked_add(linger);
            record.linger_timer =
                deadline.map(|deadline| self.timers.insert(deadline, Timer::Linger(session)));
        }
    }

    /// Arms a timer of the application for `session`.
    pub(crate) fn set_timer(
        &mut self,
        io: &Io,
        session: SessionId,
        after: Duration,
        token: u64,
    ) -> Result<TimerId> {
        if !self.owns(session) {
            return Err(Error::NotOwned(session));
        }
        if self.live(session).is_none() || !io.is_open(self.conn(session)) {
            return Err(Error::SessionClosed(session));
        }
        let deadline = Instant::now()
            .checked_add(after)
            .ok_or_else(|| Error::Config(format!("a timer {after:?} away is out of range")))?;
        Ok(self
            .timers
            .insert(deadline, Timer::Session { session, token }))
    }

    /// Disarms an application timer; whether it was armed.
    pub(crate) fn cancel_timer(&mut self, id: TimerId) -> bool {
        if !matches!(self.timers.get(id), Some(Timer::Session { .. })) {
            return false;
        }
        self.timers.cancel(id).is_some()
    }

    /// Takes the next due timer and does the worker's part of it.
    pub(crate) fn fire_next(&mut self, io: &mut Io) -> Option<Fired> {
        // The turn's clock: read once per turn, after the wait (shared with the receives).
        let now = self.now();
        let timer = self.timers.pop_due(now)?;
        Some(match timer {
            Timer::Session { session, token } => {
                let conn = self.conn(session);
                if self.live(session).is_some() && io.is_open(conn) {
                    Fired::Session(session, token)
                } else {
                    Fired::Internal // a closed session's timers never fire
                }
            }
            Timer::Tick => {
                if let Some(tick) = self.shared.config.tick {
                    self.timers.insert(now + tick, Timer::Tick);
                }
                Fired::Tick
            }
            Timer::AcceptResume => Fired::Internal,
            Timer::Linger(session) => {
                if let Some(i) = self.live(session) {
                    self.records[i].linger_timer = None;
                    let conn = self.conn(session);
                    if io.queued(conn).is_some() {
                        tracing::debug!(
                            "session {session}: flush not finished within the linger time: \
                             dropping the rest"
                        );
                        let _ = io.close(conn, CloseMode::Abort);
                    }
                }
                Fired::Internal
            }
            Timer::Idle(session) => {
                if let Some(i) = self.live(session) {
                    self.records[i].idle_timer = None;
                    self.check_idle(io, session, i, now);
                }
                Fired::Internal
            }
        })
    }

    /// Closes `session` if nothing arrived for the idle timeout, else checks again when it could
    /// have been idle that long.
    fn check_idle(&mut self, io: &mut Io, session: SessionId, i: usize, now: Instant) {
        let (Some(idle), Some(last)) = (
            self.shared.config.idle_timeout,
            self.records[i].last_receive,
        ) else {
            return;
        };
        let conn = self.conn(session);
        if !io.is_open(conn) {
            return;
        }
        let due = last + idle;
        if due <= now {
            tracing::debug!("session {session}: nothing received for {idle:?}: closing");
            self.close_conn(io, conn, CloseReason::IdleTimeout, CloseMode::Flush);
        } else {
            self.records[i].idle_timer = Some(self.timers.insert(due, Timer::Idle(session)));
        }
    }

    /// Accepting paused until `until` (a back-off): wake up then to resume.
    pub(crate) fn accept_paused(&mut self, until: Instant) {
        self.timers.insert(until, Timer::AcceptResume);
    }

    /// Every open session of this worker.
    pub(crate) fn open_sessions(&self, io: &Io) -> Vec<SessionId> {
        self.records
            .iter()
            .filter_map(|r| r.session)
            .filter(|&s| io.is_open(self.conn(s)))
            .collect()
    }
}
