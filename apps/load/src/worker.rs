//! One client thread: its completion port, its share of the connections, and the loop that keeps
//! messages in flight and checks what comes back.
//!
//! A worker goes through these steps, the main thread pacing the ones that involve every thread
//! (through [`Shared`]):
//!
//! 1. open its connections at its share of `--connect-rate`, attaching each to its driver;
//! 2. wait for the start signal (every thread has connected);
//! 3. run the load: warm-up, measurement, drain (`echo`), or hold them idle (`idle`);
//! 4. close its connections and hand back a [`Report`].
//!
//! Every event of the driver goes through [`Worker::on_event`], whatever the step: bytes that
//! arrive when none are expected are a verification error like any other, and a connection the
//! server closes is counted whenever it happens.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use hdrhistogram::Histogram;
use iocp_driver::{Backend, CloseMode, ConnId, Driver, Event, Io};

use crate::connect::Target;
use crate::message::{InFlight, Mismatch, Pattern, Receiver, Spec};

/// Detailed error lines a worker keeps (the rest are counted only).
const MAX_ERROR_LINES: usize = 10;
/// Longest wait of one turn, so that the phases and the main thread's signals are seen promptly.
const MAX_WAIT: Duration = Duration::from_millis(10);
/// How often the progress counters are published.
const PUBLISH_EVERY_NS: u64 = 20_000_000;
/// How long closing the connections at the end may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest latency recorded (longer ones are recorded as this).
const MAX_LATENCY_NS: u64 = 3_600 * 1_000_000_000;

/// State shared by the main thread and the workers: signals one way, progress the other.
pub struct Shared {
    /// Time zero of the run; every timestamp is in nanoseconds since.
    pub epoch: Instant,
    /// When the load starts (ns since `epoch`), `u64::MAX` until the main thread says so.
    start: AtomicU64,
    /// Stop as soon as possible.
    pub abort: AtomicBool,
    /// `idle`: the main thread has read what it wanted at the end of the hold; close.
    pub release: AtomicBool,
    /// Workers done connecting.
    pub ready: AtomicU32,
    /// Workers at the end of their hold (`idle`).
    pub held: AtomicU32,
    /// Workers finished.
    pub finished: AtomicU32,
    /// Connections opened.
    pub connected: AtomicU64,
    /// Connects that failed.
    pub connect_errors: AtomicU64,
    /// Connections open now.
    pub open: AtomicU64,
    /// Messages measured.
    pub messages: AtomicU64,
    /// Verification errors.
    pub errors: AtomicU64,
    /// Connections the server closed.
    pub closed_by_server: AtomicU64,
}

impl Shared {
    /// Fresh state, time zero now.
    pub fn new() -> Shared {
        Shared {
            epoch: Instant::now(),
            start: AtomicU64::new(u64::MAX),
            abort: AtomicBool::new(false),
            release: AtomicBool::new(false),
            ready: AtomicU32::new(0),
            held: AtomicU32::new(0),
            finished: AtomicU32::new(0),
            connected: AtomicU64::new(0),
            connect_errors: AtomicU64::new(0),
            open: AtomicU64::new(0),
            messages: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            closed_by_server: AtomicU64::new(0),
        }
    }

    /// Nanoseconds since time zero.
    pub fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Tells the workers to start the load now; returns the start time.
    pub fn start(&self) -> u64 {
        let t0 = self.now();
        self.start.store(t0, Relaxed);
        t0
    }

    /// When the load started (ns since time zero), once it has.
    pub fn start_time(&self) -> Option<u64> {
        let t = self.start.load(Relaxed);
        (t != u64::MAX).then_some(t)
    }

    fn aborted(&self) -> bool {
        self.abort.load(Relaxed)
    }
}

/// What every worker does, set from the command line.
pub struct Settings {
    /// Where to connect.
    pub target: Target,
    /// Driver settings (capacity is set per worker).
    pub driver: iocp_driver::Config,
    /// Connections opened per second, per worker.
    pub connect_rate: f64,
    /// Message shape.
    pub spec: Spec,
    /// Messages in flight per connection, at most.
    pub pipeline: usize,
    /// The workload.
    pub load: Load,
    /// How long to wait for outstanding echoes (or, with a message count, for any progress).
    pub drain_timeout: Duration,
}

