//! The command line: `iocp-server [echo|chat|users]`. Without a subcommand it runs the echo
//! server with its defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, FromArgMatches, Parser, Subcommand, ValueEnum};
use iocp_packet::{BadPacket, QueueOptions, WhenFull};
use iocp_server::{BackendChoice, Config, Server};

use crate::chat::{ChatConfig, ChatServer};
use crate::echo::Echo;
use crate::metrics::server::ServerCollector;
use crate::metrics::{Metrics, MetricsServer};
use crate::run::{catch_signals, report_stats, watch_signals};
use crate::users::{DEFAULT_DB, UsersArgs};

/// `iocp-server`.
#[derive(Parser)]
#[command(
    name = "iocp-server",
    version,
    about = "The IOCP game server of the tutorial, on io_uring / IOCP / epoll",
    long_about = "The IOCP game server of the tutorial, on io_uring (Linux), IOCP (Windows) or \
                  epoll/kqueue. Without a subcommand it runs the echo server with its defaults.\n\n\
                  Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) for more."
)]
pub struct Cli {
    /// What to run (default: echo).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Log lines as text (coloured only on a terminal, and not with NO_COLOR) or as one JSON
    /// object each, for log shippers.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (timestamp, level, target, fields).
    Json,
}

/// The subcommands.
#[derive(Subcommand)]
pub enum Command {
    /// Echo every received byte back to its sender (the seed's server).
    Echo(EchoArgs),
    /// The tutorial's chat server: login, rooms, chat (protocol in docs/protocol.md).
    Chat(ChatArgs),
    /// Manage the chat server's accounts: add, remove, list.
    Users(UsersArgs),
    /// The configuration file: `config print [echo|chat] [--config FILE] [FLAGS]` prints the
    /// effective configuration (file and flags together) as a file that gives the same.
    Config(ConfigArgs),
}

/// `iocp-server config`.
#[derive(Args, Clone, Debug)]
pub struct ConfigArgs {
    /// What to do with the configuration.
    #[command(subcommand)]
    pub command: ConfigCommand,
}

/// `iocp-server config ...`.
#[derive(Subcommand, Clone, Debug)]
pub enum ConfigCommand {
    /// Print the effective configuration of `echo` (the default) or `chat`, as TOML.
    Print {
        /// The server whose configuration to print, with its flags (`--config FILE` among them).
        #[command(subcommand)]
        server: Option<ServerCommand>,
    },
}

/// A server to run or to print the configuration of.
#[derive(Subcommand, Clone, Debug)]
pub enum ServerCommand {
    /// The echo server.
    Echo(EchoArgs),
    /// The chat server.
    Chat(ChatArgs),
}

/// Settings of every server.
#[derive(Args, Clone, Debug)]
pub struct ServerArgs {
    /// Read settings from this TOML file (keys as the flags are spelled, without `--`; see
    /// `iocp-server config print`). Flags given on the command line override the file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9100; port 0: any free
    /// port, logged) [default: off].
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:11021")]
    pub addr: SocketAddr,
    /// Worker threads, each with its own completion port [default: number of cores].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: Option<u32>,
    /// Pin worker n to the n-th CPU the process may use (for a server with its cores to itself).
    #[arg(long, num_args = 0..=1, require_equals = true, default_value_t = false,
          default_missing_value = "true", action = clap::ArgAction::Set, value_name = "BOOL")]
    pub pin_workers: bool,
    /// Session slots allocated at start; connections beyond them are refused. The server
    /// refuses to start if the table would not fit in the memory available.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=100_000_000))]
    pub max_sessions: u32,
    /// Bytes a session may have queued for sending before it is disconnected as a slow reader
    /// (at least a page: a smaller limit would cut off every client).
    #[arg(long, default_value_t = 4 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(4096..=(1 << 30)))]
    pub send_queue_limit: u64,
    /// Print a one-line summary of the statistics every this many seconds (0: never).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub stats_interval: u64,
    /// Completion backend: auto (io_uring, else poll), uring, poll, iocp.
    #[arg(long, default_value = "auto")]
    pub backend: BackendChoice,
    /// Seconds a closing session (and shutdown) may spend flushing its queue (at most an hour).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub linger: u64,
    /// Close a session from which nothing arrived for this many seconds (0: never; at most a
    /// week).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=604_800))]
    pub idle_timeout: u64,
    /// TCP keepalive probes after this many seconds without traffic, so that peers whose
    /// machine vanished are found (0: off; at most 32,767, the kernel's limit) [default: off
    /// for echo, 60 for chat].
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=32_767))]
    pub tcp_keepalive: Option<u64>,
}

