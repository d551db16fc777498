//! Session ids, close reasons, and the slot table every thread can read.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU32, Ordering};

/// A session: a slot of the pool and the generation of the connection in it.
///
/// The generation is bumped each time the slot is freed, so an id kept after its session closed is
/// refused ([`crate::Error::SessionClosed`]) instead of reaching the next client in the slot. (The
/// generation has 24 bits: an id would only alias after 16 million reuses of its slot.)
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct SessionId {
    /// Index in the session pool, `0..max_sessions` (the seed's `client_index`).
    pub index: u32,
    /// Generation of the slot when the session opened.
    pub generation: u32,
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}.{}", self.index, self.generation)
    }
}

/// Why a session ended, as given to [`crate::Handler::on_close`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed its side (end of stream); what was queued for it was still sent.
    PeerClosed,
    /// The peer reset the connection, or it vanished while we sent (`ECONNRESET`, `EPIPE`).
    Reset,
    /// Another I/O error.
    IoError(io::ErrorKind),
    /// The peer did not read fast enough: its send queue passed the limit.
    SendQueueFull,
    /// The application closed it ([`crate::Context::close`] or [`crate::ServerHandle::close`]).
    Closed,
    /// The application closed it because the peer broke the protocol; the text says how.
    Protocol(String),
    /// The server shut down.
    Shutdown,
    /// The handler panicked in a callback of this session (the panic is caught: it costs this
    /// session only).
    HandlerPanicked,
    /// The application could not keep up with this session (a full queue to its logic thread,
    /// say); the text says what was full.
    Overloaded(String),
    /// Nothing arrived from the peer for [`crate::Config::idle_timeout`].
    IdleTimeout,
    /// A deadline of the application passed (a login that did not come in time, say); the text
    /// says which.
    Timeout(String),
}

impl CloseReason {
    /// Number of distinct kinds, for statistics.
    pub const KINDS: usize = 11;

    /// A small index per kind, for statistics.
    pub fn kind_index(&self) -> usize {
        match self {
            CloseReason::PeerClosed => 0,
            CloseReason::Reset => 1,
            CloseReason::IoError(_) => 2,
            CloseReason::SendQueueFull => 3,
            CloseReason::Closed => 4,
            CloseReason::Protocol(_) => 5,
            CloseReason::Shutdown => 6,
            CloseReason::HandlerPanicked => 7,
            CloseReason::Overloaded(_) => 8,
            CloseReason::IdleTimeout => 9,
            CloseReason::Timeout(_) => 10,
        }
    }

    /// Short names of the kinds, in [`CloseReason::kind_index`] order.
    pub const KIND_NAMES: [&'static str; Self::KINDS] = [
        "peer", "reset", "error", "queue", "app", "protocol", "shutdown", "panic", "overload",
        "idle", "timeout",
    ];

    pub(crate) fn from_io(error: &io::Error) -> CloseReason {
        match error.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted => CloseReason::Reset,
            kind => CloseReason::IoError(kind),
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::PeerClosed => f.write_str("peer closed the connection"),
            CloseReason::Reset => f.write_str("connection reset by peer"),
            CloseReason::IoError(kind) => write!(f, "I/O error: {kind}"),
            CloseReason::SendQueueFull => f.write_str("send queue limit passed (peer not reading)"),
            CloseReason::Closed => f.write_str("closed by the server"),
            CloseReason::Protocol(why) => write!(f, "protocol error: {why}"),
            CloseReason::Shutdown => f.write_str("server shutdown"),
            CloseReason::HandlerPanicked => f.write_str("the handler panicked"),
            CloseReason::Overloaded(why) => write!(f, "overloaded: {why}"),
            CloseReason::IdleTimeout => f.write_str("idle timeout (nothing received)"),
            CloseReason::Timeout(why) => write!(f, "timeout: {why}"),
        }
    }
}

/// The state of every slot, readable from any thread: `generation << 1 | open`.
///
/// Written only by the worker that owns the slot; read by senders on other threads to refuse a
/// stale id at once. (The owner checks the generation again before delivering, so a slot that is
/// reused between that check and the delivery still never gets bytes meant for the old session.)
pub(crate) struct SlotTable {
    slots: Box<[AtomicU32]>,
    per_worker: u32,
}

impl SlotTable {
    pub(crate) fn new(max_sessions: u32, workers: u32) -> SlotTable {
        SlotTable {
            slots: (0..max_sessions).map(|_| AtomicU32::new(0)).collect(),
            per_worker: max_sessions.div_ceil(workers),
        }
    }

    /// Slots each worker owns (the last may own fewer).
    pub(crate) fn per_worker(&self) -> u32 {
        self.per_worker
    }

    pub(crate) fn len(&self) -> u32 {
        self.slots.len() as u32
    }

    /// The worker that owns slot `index`, and the slot's index within that worker.
    #[inline]
    pub(crate) fn owner(&self, index: u32) -> (usize, u32) {
        ((index / self.per_worker) as usize, index % self.per_worker)
    }

    #[inline]
    pub(crate) fn is_open(&self, id: SessionId) -> bool {
        self.slots
            .get(id.index as usize)
            .is_some_and(|s| s.load(Ordering::Acquire) == id.generation << 1 | 1)
    }

    pub(crate) fn set_open(&self, id: SessionId) {
        self.slots[id.index as usize].store(id.generation << 1 | 1, Ordering::Release);
    }

    pub(crate) fn set_closed(&self, id: SessionId) {
        self.slots[id.index as usize].store(id.generation << 1, Ordering::Release);
    }

    /// The session open in slot `index`, if one is.
    pub(crate) fn session_at(&self, index: u32) -> Option<SessionId> {
        let v = self.slots.get(index as usize)?.load(Ordering::Acquire);
        (v & 1 == 1).then_some(SessionId {
            index,
            generation: v >> 1,
        })
    }

    /// Every open session.
    pub(crate) fn open_sessions(&self) -> Vec<SessionId> {
        (0..self.len()).filter_map(|i| self.session_at(i)).collect()
    }
}