/// The workload of a run.
pub enum Load {
    /// `echo`: send and verify.
    Echo {
        /// Messages per second for all connections together (open loop), or `None` (closed
        /// loop).
        rate: Option<f64>,
        /// Total connections of all workers (to split the rate).
        total_connections: u32,
        /// Load before measuring.
        warmup: Duration,
        /// How long to measure, or `None` when measuring a number of messages.
        duration: Option<Duration>,
    },
    /// `idle`: hold the connections; then, if `ping`, one message each (`Settings::spec`).
    Idle {
        /// How long to hold.
        hold: Duration,
        /// Send one message per connection after the hold and check its echo.
        ping: bool,
    },
}

/// A worker's share: the connection numbers it opens, and with `--messages` how many messages
/// each must carry.
pub struct Share {
    /// Global numbers (as in the message header) of this worker's connections.
    pub conns: Vec<u32>,
    /// Messages to measure per connection (`--messages`), or empty.
    pub quotas: Vec<u64>,
}

/// What a worker found.
pub struct Report {
    /// The backend it ran on.
    pub backend: Option<Backend>,
    /// Why it does not run on the backend asked for, if so.
    pub fallback: Option<String>,
    /// The driver could not be created.
    pub driver_error: Option<String>,
    /// Connections opened.
    pub connected: u64,
    /// Connects that failed.
    pub connect_errors: u64,
    /// The first connect error, in words.
    pub first_connect_error: Option<String>,
    /// `idle`: connections still open at the end of the hold.
    pub open_after_hold: u64,
    /// Connections the server closed (or reset).
    pub closed_by_server: u64,
    /// Messages measured (received in the measurement window).
    pub messages: u64,
    /// Bytes of the measured messages.
    pub bytes: u64,
    /// Every byte received and verified, warm-up and drain included.
    pub verified_bytes: u64,
    /// Every message received and verified.
    pub verified_messages: u64,
    /// Verification errors (one per connection at most: its stream stops there).
    pub verify_errors: u64,
    /// Messages sent and never echoed.
    pub lost: u64,
    /// The first errors in detail.
    pub errors: Vec<String>,
    /// Errors past the first few, counted only.
    pub errors_not_shown: u64,
    /// Latency of the measured messages, in ns.
    pub latency: Histogram<u64>,
    /// When the last measured message arrived (ns since time zero).
    pub last_measured_ns: u64,
}

impl Report {
    fn new() -> Report {
        Report {
            backend: None,
            fallback: None,
            driver_error: None,
            connected: 0,
            connect_errors: 0,
            first_connect_error: None,
            open_after_hold: 0,
            closed_by_server: 0,
            messages: 0,
            bytes: 0,
            verified_bytes: 0,
            verified_messages: 0,
            verify_errors: 0,
            lost: 0,
            errors: Vec::new(),
            errors_not_shown: 0,
            latency: new_histogram(),
            last_measured_ns: 0,
        }
    }

    /// Adds another worker's findings to these.
    pub fn merge(&mut self, other: Report) {
        self.backend = self.backend.or(other.backend);
        self.fallback = self.fallback.take().or(other.fallback);
        self.driver_error = self.driver_error.take().or(other.driver_error);
        self.connected += other.connected;
        self.connect_errors += other.connect_errors;
        self.first_connect_error = self
            .first_connect_error
            .take()
            .or(other.first_connect_error);
        self.open_after_hold += other.open_after_hold;
        self.closed_by_server += other.closed_by_server;
        self.messages += other.messages;
        self.bytes += other.bytes;
        self.verified_bytes += other.verified_bytes;
        self.verified_messages += other.verified_messages;
        self.verify_errors += other.verify_errors;
        self.lost += other.lost;
        self.errors.extend(other.errors);
        self.errors_not_shown += other.errors_not_shown;
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        self.last_measured_ns = self.last_measured_ns.max(other.last_measured_ns);
    }