/// `iocp-server echo`.
#[derive(Args, Clone, Debug)]
pub struct EchoArgs {
    /// Server settings.
    #[command(flatten)]
    pub server: ServerArgs,
    /// Log every received message with its session index, as the seed does (costs throughput).
    #[arg(long, num_args = 0..=1, require_equals = true, default_value_t = false,
          default_missing_value = "true", action = clap::ArgAction::Set, value_name = "BOOL")]
    pub log_each: bool,
}

/// `iocp-server chat`.
#[derive(Args, Clone, Debug)]
pub struct ChatArgs {
    /// Server settings.
    #[command(flatten)]
    pub server: ServerArgs,
    /// Rooms, numbered from 0.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rooms: u32,
    /// Members a room holds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub room_capacity: u32,
    /// The account file (redb); created empty if missing. Add users with `iocp-server users add`.
    /// Not used with `--engine redis` (accounts are in Redis then).
    #[arg(long, default_value = DEFAULT_DB)]
    pub db: PathBuf,
    /// Where logins (presence) and rooms live: `memory` (this process; accounts in `--db`) or
    /// `redis` (shared by every instance on the same Redis; accounts in Redis too).
    #[arg(long, value_enum, default_value = "memory")]
    pub engine: EngineArg,
    /// With `--engine redis`: `redis://HOST:PORT` of the Redis; several: seed nodes of a Redis
    /// Cluster.
    #[arg(long = "redis", value_name = "URL")]
    pub redis: Vec<String>,
    /// With `--engine redis`: seconds an instance that died keeps its users logged in and in
    /// their rooms (each instance refreshes its own every third of it).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub presence_ttl: u64,
    /// Threads checking passwords (Argon2id), off the logic thread.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub login_threads: u32,
    /// Logins that may wait for a password check; more are answered LOGIN_SERVER_BUSY.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub login_queue: u64,
    /// Events the logic thread's queue holds (at least 64 with `--when-full disconnect`, so
    /// that an ordinary burst does not cut sessions off).
    #[arg(long, default_value_t = 16 * 1024, value_parser = clap::value_parser!(u64).range(1..=16_777_216))]
    pub logic_queue: u64,
    /// When the logic queue is full: `wait` (the I/O worker waits; nothing is dropped) or
    /// `disconnect` (the session whose packet does not fit is closed).
    #[arg(long, value_enum, default_value = "wait")]
    pub when_full: WhenFullArg,
    /// An unknown packet id or a malformed packet: `close` its session, or `ignore` the packet.
    #[arg(long, value_enum, default_value = "close")]
    pub bad_packet: BadPacketArg,
    /// Close a connection that has not logged in within this many seconds (0: never).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub login_timeout: u64,
    /// Failed logins of one account (from anywhere) before it backs off: 1 s, doubling with
    /// each further failure; a login meanwhile gets LOGIN_TOO_MANY_ATTEMPTS without a check.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub login_account_failures: u32,
    /// Failed logins from one address (any account) before it backs off likewise.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub login_addr_failures: u32,
    /// Password checks one address may have waiting or running at once; more logins from it
    /// get LOGIN_TOO_MANY_ATTEMPTS at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub login_addr_pending: u32,
    /// The longest login back-off, in seconds.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub login_backoff_max: u64,
    /// Check this often (seconds) that the logged-in users' accounts still exist: a user removed
    /// with `users remove` loses its session (0: never).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub account_check: u64,
}

/// `Some(secs)` unless 0.
fn seconds(secs: u64) -> Option<Duration> {
    (secs > 0).then(|| Duration::from_secs(secs))
}

/// TCP keepalive of the chat server unless `--tcp-keepalive` says otherwise: its client sends
/// no heartbeat, so a member whose machine vanished is found this way.
const CHAT_KEEPALIVE_SECS: u64 = 60;

/// The chat engine on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EngineArg {
    /// In this process.
    Memory,
    /// In Redis.
    Redis,
}

/// [`WhenFull`] on the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum WhenFullArg {
    /// [`WhenFull::Wait`].
    Wait,
    /// [`WhenFull::Disconnect`].
    Disconnect,
}

/// [`BadPacket`] on the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum BadPacketArg {
    /// [`BadPacket::Close`].
    Close,
    /// [`BadPacket::Ignore`].
    Ignore,
}

impl ServerArgs {
    /// The server configuration these flags describe; TCP keepalive after `keepalive` seconds
    /// unless the flag says otherwise.
    pub fn config(&self, keepalive: u64) -> Config {
        let mut config = Config {
            addr: self.addr,
            max_sessions: self.max_sessions,
            send_queue_limit: self.send_queue_limit as usize,
            backend: self.backend,
            linger: Duration::from_secs(self.linger),
            pin_workers: self.pin_workers,
            idle_timeout: seconds(self.idle_timeout),
            tcp_keepalive: seconds(self.tcp_keepalive.unwrap_or(keepalive)),
            ..Config::default()
        };
        if let Some(workers) = self.workers {
            config.workers = workers as usize;
        }
        config
    }
}

