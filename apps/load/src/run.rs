//! The main thread: prepares the run, starts the workers, paces the steps they share, shows
//! progress, and gives the verdict.

use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::cli::{Common, EchoArgs, IdleArgs};
use crate::connect::Target;
use crate::message::{HEADER_LEN, Pattern, Spec};
use crate::os::{self, CpuTime};
use crate::progress::Progress;
use crate::report::{self, group};
use crate::worker::{Load, Report, Settings, Share, Shared, Worker};

/// How often the main thread looks at the workers' progress.
const TICK: Duration = Duration::from_millis(100);
/// File descriptors the process needs besides its connections (rings, eventfds, stdio).
const SPARE_FDS: u64 = 64;

/// `iocp-load echo`.
pub fn echo(args: &EchoArgs) -> ExitCode {
    let common = &args.common;
    if args
        .rate
        .is_some_and(|rate| !(rate.is_finite() && rate > 0.0))
    {
        return usage("--rate must be a positive number of messages per second");
    }
    let messages = args.messages;
    if messages == Some(0) {
        return usage("--messages must be at least 1");
    }
    let duration = match messages {
        Some(_) => None,
        None => Some(args.duration.unwrap_or(Duration::from_secs(10))),
    };
    let warmup = args.warmup.unwrap_or(match messages {
        Some(_) => Duration::ZERO,
        None => Duration::from_secs(1),
    });
    let size_max = args.size_max.unwrap_or(args.size);
    if size_max < args.size {
        return usage("--size-max must not be below --size");
    }
    if size_max > args.size && (args.size as usize) < HEADER_LEN {
        return usage(&format!(
            "mixed sizes (--size-max) need --size of at least {HEADER_LEN} (each message carries its header)"
        ));
    }
    let spec = Spec {
        size: args.size as usize,
        size_max: size_max as usize,
    };
    let load = Load::Echo {
        rate: args.rate,
        total_connections: common.connections,
        warmup,
        duration,
    };
    let prepared = match Prepared::new(common, spec, args.pipeline, load, args.drain_timeout) {
        Ok(p) => p,
        Err(e) => return usage(&e),
    };
    let mut shares = prepared.shares();
    if let Some(n) = messages {
        let total = u64::from(common.connections);
        for share in &mut shares {
            share.quotas = share
                .conns
                .iter()
                .map(|&k| n / total + u64::from(u64::from(k) < n % total))
                .collect();
        }
    }
    let progress = Progress::new(common.quiet);
    let shared = Shared::new();
    let pattern = Pattern::new();
    let settings = &prepared.settings;

    let mut cpu = CpuTime::default();
    let mut elapsed = Duration::ZERO;
    let report = std::thread::scope(|s| {
        let handles = spawn(s, settings, &shared, &pattern, &shares);
        if wait_connected(common, &shared, prepared.threads, &progress) {
            let t0 = shared.start();
            let start = t0 + warmup.as_nanos() as u64;
            let end = duration.map(|d| start + d.as_nanos() as u64);
            let total_ms = (warmup + duration.unwrap_or_default()).as_millis() as u64;
            match messages {
                Some(n) => progress.step("echo", n),
                None => progress.timed("warm-up", warmup + duration.unwrap_or_default()),
            }
            let mut cpu_start = None;
            let mut cpu_end = None;
            let mut last = (Instant::now(), 0);
            while shared.finished.load(Relaxed) < prepared.threads {
                let now = shared.now();
                if cpu_start.is_none() && now >= start {
                    cpu_start = Some(os::cpu_time());
                    progress.set_prefix("measure");
                }
                if cpu_end.is_none() && end.is_some_and(|end| now >= end) {
                    cpu_end = Some(os::cpu_time());
                    progress.set_prefix("drain");
                }
                let measured = shared.messages.load(Relaxed);
                let rate = (measured - last.1) as f64 / last.0.elapsed().as_secs_f64();
                last = (Instant::now(), measured);
                let message = format!(
                    "{} msg/s, {} open, {} errors, {} closed by the server",
                    group(rate as u64),
                    group(shared.open.load(Relaxed)),
                    shared.errors.load(Relaxed),
                    shared.closed_by_server.load(Relaxed)
                );
                let pos = match messages {
                    Some(_) => measured,
                    None => (now.saturating_sub(t0) / 1_000_000).min(total_ms),
                };
                progress.set(pos, message);
                // Wake at the next boundary, so the CPU time is read close to it.
                let next = [start, end.unwrap_or(u64::MAX)]
                    .into_iter()
                    .filter(|&b| b > now)
                    .min()
                    .map_or(TICK, |b| Duration::from_nanos(b - now).min(TICK));
                std::thread::sleep(next);
            }
            let cpu_start = cpu_start.unwrap_or_else(os::cpu_time);
            cpu = cpu_end.unwrap_or_else(os::cpu_time).since(cpu_start);
            elapsed = duration.unwrap_or_default();
        }
        join(handles)
    });
    progress.clear();
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("iocp-load: {e}");
            return ExitCode::FAILURE;
        }
    };
    if messages.is_some() {
        let start = shared
            .start_time()
            .map_or(0, |t0| t0 + warmup.as_nanos() as u64);
        elapsed = Duration::from_nanos(report.last_measured_ns.saturating_sub(start));
    }
    let run = prepared.run("echo");
    let echo = report::Echo {
        size: args.size,
        size_max,
        pipeline: args.pipeline,
        rate: args.rate,
        warmup,
        elapsed,
        cpu,
    };
    let failures = report::failures(&run, &report, true);
    let text = report::echo_text(&run, &echo, &report);
    let json = common
        .json
        .then(|| report::echo_json(&run, &echo, &report, &failures));
    finish(&text, json, &report, &failures)
}