    fn error(&mut self, line: String) {
        if self.errors.len() < MAX_ERROR_LINES {
            self.errors.push(line);
        } else {
            self.errors_not_shown += 1;
        }
    }
}

/// An empty latency histogram: 1 ns to an hour, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("valid histogram bounds")
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    /// Not connected (yet, or the connect failed).
    Unused,
    /// Open and verified so far.
    Open,
    /// We are closing it (end of run, or after an error).
    Closing,
    /// Closed.
    Closed,
}

/// One connection of the worker; its index is its driver slot.
struct Conn {
    /// Global number, as in the message header.
    number: u32,
    id: Option<ConnId>,
    state: State,
    /// Its stream cannot be trusted any more (a verification error or the server closed it):
    /// its missing messages are not reported as lost.
    broken: bool,
    /// Messages sent.
    sent: u64,
    /// Messages may be sent while `sent < quota_end`.
    quota_end: u64,
    /// Messages from this sequence number on are measured (`--messages`).
    count_from: u64,
    /// Messages to measure (`--messages`).
    quota: u64,
    rx: Receiver,
    in_flight: InFlight,
}

/// Open-loop pacing: message `i` of this worker is due at `t0 + i * interval` and goes to
/// connection `i % conns`, so that connection `j` sends its `m`-th message at
/// `t0 + (j + m * conns) * interval`.
struct Pacer {
    t0: u64,
    interval: f64,
    conns: u64,
    /// Messages due so far (all of them handed to their connection, which sends them as soon as
    /// its pipeline has room).
    issued: u64,
}

impl Pacer {
    fn due(&self, conn: usize, m: u64) -> u64 {
        self.t0 + ((conn as u64 + m * self.conns) as f64 * self.interval) as u64
    }

    fn due_count(&self, now: u64) -> u64 {
        if now < self.t0 {
            0
        } else {
            ((now - self.t0) as f64 / self.interval) as u64 + 1
        }
    }

    fn next_due(&self) -> u64 {
        self.t0 + (self.issued as f64 * self.interval) as u64
    }
}

/// The steps of a worker the main thread waits for; whatever has not been signalled when the
/// worker ends (normally, early, or by a panic) is signalled then.
struct Steps<'a> {
    shared: &'a Shared,
    ready: bool,
    held: bool,
}

impl Steps<'_> {
    /// Done connecting.
    fn ready(&mut self) {
        if !std::mem::replace(&mut self.ready, true) {
            self.shared.ready.fetch_add(1, Relaxed);
        }
    }

    /// At the end of the hold (`idle`).
    fn held(&mut self) {
        if !std::mem::replace(&mut self.held, true) {
            self.shared.held.fetch_add(1, Relaxed);
        }
    }
}

impl Drop for Steps<'_> {
    fn drop(&mut self) {
        self.ready();
        self.held();
        self.shared.finished.fetch_add(1, Relaxed);
    }
}

/// A client thread.
pub struct Worker<'a> {
    settings: &'a Settings,
    shared: &'a Shared,
    pattern: &'a Pattern,
    conns: Vec<Conn>,
    arena: BytesMut,
    report: Report,
    /// New messages may be sent.
    sending: bool,
    /// Received messages are measured between these times (ns since time zero).
    measure: Option<(u64, u64)>,
    /// `--messages`: messages still to be measured.
    remaining: u64,
    /// Messages sent and not echoed yet.
    outstanding: u64,
    pacer: Option<Pacer>,
    /// Connections open.
    open: u64,
    /// Last time a message completed (for stall detection).
    last_progress: u64,
    /// Progress not yet published.
    unpublished: u64,
    published_at: u64,
}

