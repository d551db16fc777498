//! The network server's metrics: sessions, traffic, send queues, the workers' loops and the
//! driver's events. Read from [`ServerHandle::worker_stats`] when scraped: the workers keep
//! their counters to themselves (plain stores, one writer each) and nothing is summed before.

use iocp_server::{Backend, CloseReason, EVENTS_PER_TURN_BOUNDS, ServerHandle, Stats};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Unit;

use super::encode::{self, HistogramValues, counter, counters, gauge, gauges, histograms};

/// Reads the server's counters at each scrape.
pub struct ServerCollector {
    handle: ServerHandle,
    backend: Backend,
    max_sessions: u32,
}

impl std::fmt::Debug for ServerCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCollector")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl ServerCollector {
    /// The collector of `handle`'s server, which runs on `backend` with `max_sessions` slots.
    pub fn new(handle: ServerHandle, backend: Backend, max_sessions: u32) -> ServerCollector {
        ServerCollector {
            handle,
            backend,
            max_sessions,
        }
    }
}

fn backend_name(backend: Backend) -> &'static str {
    match backend {
        Backend::Uring => "uring",
        Backend::Poll => "poll",
        Backend::Iocp => "iocp",
    }
}

/// A worker's turns by events handed over, as a histogram (the sum is the events).
fn events_per_turn(w: &Stats) -> HistogramValues {
    let bounds = EVENTS_PER_TURN_BOUNDS
        .iter()
        .map(|&b| b as f64)
        .chain([f64::INFINITY]);
    HistogramValues {
        buckets: bounds.zip(w.events_per_turn).collect(),
        sum: w.events as f64,
    }
}

impl Collector for ServerCollector {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> encode::Result {
        // The totals and each worker's share, read one after the other.
        let s = self.handle.stats();
        let workers = self.handle.worker_stats();
        let e = &mut e;
        gauges(
            e,
            "iocp_server_info",
            "The completion backend the server runs on (the value is always 1).",
            None,
            "backend",
            [(backend_name(self.backend), 1)],
        )?;
        gauge(
            e,
            "iocp_workers",
            "Worker threads, each with its own completion port.",
            None,
            workers.len() as i64,
        )?;
        gauge(
            e,
            "iocp_sessions_max",
            "Session slots (--max-sessions): connections beyond them are refused.",
            None,
            i64::from(self.max_sessions),
        )?;
        gauge(
            e,
            "iocp_sessions_open",
            "Sessions open now.",
            None,
            s.open() as i64,
        )?;
        counter(
            e,
            "iocp_sessions_accepted",
            "Connections given a session.",
            None,
            s.accepted,
        )?;
        counter(
            e,
            "iocp_sessions_refused",
            "Connections accepted and closed at once: the session pool was full, or the server \
             was shutting down.",
            None,
            s.refused,
        )?;
        counters(
            e,
            "iocp_sessions_closed",
            "Sessions closed, by reason (peer, reset, error, queue: a slow reader past its \
             send-queue limit, app, protocol: bad input, shutdown, panic, overload, idle, \
             timeout).",
            None,
            "reason",
            CloseReason::KIND_NAMES.iter().copied().zip(s.closed),
        )?;
        counter(
            e,
            "iocp_received",
            "Bytes received.",
            Some(Unit::Bytes),
            s.bytes_in,
        )?;
        counter(
            e,
            "iocp_receives",
            "Receive completions handed to the handler: reads, not messages (one may carry \
             several messages, or part of one).",
            None,
            s.receives,
        )?;
        counter(
            e,
            "iocp_queued",
            "Bytes handed to the sessions' send queues.",
            Some(Unit::Bytes),
            s.bytes_out,
        )?;
        counter(
            e,
            "iocp_queued_messages",
            "Messages handed to the sessions' send queues.",
            None,
            s.messages_out,
        )?;
        counter(
            e,
            "iocp_delivered",
            "Bytes the kernel took from the send queues (sent, or in a socket's buffer).",
            Some(Unit::Bytes),
            s.bytes_delivered,
        )?;
        counter(
            e,
            "iocp_delivered_messages",
            "Messages the kernel took completely from the send queues.",
            None,
            s.messages_delivered,
        )?;
        gauge(
            e,
            "iocp_send_queue",
            "Bytes waiting in the sessions' send queues now (the send in flight included).",
            Some(Unit::Bytes),
            s.send_queue_bytes as i64,
        )?;
        let names: Vec<String> = (0..workers.len()).map(|i| i.to_string()).collect();
        counters(
            e,
            "iocp_worker_turns",
            "Turns of a worker's loop: one wait for completions and the work it brought.",
            None,
            "worker",
            names
                .iter()
                .map(String::as_str)
                .zip(workers.iter().map(|w| w.turns)),
        )?;
        let per_turn: Vec<HistogramValues> = workers.iter().map(events_per_turn).collect();
        histograms(
            e,
            "iocp_worker_events_per_turn",
            "Completions (events) a worker's wait handed over, per wake-up.",
            None,
            "worker",
            names.iter().map(String::as_str).zip(&per_turn),
        )?;
        gauges(
            e,
            "iocp_worker_timers_armed",
            "Timers armed on a worker now: idle and linger deadlines, the handler's timers.",
            None,
            "worker",
            names
                .iter()
                .map(String::as_str)
                .zip(workers.iter().map(|w| w.timers_armed as i64)),
        )?;
        counter(
            e,
            "iocp_driver_recv_out_of_buffers",
            "Receives re-armed because the receive buffer ring ran out (io_uring ENOBUFS).",
            None,
            s.recv_out_of_buffers,
        )?;
        counter(
            e,
            "iocp_driver_cq_overflows",
            "Waits that found the kernel's completion queue overflowed (io_uring).",
            None,
            s.cq_overflows,
        )?;
        counter(
            e,
            "iocp_driver_partial_sends",
            "Sends the kernel took only part of: a socket buffer was full (a slow reader).",
            None,
            s.partial_sends,
        )?;
        counter(
            e,
            "iocp_driver_accept_backoffs",
            "Times accepting paused and backed off after an error (out of descriptors or \
             memory).",
            None,
            s.accept_backoffs,
        )?;
        Ok(())
    }
}
