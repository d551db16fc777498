//! Counters of sessions and traffic, kept per worker and summed on demand.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::session::CloseReason;

/// One worker's counters. Only that worker writes them, so an update is a plain load and store
/// (no locked instruction on the hot path); readers sum all workers' counters.
#[derive(Default)]
#[repr(align(128))]
pub(crate) struct WorkerStats {
    accepted: AtomicU64,
    refused: AtomicU64,
    closed: [AtomicU64; CloseReason::KINDS],
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    bytes_delivered: AtomicU64,
    receives: AtomicU64,
    messages_out: AtomicU64,
}

#[inline]
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

impl WorkerStats {
    pub(crate) fn accepted(&self) {
        bump(&self.accepted, 1);
    }

    pub(crate) fn refused(&self) {
        bump(&self.refused, 1);
    }

    pub(crate) fn closed(&self, reason: &CloseReason) {
        bump(&self.closed[reason.kind_index()], 1);
    }

    #[inline]
    pub(crate) fn received(&self, bytes: usize) {
        bump(&self.bytes_in, bytes as u64);
        bump(&self.receives, 1);
    }

    /// The worker's driver has handed `total` bytes to the kernel since it started.
    pub(crate) fn set_delivered(&self, total: u64) {
        self.bytes_delivered.store(total, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn sent(&self, bytes: usize) {
        bump(&self.bytes_out, bytes as u64);
        bump(&self.messages_out, 1);
    }

    fn add_to(&self, s: &mut Stats) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        s.accepted += get(&self.accepted);
        s.refused += get(&self.refused);
        for (total, c) in s.closed.iter_mut().zip(&self.closed) {
            *total += get(c);
        }
        s.bytes_in += get(&self.bytes_in);
        s.bytes_out += get(&self.bytes_out);
        s.bytes_delivered += get(&self.bytes_delivered);
        s.receives += get(&self.receives);
        s.messages_out += get(&self.messages_out);
    }
}

/// A snapshot of the server's counters since it started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections given a session.
    pub accepted: u64,
    /// Connections accepted and closed at once because the pool was full (or the server was
    /// shutting down).
    pub refused: u64,
    /// Sessions closed, by [`CloseReason::kind_index`]. A session is counted once its
    /// [`crate::Handler::on_close`] has returned.
    pub closed: [u64; CloseReason::KINDS],
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes handed to sessions' send queues.
    pub bytes_out: u64,
    /// Bytes the kernel took from the send queues (sent, or in a socket's buffer): what was
    /// queued less what is still queued or was dropped with a session that closed.
    pub bytes_delivered: u64,
    /// Receive completions delivered to the handler: reads, not messages (one may carry several
    /// messages, or part of one).
    pub receives: u64,
    /// Messages queued for sending.
    pub messages_out: u64,
}

impl Stats {
    pub(crate) fn sum<'a>(workers: impl IntoIterator<Item = &'a WorkerStats>) -> Stats {
        let mut s = Stats::default();
        for w in workers {
            w.add_to(&mut s);
        }
        s
    }

    /// Sessions closed, all reasons together.
    pub fn closed_total(&self) -> u64 {
        self.closed.iter().sum()
    }

    /// Sessions open now.
    pub fn open(&self) -> u64 {
        self.accepted.saturating_sub(self.closed_total())
    }

    /// Sessions closed for `reason`'s kind.
    pub fn closed_for(&self, reason: &CloseReason) -> u64 {
        self.closed[reason.kind_index()]
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sessions open {} accepted {} refused {} closed {} (",
            self.open(),
            self.accepted,
            self.refused,
            self.closed_total()
        )?;
        let mut first = true;
        for (name, n) in CloseReason::KIND_NAMES.iter().zip(self.closed) {
            if n > 0 {
                write!(f, "{}{name} {n}", if first { "" } else { ", " })?;
                first = false;
            }
        }
        write!(
            f,
            ") | in {} reads {} B | out {} msgs {} B queued, {} B delivered",
            self.receives, self.bytes_in, self.messages_out, self.bytes_out, self.bytes_delivered
        )
    }
}