impl ChatArgs {
    /// The chat configuration these flags describe.
    pub fn config(&self) -> ChatConfig {
        ChatConfig {
            server: self.server.config(CHAT_KEEPALIVE_SECS),
            login_timeout: seconds(self.login_timeout),
            account_check: seconds(self.account_check),
            throttle: crate::chat::ThrottleConfig {
                account_failures: self.login_account_failures,
                addr_failures: self.login_addr_failures,
                addr_pending: self.login_addr_pending,
                max_backoff: Duration::from_secs(self.login_backoff_max),
            },
            engine: crate::chat::EngineConfig::Memory,
            rooms: self.rooms,
            room_capacity: self.room_capacity,
            login_threads: self.login_threads as usize,
            login_queue: self.login_queue as usize,
            queue: QueueOptions {
                capacity: self.logic_queue as usize,
                when_full: match self.when_full {
                    WhenFullArg::Wait => WhenFull::Wait,
                    WhenFullArg::Disconnect => WhenFull::Disconnect,
                },
                ..QueueOptions::default()
            },
            bad_packet: match self.bad_packet {
                BadPacketArg::Close => BadPacket::Close,
                BadPacketArg::Ignore => BadPacket::Ignore,
            },
        }
    }
}

/// The binary's entry point.
pub fn main() -> ExitCode {
    use std::io::IsTerminal;
    let parsed = match crate::config_file::parse_args(std::env::args_os()) {
        Ok(parsed) => parsed,
        Err(crate::config_file::ArgsError::Cli(e)) => e.exit(),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::from_arg_matches(&parsed.matches).expect("parsed once already");
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => {
            // Colour only for a person at a terminal (and not with NO_COLOR): a log file or a
            // journal gets plain text.
            let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            logs.with_ansi(colour).init();
        }
    }
    // A panic is logged as one line; where the server catches it (a handler's, a damaged
    // account file's), it costs what it concerns only, and says so in its own line.
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        tracing::error!(
            "thread {} panicked: {info}",
            thread.name().unwrap_or("unnamed")
        );
    }));

    let command = cli.command.unwrap_or_else(|| {
        let defaults = Cli::parse_from(["iocp-server", "echo"]);
        defaults.command.expect("echo parses")
    });
    match command {
        Command::Echo(args) => run_echo(&args),
        Command::Chat(args) => run_chat(&args),
        Command::Users(args) => crate::users::run(&args),
        Command::Config(ConfigArgs {
            command: ConfigCommand::Print { server },
        }) => {
            print!(
                "{}",
                crate::config_file::print(&parsed, |key| effective(server.as_ref(), key))
            );
            ExitCode::SUCCESS
        }
    }
}

/// Starts the metrics endpoint (`--metrics`), if asked for, with the server's metrics and what
/// `more` adds. A failure is logged.
fn serve_metrics(
    args: &ServerArgs,
    server: &Server,
    more: impl FnOnce(&mut Metrics),
) -> Result<Option<MetricsServer>, ()> {
    let Some(addr) = args.metrics else {
        return Ok(None);
    };
    let mut metrics = Metrics::new();
    metrics.register_collector(ServerCollector::new(
        server.handle(),
        server.backend(),
        args.max_sessions,
    ));
    more(&mut metrics);
    match MetricsServer::start(addr, metrics) {
        Ok(endpoint) => {
            tracing::info!("metrics on http://{}/metrics", endpoint.local_addr());
            Ok(Some(endpoint))
        }
        Err(e) => {
            tracing::error!("metrics endpoint on {addr}: {e}");
            Err(())
        }
    }
}

/// What a setting that is not set comes to, for `config print`.
fn effective(server: Option<&ServerCommand>, key: &str) -> Option<String> {
    let (args, keepalive) = match server {
        Some(ServerCommand::Chat(chat)) => (Some(&chat.server), CHAT_KEEPALIVE_SECS),
        Some(ServerCommand::Echo(echo)) => (Some(&echo.server), 0),
        None => (None, 0),
    };
    let config = args.map(|a| a.config(keepalive)).unwrap_or_default();
    match key {
        "workers" => Some(format!("{} here: the number of cores", config.workers)),
        "tcp-keepalive" if keepalive > 0 => Some(format!("{keepalive} for chat")),
        "tcp-keepalive" => Some("off for echo".into()),
        "metrics" => Some("no metrics endpoint".into()),
        "config" => None,
        _ => None,
    }
}