/// `iocp-load idle`.
pub fn idle(args: &IdleArgs) -> ExitCode {
    let common = &args.common;
    let spec = Spec::fixed(args.ping.max(1) as usize);
    let load = Load::Idle {
        hold: args.hold,
        ping: args.ping > 0,
    };
    let prepared = match Prepared::new(common, spec, 1, load, args.drain_timeout) {
        Ok(p) => p,
        Err(e) => return usage(&e),
    };
    let rss_before = match args.server_pid.map(os::resident_memory).transpose() {
        Ok(rss) => rss,
        Err(e) => {
            eprintln!("iocp-load: cannot read the server's memory: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shares = prepared.shares();
    let progress = Progress::new(common.quiet);
    let shared = Shared::new();
    let pattern = Pattern::new();
    let settings = &prepared.settings;

    let mut rss_after = None;
    let report = std::thread::scope(|s| {
        let handles = spawn(s, settings, &shared, &pattern, &shares);
        if wait_connected(common, &shared, prepared.threads, &progress) {
            let t0 = shared.start();
            let hold_ms = args.hold.as_millis() as u64;
            progress.timed("hold", args.hold);
            while shared.held.load(Relaxed) < prepared.threads {
                let now = shared.now();
                progress.set(
                    (now.saturating_sub(t0) / 1_000_000).min(hold_ms),
                    format!(
                        "{} open, {} closed by the server",
                        group(shared.open.load(Relaxed)),
                        shared.closed_by_server.load(Relaxed)
                    ),
                );
                std::thread::sleep(TICK);
            }
            // Every worker is at the end of its hold, its connections still open.
            rss_after = args.server_pid.map(os::resident_memory);
            shared.release.store(true, Relaxed);
            progress.set_prefix("closing");
        }
        shared.release.store(true, Relaxed);
        join(handles)
    });
    progress.clear();
    let mut report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("iocp-load: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rss = match (args.server_pid, rss_before, rss_after) {
        (Some(pid), Some(before), Some(Ok(after))) => Some((pid, before, after)),
        (_, _, Some(Err(e))) => {
            report.errors.push(format!(
                "cannot read the server's memory after the hold: {e}"
            ));
            None
        }
        _ => None,
    };
    let run = prepared.run("idle");
    let idle = report::Idle {
        hold: args.hold,
        ping: args.ping,
        rss,
    };
    let failures = report::failures(&run, &report, args.ping > 0);
    let text = report::idle_text(&run, &idle, &report);
    let json = common
        .json
        .then(|| report::idle_json(&run, &idle, &report, &failures));
    finish(&text, json, &report, &failures)
}

/// What is worked out before the workers start.
struct Prepared {
    settings: Settings,
    threads: u32,
    connections: u32,
    addr: String,
    max_connect_errors: f64,
}

impl Prepared {
    fn new(
        common: &Common,
        spec: Spec,
        pipeline: u32,
        load: Load,
        drain_timeout: Duration,
    ) -> Result<Prepared, String> {
        if common.connections == 0 {
            return Err("--connections must be at least 1".to_owned());
        }
        if !(common.connect_rate.is_finite() && common.connect_rate > 0.0) {
            return Err("--connect-rate must be a positive number".to_owned());
        }
        if common.threads == 0 {
            return Err("--threads must be at least 1".to_owned());
        }
        if common.recv_buffers.is_some_and(|n| !n.is_power_of_two()) {
            return Err("--recv-buffers must be a power of two".to_owned());
        }
        let threads = common.threads.min(common.connections);
        let target = Target::new(
            common.addr,
            common.connections,
            common.source_addrs,
            common.connect_timeout,
        )?;
        raise_fd_limit(common);
        let mut driver = iocp_driver::Config {
            backend: common.backend,
            ..iocp_driver::Config::default()
        };
        if let Some(n) = common.recv_buffers {
            driver.recv_buffer_count = n;
        }
        Ok(Prepared {
            settings: Settings {
                target,
                driver,
                connect_rate: common.connect_rate / f64::from(threads),
                spec,
                pipeline: pipeline as usize,
                load,
                drain_timeout,
            },
            threads,
            connections: common.connections,
            addr: common.addr.to_string(),
            max_connect_errors: common.max_connect_errors,
        })
    }

    /// Connection `k` goes to thread `k % threads`.
    fn shares(&self) -> Vec<Share> {
        (0..self.threads)
            .map(|t| Share {
                conns: (t..self.connections)
                    .step_by(self.threads as usize)
                    .collect(),
                quotas: Vec::new(),
            })
            .collect()
    }

    fn run(&self, command: &'static str) -> report::Run {
        report::Run {
            command,
            addr: self.addr.clone(),
            threads: self.threads,
            connections: self.connections,
            max_connect_errors: self.max_connect_errors,
        }
    }
}

/// Raises the open-file limit as far as the connections need and the hard limit allows
/// (`iocp_driver::raise_open_file_limit`), and says so when it is not enough.
fn raise_fd_limit(common: &Common) {
    let needed = u64::from(common.connections) + SPARE_FDS + 4 * u64::from(common.threads);
    let raised = iocp_driver::open_file_limits().and_then(|(was, hard)| {
        let soft = iocp_driver::raise_open_file_limit(needed)?;
        Ok(Limit { soft, hard, was })
    });
    match raised {
        Ok(limit) => {
            if limit.soft < needed {
                eprintln!(
                    "iocp-load: warning: the open-file limit (RLIMIT_NOFILE) is {} (hard limit \
                     {}), below the {needed} descriptors {} connections need: connects past \
                     about {} will fail with EMFILE (raise the hard limit, e.g. `ulimit -Hn`, as \
                     root)",
                    limit.soft,
                    limit.hard,
                    common.connections,
                    limit.soft.saturating_sub(SPARE_FDS)
                );
            } else if limit.soft > limit.was && !common.quiet {
                eprintln!(
                    "iocp-load: raised the open-file limit (RLIMIT_NOFILE) from {} to {}",
                    limit.was, limit.soft
                );
            }
        }
        Err(e) => eprintln!("iocp-load: warning: cannot raise the open-file limit: {e}"),
    }
}

/// What became of the open-file limit.
struct Limit {
    /// The soft limit now in force.
    soft: u64,
    /// The hard limit (the most the soft limit can be raised to without privileges).
    hard: u64,
    /// The soft limit before it was raised.
    was: u64,
}

type Handles<'scope> = Vec<std::thread::ScopedJoinHandle<'scope, Report>>;

fn spawn<'scope, 'env>(
    s: &'scope std::thread::Scope<'scope, 'env>,
    settings: &'env Settings,
    shared: &'env Shared,
    pattern: &'env Pattern,
    shares: &'env [Share],
) -> Handles<'scope> {
    shares
        .iter()
        .enumerate()
        .map(|(t, share)| {
            std::thread::Builder::new()
                .name(format!("iocp-load-{t}"))
                .spawn_scoped(s, move || {
                    Worker::new(settings, shared, pattern, share).run()
                })
                .expect("cannot start a client thread")
        })
        .collect()
}

/// Shows the connect progress until every worker has opened its connections; then checks the
/// connect failure rate. Returns whether to go on (or else tells the workers to stop).
fn wait_connected(common: &Common, shared: &Shared, threads: u32, progress: &Progress) -> bool {
    let total = u64::from(common.connections);
    progress.step("connect", total);
    while shared.ready.load(Relaxed) < threads {
        let errors = shared.connect_errors.load(Relaxed);
        progress.set(
            shared.connected.load(Relaxed) + errors,
            format!("{errors} errors"),
        );
        std::thread::sleep(TICK / 4);
    }
    let connected = shared.connected.load(Relaxed);
    let errors = shared.connect_errors.load(Relaxed);
    let pct = 100.0 * errors as f64 / total as f64;
    if connected == 0 || pct > common.max_connect_errors {
        progress.println(&format!(
            "iocp-load: {errors} of {total} connects failed: stopping"
        ));
        shared.abort.store(true, Relaxed);
        return false;
    }
    if !common.quiet && errors > 0 {
        progress.println(&format!(
            "iocp-load: {errors} of {total} connects failed ({pct:.2} %), within --max-connect-errors"
        ));
    }
    true
}

/// Joins the workers and merges their reports.
fn join(handles: Handles<'_>) -> Result<Report, String> {
    let mut merged: Option<Report> = None;
    let mut panicked = false;
    for handle in handles {
        match handle.join() {
            Ok(r) => match &mut merged {
                Some(m) => m.merge(r),
                None => merged = Some(r),
            },
            Err(_) => panicked = true,
        }
    }
    if panicked {
        return Err("a client thread panicked".to_owned());
    }
    merged.ok_or_else(|| "no client thread ran".to_owned())
}

/// Prints the summary and the verdict; the exit status.
fn finish(
    text: &str,
    json: Option<serde_json::Value>,
    report: &Report,
    failures: &[String],
) -> ExitCode {
    match json {
        Some(json) => {
            eprint!("{text}");
            println!("{json}");
        }
        None => print!("{text}"),
    }
    if let Some(why) = &report.fallback {
        eprintln!("iocp-load: note: not on io_uring: {why}");
    }
    if failures.is_empty() {
        return ExitCode::SUCCESS;
    }
    for line in &report.errors {
        eprintln!("iocp-load: {line}");
    }
    if report.errors_not_shown > 0 {
        eprintln!(
            "iocp-load: ... and {} more errors like these",
            report.errors_not_shown
        );
    }
    for why in failures {
        eprintln!("iocp-load: FAILED: {why}");
    }
    ExitCode::FAILURE
}

fn usage(message: &str) -> ExitCode {
    eprintln!("iocp-load: {message}");
    ExitCode::from(2)
}
