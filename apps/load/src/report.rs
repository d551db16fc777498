//! The results: a summary for people, one JSON object for scripts, and the verdict.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::os::CpuTime;
use crate::worker::Report;

/// The percentiles reported, as (label, quantile).
const PERCENTILES: [(&str, f64); 4] = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99_9", 0.999)];

/// What the run was asked to do, for the headline and the JSON object.
pub struct Run {
    /// `echo` or `idle`.
    pub command: &'static str,
    /// Server address.
    pub addr: String,
    /// Client threads.
    pub threads: u32,
    /// Connections asked for.
    pub connections: u32,
    /// Percentage of failed connects tolerated.
    pub max_connect_errors: f64,
}

/// Measurements of an `echo` run.
pub struct Echo {
    /// Bytes per message (the smallest, with mixed sizes).
    pub size: u32,
    /// The largest message (`size` unless sizes are mixed).
    pub size_max: u32,
    /// Messages in flight per connection.
    pub pipeline: u32,
    /// Offered load, open loop.
    pub rate: Option<f64>,
    /// Warm-up.
    pub warmup: Duration,
    /// The measurement window.
    pub elapsed: Duration,
    /// CPU time of the client in the window.
    pub cpu: CpuTime,
}

/// Measurements of an `idle` run.
pub struct Idle {
    /// How long the connections were held.
    pub hold: Duration,
    /// Ping size (0: no ping).
    pub ping: u32,
    /// The server's pid and resident memory before and after opening the connections.
    pub rss: Option<(u32, u64, u64)>,
}

/// Why the run failed, if it did (each a line for stderr).
pub fn failures(run: &Run, report: &Report, need_messages: bool) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(e) = &report.driver_error {
        out.push(e.clone());
    }
    let attempted = report.connected + report.connect_errors;
    if report.connect_errors > 0 {
        let pct = 100.0 * report.connect_errors as f64 / attempted.max(1) as f64;
        if pct > run.max_connect_errors || report.connected == 0 {
            out.push(format!(
                "{} of {attempted} connects failed ({pct:.2} % > {} %){}",
                report.connect_errors,
                run.max_connect_errors,
                report
                    .first_connect_error
                    .as_ref()
                    .map(|e| format!("; first: {e}"))
                    .unwrap_or_default()
            ));
        }
    }
    if report.verify_errors > 0 {
        out.push(format!(
            "{} connection(s) echoed wrong bytes (verification errors)",
            report.verify_errors
        ));
    }
    if report.lost > 0 {
        out.push(format!("{} message(s) were never echoed", report.lost));
    }
    if report.closed_by_server > 0 {
        out.push(format!(
            "the server closed {} connection(s)",
            report.closed_by_server
        ));
    }
    if need_messages && report.messages == 0 && out.is_empty() {
        out.push("no message was measured".to_owned());
    }
    out
}

