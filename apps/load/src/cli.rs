//! Command-line arguments.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use iocp_driver::BackendChoice;

/// Load generator for iocp-server: verifies every echoed byte, reports throughput and latency.
#[derive(Parser, Debug)]
#[command(
    name = "iocp-load",
    version,
    long_about = "Load generator for iocp-server.\n\n\
                  `echo` keeps messages in flight on many connections and checks every byte that \
                  comes back (a header with connection, sequence and send time, then a known \
                  pattern), then reports messages/s, MiB/s, latency percentiles and its own CPU \
                  use. `idle` opens and holds idle connections, to measure what an idle \
                  connection costs the server.\n\n\
                  The exit status is 1 when a byte was wrong, lost or reordered, when too many \
                  connections failed to open, or when the server closed connections."
)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The workloads.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Send messages and verify their echo, closed loop (`--pipeline` in flight per connection)
    /// or open loop (`--rate`).
    Echo(EchoArgs),
    /// Open connections, hold them idle, check that they stay open, close them.
    Idle(IdleArgs),
    /// Log users in to the chat server, join rooms, chat, and verify that every member of a room
    /// receives every notify of that room, in order.
    Chat(crate::chat::ChatArgs),
}

/// Settings shared by every workload.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:11021")]
    pub addr: SocketAddr,
    /// Connections to open.
    #[arg(long, short = 'c', default_value_t = 100)]
    pub connections: u32,
    /// Connections opened per second (all threads together).
    #[arg(long, default_value_t = 2000.0)]
    pub connect_rate: f64,
    /// Give up on a connect after this long.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Source addresses 127.0.0.1 ..= 127.0.0.N to spread connections over, round robin
    /// (0: one address per 25,000 connections, and no explicit bind below that). Loopback only.
    #[arg(long, default_value_t = 0)]
    pub source_addrs: u8,
    /// Percentage of failed connects above which the run fails.
    #[arg(long, default_value_t = 1.0)]
    pub max_connect_errors: f64,
    /// Client threads, each with its own completion port and its share of the connections.
    #[arg(long, short = 't', default_value_t = 1)]
    pub threads: u32,
    /// Completion backend: auto (io_uring, else poll), uring, poll.
    #[arg(long, default_value = "auto")]
    pub backend: BackendChoice,
    /// Receive buffers per thread (io_uring provided-buffer ring; a power of two).
    #[arg(long)]
    pub recv_buffers: Option<u16>,
    /// No progress bar and no notes on stderr.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Print the results as one JSON object on stdout (the summary goes to stderr).
    #[arg(long)]
    pub json: bool,
}

/// `iocp-load echo`.
#[derive(Args, Debug, Clone)]
pub struct EchoArgs {
    /// Bytes per message. Messages of 20 bytes and more carry a header (connection, sequence,
    /// send time); smaller ones are checked by their position in the stream.
    #[arg(long, short = 's', default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=(64 << 20)))]
    pub size: u32,
    /// Mixed sizes: each message has from `--size` to this many bytes (spread evenly, chosen per
    /// connection and sequence number, so that the checker knows each size). Needs `--size` of
    /// 20 or more.
    #[arg(long, value_parser = clap::value_parser!(u32).range(20..=(64 << 20)))]
    pub size_max: Option<u32>,
    /// Messages in flight per connection (with `--rate`: at most this many).
    #[arg(long, short = 'p', default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub pipeline: u32,
    /// How long to measure (after the warm-up) [default: 10s].
    #[arg(long, short = 'd', value_parser = parse_duration, conflicts_with = "messages")]
    pub duration: Option<Duration>,
    /// Measure this many messages (all connections together) instead of a duration.
    #[arg(long, short = 'n')]
    pub messages: Option<u64>,
    /// Offered load in messages per second, all connections together (open loop: latency is
    /// measured from when each message was due, so a stalled server is not hidden).
    #[arg(long, short = 'r')]
    pub rate: Option<f64>,
    /// Load before measuring [default: 1s with --duration, 0s with --messages].
    #[arg(long, value_parser = parse_duration)]
    pub warmup: Option<Duration>,
    /// How long to wait for the echo of the messages still in flight at the end, or for any
    /// progress with --messages, before counting them as lost.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Connection, threads and output settings.
    #[command(flatten)]
    pub common: Common,
}

/// `iocp-load idle`.
#[derive(Args, Debug, Clone)]
pub struct IdleArgs {
    /// How long to hold the connections once all are open.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub hold: Duration,
    /// PID of the server: its resident memory (VmRSS) is read before and after opening the
    /// connections, and the growth per connection printed.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// After the hold, send one message of this many bytes on each connection and verify its
    /// echo (0: do not).
    #[arg(long, default_value_t = 0)]
    pub ping: u32,
    /// How long to wait for the pings' echoes.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Connection, threads and output settings.
    #[command(flatten)]
    pub common: Common,
}

/// Parses `1.5s`, `500ms`, `250us`, `2m`, `1h`, or a number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 10s, 500ms, 2m)"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "ns" => value / 1e9,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{s}` (ns, us, ms, s, m, h)"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{s}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3 weeks").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