impl<'a> Worker<'a> {
    /// A worker for `share`.
    pub fn new(
        settings: &'a Settings,
        shared: &'a Shared,
        pattern: &'a Pattern,
        share: &Share,
    ) -> Worker<'a> {
        let conns = share
            .conns
            .iter()
            .enumerate()
            .map(|(j, &number)| Conn {
                number,
                id: None,
                state: State::Unused,
                broken: false,
                sent: 0,
                quota_end: u64::MAX,
                count_from: 0,
                quota: share.quotas.get(j).copied().unwrap_or(0),
                rx: Receiver::default(),
                in_flight: InFlight::new(settings.pipeline),
            })
            .collect();
        Worker {
            settings,
            shared,
            pattern,
            conns,
            arena: BytesMut::new(),
            report: Report::new(),
            sending: false,
            measure: None,
            remaining: 0,
            outstanding: 0,
            pacer: None,
            open: 0,
            last_progress: 0,
            unpublished: 0,
            published_at: 0,
        }
    }

    /// Runs every step and reports. Always counts itself `ready`, `held` and `finished` in
    /// [`Shared`], even when it fails early or panics, so that the main thread never waits for it
    /// in vain.
    pub fn run(mut self) -> Report {
        let shared = self.shared;
        let mut steps = Steps {
            shared,
            ready: false,
            held: false,
        };
        let config = iocp_driver::Config {
            capacity: (self.conns.len() as u32).max(1),
            ..self.settings.driver.clone()
        };
        let mut driver = match Driver::new(&config) {
            Ok(driver) => driver,
            Err(e) => {
                self.report.driver_error = Some(format!(
                    "cannot create a {} driver: {e}",
                    self.settings.driver.backend
                ));
                return self.report;
            }
        };
        self.report.backend = Some(driver.backend());
        self.report.fallback = driver.features().fallback.clone();

        self.connect_all(&mut driver);
        steps.ready();
        let t0 = loop {
            if let Some(t0) = shared.start_time() {
                break Some(t0);
            }
            if shared.aborted() {
                break None;
            }
            self.turn(&mut driver, MAX_WAIT);
        };
        if let Some(t0) = t0 {
            match self.settings.load {
                Load::Echo {
                    rate,
                    total_connections,
                    warmup,
                    duration,
                } => {
                    if let Some(rate) = rate {
                        let share = rate * self.conns.len() as f64 / f64::from(total_connections);
                        self.pacer = Some(Pacer {
                            t0,
                            interval: 1e9 / share,
                            conns: self.conns.len() as u64,
                            issued: 0,
                        });
                    }
                    let start = t0 + warmup.as_nanos() as u64;
                    let end = duration.map_or(u64::MAX, |d| start + d.as_nanos() as u64);
                    self.load(&mut driver, start, end);
                }
                Load::Idle { hold, ping } => {
                    self.hold(&mut driver, t0 + hold.as_nanos() as u64, &mut steps);
                    if ping && !shared.aborted() {
                        for c in &mut self.conns {
                            c.quota = 1;
                        }
                        let now = shared.now();
                        self.load(&mut driver, now, u64::MAX);
                    }
                }
            }
        }
        self.report_lost();
        self.close_all(&mut driver);
        self.publish(true);
        self.report
    }

    /// Opens the worker's connections at its share of the connect rate, handling events
    /// between connects.
    fn connect_all(&mut self, driver: &mut Driver) {
        let interval = 1e9 / self.settings.connect_rate;
        let begin = self.shared.now();
        for j in 0..self.conns.len() {
            let due = begin + (j as f64 * interval) as u64;
            loop {
                let now = self.shared.now();
                if now >= due || self.shared.aborted() {
                    break;
                }
                self.turn(driver, Duration::from_nanos(due - now).min(MAX_WAIT));
            }
            if self.shared.aborted() {
                break;
            }
            let number = self.conns[j].number;
            let attached = self
                .settings
                .target
                .connect(number)
                .and_then(|socket| driver.io().attach(j as u32, socket));
            match attached {
                Ok(id) => {
                    let c = &mut self.conns[j];
                    c.id = Some(id);
                    c.state = State::Open;
                    self.open += 1;
                    self.report.connected += 1;
                    self.shared.connected.fetch_add(1, Relaxed);
                    self.shared.open.fetch_add(1, Relaxed);
                }
                Err(e) => {
                    self.report.connect_errors += 1;
                    self.shared.connect_errors.fetch_add(1, Relaxed);
                    self.report
                        .first_connect_error
                        .get_or_insert_with(|| format!("connection {number}: {e}"));
                }
            }
        }
        // Submit the last receives.
        self.turn(driver, Duration::ZERO);
    }

    /// `idle`: keeps the connections open until `end`, then waits for the main thread.
    fn hold(&mut self, driver: &mut Driver, end: u64, steps: &mut Steps<'_>) {
        loop {
            let now = self.shared.now();
            if now >= end || self.shared.aborted() {
                break;
            }
            self.turn(driver, Duration::from_nanos(end - now).min(MAX_WAIT));
        }
        self.report.open_after_hold =
            self.conns.iter().filter(|c| c.state == State::Open).count() as u64;
        steps.held();
        while !self.shared.release.load(Relaxed) && !self.shared.aborted() {
            self.turn(driver, MAX_WAIT);
        }
    }

    /// Sends and verifies: warm-up until `start`, measurement until `end` (`u64::MAX`: until
    /// every connection has carried its quota), then waits for what is in flight.
    fn load(&mut self, driver: &mut Driver, start: u64, end: u64) {
        let by_count = end == u64::MAX;
        let drain = self.settings.drain_timeout.as_nanos() as u64;
        self.sending = true;
        self.last_progress = self.shared.now();
        let mut filled = false;
        let mut deadline = u64::MAX;
        loop {
            let now = self.shared.now();
            if self.measure.is_none() && now >= start {
                self.begin_measurement(start, end);
            }
            if self.sending && now >= end {
                self.sending = false;
                deadline = now + drain;
            }
            if self.shared.aborted() {
                break;
            }
            if !filled && self.pacer.is_none() {
                // Closed loop: put the pipeline in flight; each echo sends the next message.
                filled = true;
                for j in 0..self.conns.len() {
                    self.fill(driver.io(), j, now);
                }
            }
            if self.pacer.is_some() {
                self.pace(driver.io(), now);
            }
            if by_count {
                if self.measure.is_some() && self.remaining == 0 {
                    break;
                }
                if now.saturating_sub(self.last_progress) > drain {
                    break;
                }
            } else if !self.sending && (self.outstanding == 0 || now >= deadline) {
                break;
            }
            let mut wake = if self.measure.is_none() { start } else { end };
            if !self.sending {
                wake = deadline;
            }
            if let Some(pacer) = &self.pacer {
                wake = wake.min(pacer.next_due());
            }
            let wait = Duration::from_nanos(wake.saturating_sub(now)).min(MAX_WAIT);
            self.turn(driver, wait);
        }
        self.sending = false;
    }

    fn begin_measurement(&mut self, start: u64, end: u64) {
        self.measure = Some((start, end));
        if end == u64::MAX {
            self.remaining = 0;
            for c in &mut self.conns {
                c.count_from = c.sent;
                c.quota_end = c.sent + c.quota;
                if c.state == State::Open {
                    self.remaining += c.quota;
                }
            }
        }
    }

    /// Closed loop: sends on connection `j` until its pipeline is full.
    fn fill(&mut self, io: &mut Io, j: usize, now: u64) {
        while self.sending {
            let c = &self.conns[j];
            if c.state != State::Open || c.in_flight.is_full() || c.sent >= c.quota_end {
                break;
            }
            if !self.send(io, j, now) {
                break;
            }
        }
    }

    /// Open loop: hands the messages now due to their connections.
    fn pace(&mut self, io: &mut Io, now: u64) {
        let Some(pacer) = &self.pacer else { return };
        let due = pacer.due_count(now);
        // A connection visited once sends everything it has due, so a backlog longer than the
        // connections need not be walked message by message.
        let from = pacer.issued.max(due.saturating_sub(pacer.conns));
        let conns = pacer.conns;
        for i in from..due {
            self.catch_up(io, (i % conns) as usize, now);
        }
        if let Some(pacer) = &mut self.pacer {
            pacer.issued = due;
        }
    }

    /// Open loop: sends what connection `j` has due, as far as its pipeline allows, each stamped
    /// with the time it was due.
    fn catch_up(&mut self, io: &mut Io, j: usize, now: u64) {
        let end = self.measure.map_or(u64::MAX, |(_, end)| end);
        while self.sending {
            let c = &self.conns[j];
            if c.state != State::Open || c.in_flight.is_full() || c.sent >= c.quota_end {
                break;
            }
            let Some(due) = self.pacer.as_ref().map(|p| p.due(j, c.sent)) else {
                break;
            };
            if due > now || due >= end || !self.send(io, j, due) {
                break;
            }
        }
    }

    /// Sends the next message of connection `j`, stamped `time`. Fails when the driver is
    /// closing the connection (after an I/O error; its `Closed` event is on its way).
    fn send(&mut self, io: &mut Io, j: usize, time: u64) -> bool {
        let c = &mut self.conns[j];
        let Some(id) = c.id else { return false };
        let bytes =
            self.settings
                .spec
                .encode(self.pattern, &mut self.arena, c.number, c.sent, time);
        match io.send(id, bytes) {
            Ok(_) => {
                c.in_flight.push(time);
                c.sent += 1;
                self.outstanding += 1;
                true
            }
            Err(_) => false,
        }
    }

    /// One turn of the driver, every event going to [`Worker::on_event`].
    fn turn(&mut self, driver: &mut Driver, wait: Duration) {
        if let Err(e) = driver.turn(Some(wait), |io, event| self.on_event(io, event)) {
            self.report.error(format!("driver: {e}"));
            self.shared.abort.store(true, Relaxed);
        }
        self.publish(false);
    }

    fn on_event(&mut self, io: &mut Io, event: Event<'_>) {
        match event {
            Event::Received { conn, data } => self.received(io, conn, data),
            Event::ReadClosed { conn } => {
                let Some(j) = self.slot(conn) else { return };
                let c = &mut self.conns[j];
                if c.state == State::Open {
                    let line = format!(
                        "connection {}: closed by the server after {} of {} messages echoed",
                        c.number,
                        c.rx.messages(),
                        c.sent
                    );
                    self.server_closed(io, j, line);
                }
            }
            Event::Closed { conn, error } => {
                let Some(j) = self.slot(conn) else { return };
                if self.conns[j].state == State::Open {
                    let c = &self.conns[j];
                    let why = error.map_or_else(|| "closed".to_owned(), |e| e.to_string());
                    let line = format!(
                        "connection {}: {why} after {} of {} messages echoed",
                        c.number,
                        c.rx.messages(),
                        c.sent
                    );
                    self.server_closed(io, j, line);
                }
                let c = &mut self.conns[j];
                c.state = State::Closed;
                c.id = None;
                self.open -= 1;
                self.shared.open.fetch_sub(1, Relaxed);
            }
            Event::Accepted(_) | Event::AcceptError(_) | Event::Woken => {}
        }
    }

    /// The driver slot of `conn`, if it is the connection we have there.
    fn slot(&self, conn: ConnId) -> Option<usize> {
        let j = conn.index as usize;
        (self.conns.get(j)?.id == Some(conn)).then_some(j)
    }

    fn received(&mut self, io: &mut Io, conn: ConnId, data: &[u8]) {
        let Some(j) = self.slot(conn) else { return };
        if self.conns[j].state != State::Open {
            return;
        }
        let now = self.shared.now();
        let spec = self.settings.spec;
        let (measure_start, measure_end) = self.measure.unwrap_or((u64::MAX, 0));
        let measuring = now >= measure_start && now < measure_end;
        let c = &mut self.conns[j];
        let count_from = c.count_from;
        let before = c.rx.messages();
        let report = &mut self.report;
        let mut measured = 0;
        let mut measured_bytes = 0;
        let number = c.number;
        let result = c.rx.feed(
            spec,
            self.pattern,
            number,
            data,
            &mut c.in_flight,
            |seq, sent| {
                if measuring && seq >= count_from {
                    let latency = now.saturating_sub(sent).clamp(1, MAX_LATENCY_NS);
                    report.latency.saturating_record(latency);
                    measured += 1;
                    measured_bytes += spec.len(number, seq) as u64;
                }
            },
        );
        let done = c.rx.messages() - before;
        self.outstanding -= done;
        self.report.verified_messages += done;
        if done > 0 {
            self.last_progress = now;
        }
        if measured > 0 {
            self.report.messages += measured;
            self.report.bytes += measured_bytes;
            self.report.last_measured_ns = now;
            self.unpublished += measured;
            if self.remaining > 0 {
                self.remaining = self.remaining.saturating_sub(measured);
            }
        }
        match result {
            Ok(()) => {
                self.report.verified_bytes += data.len() as u64;
                if self.pacer.is_some() {
                    self.catch_up(io, j, now);
                } else {
                    self.fill(io, j, now);
                }
            }
            Err(mismatch) => {
                self.verify_error(&mismatch);
                self.abandon(io, j);
            }
        }
    }

    fn verify_error(&mut self, mismatch: &Mismatch) {
        self.report.verify_errors += 1;
        self.shared.errors.fetch_add(1, Relaxed);
        self.report.error(format!("verification: {mismatch}"));
    }

    /// Reports a wrong byte in a header whose stream stopped before the rest of it arrived.
    fn check_partial_header(&mut self, j: usize) {
        let c = &mut self.conns[j];
        if c.broken {
            return;
        }
        if let Some(mismatch) = c.rx.pending(c.number, &c.in_flight) {
            c.broken = true;
            self.verify_error(&mismatch);
        }
    }

    /// The server closed connection `j` (or reset it).
    fn server_closed(&mut self, io: &mut Io, j: usize, line: String) {
        self.check_partial_header(j);
        self.report.closed_by_server += 1;
        self.shared.closed_by_server.fetch_add(1, Relaxed);
        self.report.error(line);
        self.abandon(io, j);
    }

    /// Stops using connection `j`: its stream is broken, its messages are not waited for.
    fn abandon(&mut self, io: &mut Io, j: usize) {
        let c = &mut self.conns[j];
        c.broken = true;
        c.state = State::Closing;
        let pending = c.in_flight.len() as u64;
        self.outstanding -= pending;
        if self.measure.is_some_and(|(_, end)| end == u64::MAX) {
            let measured = c.rx.messages().max(c.count_from);
            self.remaining = self
                .remaining
                .saturating_sub(c.quota_end.saturating_sub(measured));
        }
        if let Some(id) = c.id {
            let _ = io.close(id, CloseMode::Abort);
        }
    }

    /// Counts the messages still in flight on healthy connections as lost.
    fn report_lost(&mut self) {
        for j in 0..self.conns.len() {
            self.check_partial_header(j);
        }
        for c in &self.conns {
            if c.broken || c.in_flight.is_empty() {
                continue;
            }
            let missing = c.in_flight.len() as u64;
            self.report.lost += missing;
            let line = format!(
                "connection {}: {missing} messages never echoed (messages {}..{}; the echo \
                 stream stopped at byte {})",
                c.number,
                c.rx.messages(),
                c.sent,
                c.rx.stream_offset()
            );
            self.report.error(line);
        }
    }

    /// Closes every connection and waits for their `Closed` events.
    fn close_all(&mut self, driver: &mut Driver) {
        for c in &mut self.conns {
            if let (State::Open | State::Closing, Some(id)) = (c.state, c.id) {
                c.state = State::Closing;
                let _ = driver.io().close(id, CloseMode::Abort);
            }
        }
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        while self.open > 0 && Instant::now() < deadline {
            self.turn(driver, MAX_WAIT);
        }
    }

    /// Publishes progress for the main thread, at most every [`PUBLISH_EVERY_NS`].
    fn publish(&mut self, force: bool) {
        if self.unpublished == 0 {
            return;
        }
        let now = self.shared.now();
        if force || now - self.published_at >= PUBLISH_EVERY_NS {
            self.shared.messages.fetch_add(self.unpublished, Relaxed);
            self.unpublished = 0;
            self.published_at = now;
        }
    }
}