/// The human summary of an `echo` run.
pub fn echo_text(run: &Run, echo: &Echo, report: &Report) -> String {
    let mut s = String::new();
    let secs = echo.elapsed.as_secs_f64().max(1e-9);
    let load = match echo.rate {
        Some(rate) => format!("open loop at {} msg/s", group(rate as u64)),
        None => "closed loop".to_owned(),
    };
    let _ = writeln!(
        s,
        "iocp-load echo {} on {} ({} thread{}): {} connections, {} B messages, pipeline {}, {load}",
        run.addr,
        backend(report),
        run.threads,
        if run.threads == 1 { "" } else { "s" },
        group(u64::from(run.connections)),
        if echo.size_max > echo.size {
            format!(
                "{}–{}",
                group(u64::from(echo.size)),
                group(u64::from(echo.size_max))
            )
        } else {
            group(u64::from(echo.size))
        },
        echo.pipeline,
    );
    let _ = writeln!(
        s,
        "  connections   {} open, {} connect errors, {} closed by the server",
        group(report.connected),
        group(report.connect_errors),
        group(report.closed_by_server)
    );
    let mib = report.bytes as f64 / (1024.0 * 1024.0);
    let _ = writeln!(
        s,
        "  throughput    {} messages in {:.2} s: {} msg/s, {:.1} MiB/s each way",
        group(report.messages),
        secs,
        group((report.messages as f64 / secs) as u64),
        mib / secs
    );
    let achieved = report.messages as f64 / secs;
    if let Some(rate) = echo.rate.filter(|&rate| achieved < 0.95 * rate) {
        let _ = writeln!(
            s,
            "  behind        offered {} msg/s, achieved {}: latency includes the wait for the \
             late messages",
            group(rate as u64),
            group(achieved as u64)
        );
    }
    let _ = writeln!(s, "  latency       {}", latency_text(&report.latency));
    let cpu = echo.cpu.total().as_secs_f64();
    let per_msg = if report.messages > 0 {
        format!("{:.2} µs/msg", cpu * 1e6 / report.messages as f64)
    } else {
        "- µs/msg".to_owned()
    };
    let _ = writeln!(
        s,
        "  client cpu    {:.1} % of one core (user {:.1} %, sys {:.1} %), {per_msg}",
        100.0 * cpu / secs,
        100.0 * echo.cpu.user.as_secs_f64() / secs,
        100.0 * echo.cpu.system.as_secs_f64() / secs,
    );
    let _ = write!(
        s,
        "  verification  {} messages, {} bytes checked byte by byte: ",
        group(report.verified_messages),
        group(report.verified_bytes),
    );
    if report.verify_errors == 0 && report.lost == 0 {
        let _ = writeln!(s, "no error");
    } else {
        let _ = writeln!(
            s,
            "FAILED: {} connection(s) with wrong bytes, {} message(s) never echoed",
            report.verify_errors, report.lost
        );
    }
    s
}

/// The JSON object of an `echo` run.
pub fn echo_json(run: &Run, echo: &Echo, report: &Report, failures: &[String]) -> Value {
    let secs = echo.elapsed.as_secs_f64().max(1e-9);
    let cpu = echo.cpu.total().as_secs_f64();
    json!({
        "command": run.command,
        "ok": failures.is_empty(),
        "failures": failures,
        "addr": run.addr,
        "backend": report.backend.map(|b| b.to_string()),
        "fallback": report.fallback,
        "threads": run.threads,
        "connections": run.connections,
        "connected": report.connected,
        "connect_errors": report.connect_errors,
        "closed_by_server": report.closed_by_server,
        "size": echo.size,
        "size_max": echo.size_max,
        "pipeline": echo.pipeline,
        "rate": echo.rate,
        "warmup_s": echo.warmup.as_secs_f64(),
        "elapsed_s": secs,
        "messages": report.messages,
        "bytes": report.bytes,
        "messages_per_s": report.messages as f64 / secs,
        "mib_per_s": report.bytes as f64 / (1024.0 * 1024.0) / secs,
        "latency_us": latency_json(&report.latency),
        "cpu": {
            "user_s": echo.cpu.user.as_secs_f64(),
            "system_s": echo.cpu.system.as_secs_f64(),
            "percent_of_core": 100.0 * cpu / secs,
            "us_per_message": (report.messages > 0).then(|| cpu * 1e6 / report.messages as f64),
        },
        "verified_messages": report.verified_messages,
        "verified_bytes": report.verified_bytes,
        "verify_errors": report.verify_errors,
        "lost_messages": report.lost,
        "errors": report.errors,
    })
}