fn run_echo(args: &EchoArgs) -> ExitCode {
    let signals = catch_signals();
    let server = match Server::start(
        args.server.config(0),
        Echo {
            log_each: args.log_each,
        },
    ) {
        Ok(server) => server,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let handle = server.handle();
    let Ok(metrics) = serve_metrics(&args.server, &server, |_| {}) else {
        handle.shutdown();
        let _ = server.join();
        return ExitCode::FAILURE;
    };
    watch_signals(signals, handle.clone());
    report_stats(&handle, args.server.stats_interval, || None);
    let joined = server.join();
    drop(metrics);
    match joined {
        Ok(()) => {
            tracing::info!("stopped: {}", handle.stats());
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn run_chat(args: &ChatArgs) -> ExitCode {
    if matches!(args.when_full, WhenFullArg::Disconnect) && args.logic_queue < 64 {
        tracing::error!(
            "--logic-queue {} with --when-full disconnect: at least 64, or an ordinary burst of \
             packets would cut sessions off",
            args.logic_queue
        );
        return ExitCode::FAILURE;
    }
    let mut config = args.config();
    let redis = match args.engine {
        EngineArg::Memory => None,
        EngineArg::Redis => {
            if args.redis.is_empty() {
                tracing::error!("--engine redis needs --redis URL (one, or a cluster's seeds)");
                return ExitCode::FAILURE;
            }
            let mut redis_config = crate::redis::RedisConfig::new(args.redis.clone());
            redis_config.presence_ttl = Duration::from_secs(args.presence_ttl);
            // Started even if Redis is away: logins are answered busy until it is reached.
            match crate::redis::Redis::connect(redis_config, Duration::from_secs(5), false) {
                Ok(redis) => Some(redis),
                Err(e) => {
                    tracing::error!("{e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    let accounts = match &redis {
        Some(redis) => {
            config.engine = crate::chat::EngineConfig::Redis(redis.clone());
            iocp_accounts::Accounts::new(std::sync::Arc::new(crate::redis::RedisStore::new(
                redis.clone(),
            )))
        }
        None => match crate::users::chat_accounts(&args.db) {
            Ok(accounts) => accounts,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        },
    };
    // A missing file is made once the port is bound.
    let exists = redis.is_some() || args.db.exists();
    if exists && redis.is_none() {
        match accounts.user_ids() {
            Ok(ids) if ids.is_empty() => tracing::warn!(
                "{}: no accounts yet: add one with `iocp-server users add NAME --db {}`",
                args.db.display(),
                args.db.display()
            ),
            Ok(ids) => tracing::info!("{}: {} accounts", args.db.display(), ids.len()),
            Err(e) => tracing::warn!("{e}"),
        }
    }
    let signals = catch_signals();
    let server = match ChatServer::start(config, accounts) {
        Ok(server) => server,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if !exists {
        // Bound and listening: now the account file may be made.
        match crate::users::open_accounts(&args.db) {
            Ok(_) => tracing::info!("{}: created (no accounts yet)", args.db.display()),
            Err(e) => tracing::error!("{e}"),
        }
    }
    let handle = server.handle();
    let Ok(metrics) = serve_metrics(&args.server, server.server(), |m| {
        crate::metrics::chat::register(m, &server);
        if let Some(redis) = &redis {
            redis.metrics().register(m.registry());
        }
    }) else {
        handle.shutdown();
        let _ = server.join();
        return ExitCode::FAILURE;
    };
    watch_signals(signals, handle.clone());
    let stats = server.stats_source();
    let mut last = stats();
    let interval = args.server.stats_interval.max(1);
    report_stats(&handle, args.server.stats_interval, || {
        let now = stats();
        let line = format!(
            "{now} | {} chats/s, {} notifies/s",
            (now.chats - last.chats) / interval,
            (now.notifies - last.notifies) / interval
        );
        last = now;
        Some(line)
    });
    let joined = server.join();
    drop(metrics);
    match joined {
        Ok(()) => {
            tracing::info!("stopped: {} | {}", handle.stats(), stats());
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn no_subcommand_is_echo_on_the_tutorial_port() {
        let cli = Cli::parse_from(["iocp-server"]);
        assert!(cli.command.is_none());
        let Some(Command::Echo(args)) = Cli::parse_from(["iocp-server", "echo"]).command else {
            panic!("echo");
        };
        assert_eq!(args.server.addr, "127.0.0.1:11021".parse().unwrap());
        let Some(Command::Chat(args)) = Cli::parse_from(["iocp-server", "chat"]).command else {
            panic!("chat");
        };
        assert_eq!(args.server.addr, "127.0.0.1:11021".parse().unwrap());
        assert_eq!(args.db, PathBuf::from(DEFAULT_DB));
    }
}
