//! Counters of sessions and traffic, kept per worker and summed on demand.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use iocp_driver::DriverStats;

use crate::session::CloseReason;

/// Upper bounds of the buckets of [`Stats::events_per_turn`]: a turn that handed over `n`
/// events is counted in the first bucket whose bound is at least `n`, or in the last one
/// (unbounded) when `n` is above them all.
pub const EVENTS_PER_TURN_BOUNDS: [u64; 9] = [0, 1, 2, 4, 8, 16, 32, 64, 128];

/// Buckets of [`Stats::events_per_turn`]: one per bound, and one above them all.
pub const EVENTS_PER_TURN_BUCKETS: usize = EVENTS_PER_TURN_BOUNDS.len() + 1;

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
    turns: AtomicU64,
    events: AtomicU64,
    events_per_turn: [AtomicU64; EVENTS_PER_TURN_BUCKETS],
    timers_armed: AtomicU64,
    recv_out_of_buffers: AtomicU64,
    cq_overflows: AtomicU64,
    partial_sends: AtomicU64,
    accept_backoffs: AtomicU64,
    messages_delivered: AtomicU64,
    send_queue_bytes: AtomicU64,
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

    /// A turn of the worker's loop handed over `events` events; `timers` are armed now.
    #[inline]
    pub(crate) fn turned(&self, events: u64, timers: usize) {
        bump(&self.turns, 1);
        bump(&self.events, events);
        let bucket = EVENTS_PER_TURN_BOUNDS.partition_point(|&bound| bound < events);
        bump(&self.events_per_turn[bucket], 1);
        self.timers_armed.store(timers as u64, Ordering::Relaxed);
    }

    /// The worker's driver's counters, as they are now.
    #[inline]
    pub(crate) fn set_driver(&self, d: &DriverStats) {
        let set = |c: &AtomicU64, v: u64| c.store(v, Ordering::Relaxed);
        set(&self.recv_out_of_buffers, d.recv_out_of_buffers);
        set(&self.cq_overflows, d.cq_overflows);
        set(&self.partial_sends, d.partial_sends);
        set(&self.accept_backoffs, d.accept_backoffs);
        set(&self.messages_delivered, d.messages_sent);
        set(&self.send_queue_bytes, d.send_queue_bytes);
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
        s.turns += get(&self.turns);
        s.events += get(&self.events);
        for (total, c) in s.events_per_turn.iter_mut().zip(&self.events_per_turn) {
            *total += get(c);
        }
        s.timers_armed += get(&self.timers_armed);
        s.recv_out_of_buffers += get(&self.recv_out_of_buffers);
        s.cq_overflows += get(&self.cq_overflows);
        s.partial_sends += get(&self.partial_sends);
        s.accept_backoffs += get(&self.accept_backoffs);
        s.messages_delivered += get(&self.messages_delivered);
        s.send_queue_bytes += get(&self.send_queue_bytes);
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
    /// Messages the kernel took completely from the send queues.
    pub messages_delivered: u64,
    /// Bytes in the send queues now (the part in flight included), as of each worker's last
    /// turn.
    pub send_queue_bytes: u64,
    /// Turns of the workers' loops: each is one wait for completions (the seed's
    /// `GetQueuedCompletionStatus`) and the work it brought.
    pub turns: u64,
    /// Events the workers' completion ports handed over (completions that reached the server,
    /// wake-ups included).
    pub events: u64,
    /// Turns by how many events they handed over: bucket `i` counts the turns with at most
    /// [`EVENTS_PER_TURN_BOUNDS`]`[i]` events (and more than the bound before it); the last
    /// bucket the turns with more than every bound.
    pub events_per_turn: [u64; EVENTS_PER_TURN_BUCKETS],
    /// Timers armed now (idle and linger deadlines, the handler's timers, the tick), as of
    /// each worker's last turn.
    pub timers_armed: u64,
    /// Receives re-armed because the receive buffers ran out
    /// ([`DriverStats::recv_out_of_buffers`]).
    pub recv_out_of_buffers: u64,
    /// Waits that found the completion queue overflowed ([`DriverStats::cq_overflows`]).
    pub cq_overflows: u64,
    /// Sends the kernel took only part of ([`DriverStats::partial_sends`]).
    pub partial_sends: u64,
    /// Times accepting paused and backed off after an error ([`DriverStats::accept_backoffs`]).
    pub accept_backoffs: u64,
}

impl Stats {
    /// One worker's counters.
    pub(crate) fn of(worker: &WorkerStats) -> Stats {
        Stats::sum([worker])
    }

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