/// The human summary of an `idle` run.
pub fn idle_text(run: &Run, idle: &Idle, report: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "iocp-load idle {} on {} ({} thread{}): {} connections held {:.1} s",
        run.addr,
        backend(report),
        run.threads,
        if run.threads == 1 { "" } else { "s" },
        group(u64::from(run.connections)),
        idle.hold.as_secs_f64(),
    );
    let _ = writeln!(
        s,
        "  connections   {} opened, {} connect errors, {} still open after the hold, {} closed by \
         the server",
        group(report.connected),
        group(report.connect_errors),
        group(report.open_after_hold),
        group(report.closed_by_server)
    );
    if let Some((pid, before, after)) = idle.rss {
        let _ = writeln!(
            s,
            "  server rss    pid {pid}: {} before, {} with the connections open: {} bytes per \
             connection",
            mib(before),
            mib(after),
            group(per_connection(before, after, report.open_after_hold))
        );
    }
    if idle.ping > 0 {
        let _ = writeln!(
            s,
            "  ping          {} of {} echoed and verified ({} B each); latency {}",
            group(report.messages),
            group(report.open_after_hold),
            idle.ping,
            latency_text(&report.latency)
        );
    }
    s
}

/// The JSON object of an `idle` run.
pub fn idle_json(run: &Run, idle: &Idle, report: &Report, failures: &[String]) -> Value {
    json!({
        "command": run.command,
        "ok": failures.is_empty(),
        "failures": failures,
        "addr": run.addr,
        "backend": report.backend.map(|b| b.to_string()),
        "fallback": report.fallback,
        "threads": run.threads,
        "connections": run.connections,
        "connected": report.connected,
        "connect_errors": report.connect_errors,
        "open_after_hold": report.open_after_hold,
        "closed_by_server": report.closed_by_server,
        "hold_s": idle.hold.as_secs_f64(),
        "server_rss": idle.rss.map(|(pid, before, after)| json!({
            "pid": pid,
            "before_bytes": before,
            "after_bytes": after,
            "per_connection_bytes": per_connection(before, after, report.open_after_hold),
        })),
        "ping": (idle.ping > 0).then(|| json!({
            "size": idle.ping,
            "echoed": report.messages,
            "latency_us": latency_json(&report.latency),
        })),
        "verify_errors": report.verify_errors,
        "lost_messages": report.lost,
        "errors": report.errors,
    })
}

fn per_connection(before: u64, after: u64, connections: u64) -> u64 {
    after.saturating_sub(before) / connections.max(1)
}

fn backend(report: &Report) -> String {
    match (&report.backend, &report.fallback) {
        (Some(b), Some(why)) => format!("{b} (fallback: {why})"),
        (Some(b), None) => b.to_string(),
        (None, _) => "no backend".to_owned(),
    }
}

fn latency_text(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "no samples".to_owned();
    }
    let mut s = String::new();
    for (label, q) in PERCENTILES {
        let _ = write!(
            s,
            "{} {}  ",
            label.replace('_', "."),
            ns(h.value_at_quantile(q))
        );
    }
    let _ = write!(s, "max {}  ({} samples)", ns(h.max()), group(h.len()));
    s
}

fn latency_json(h: &Histogram<u64>) -> Value {
    let us = |v: u64| v as f64 / 1e3;
    let mut m = serde_json::Map::new();
    for (label, q) in PERCENTILES {
        m.insert(label.to_owned(), json!(us(h.value_at_quantile(q))));
    }
    m.insert("max".to_owned(), json!(us(h.max())));
    m.insert("mean".to_owned(), json!(h.mean() / 1e3));
    m.insert("samples".to_owned(), json!(h.len()));
    Value::Object(m)
}

/// A duration in nanoseconds, in the unit that suits it.
fn ns(v: u64) -> String {
    match v {
        0..1_000 => format!("{v} ns"),
        1_000..1_000_000 => format!("{:.1} µs", v as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.2} ms", v as f64 / 1e6),
        _ => format!("{:.2} s", v as f64 / 1e9),
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// `1234567` as `1,234,567`.
pub fn group(v: u64) -> String {
    let digits = v.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1_234_567), "1,234,567");
        assert_eq!(ns(999), "999 ns");
        assert_eq!(ns(12_345), "12.3 µs");
        assert_eq!(ns(2_500_000), "2.50 ms");
    }
}
