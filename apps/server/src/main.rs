//! `iocp-server`: the tutorial's echo server (and, later, its chat server) on the iocp-server
//! library. `cargo run --release` starts the echo server on `127.0.0.1:11021`.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use iocp_server::{
    BackendChoice, CloseReason, Config, Context, Handler, Server, ServerHandle, SessionId,
};

#[derive(Parser)]
#[command(
    name = "iocp-server",
    version,
    about = "The IOCP game server of the tutorial, on io_uring / IOCP / epoll",
    long_about = "The IOCP game server of the tutorial, on io_uring (Linux), IOCP (Windows) or \
                  epoll/kqueue. Without a subcommand it runs the echo server with its defaults.\n\n\
                  Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) for more."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Echo every received byte back to its sender (the seed's server).
    Echo(EchoArgs),
}

#[derive(Args, Clone)]
struct ServerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:11021")]
    addr: SocketAddr,
    /// Worker threads, each with its own completion port [default: number of cores].
    #[arg(long)]
    workers: Option<usize>,
    /// Session slots allocated at start; connections beyond them are refused.
    #[arg(long, default_value_t = 10_000)]
    max_sessions: u32,
    /// Bytes a session may have queued for sending before it is disconnected as a slow reader.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    send_queue_limit: usize,
    /// Print a one-line summary of the statistics every this many seconds (0: never).
    #[arg(long, default_value_t = 0)]
    stats_interval: u64,
    /// Completion backend: auto (io_uring, else poll), uring, poll, iocp.
    #[arg(long, default_value = "auto")]
    backend: BackendChoice,
    /// Seconds a closing session (and shutdown) may spend flushing its queue.
    #[arg(long, default_value_t = 5)]
    linger: u64,
}

#[derive(Args, Clone)]
struct EchoArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Log every received message with its session index, as the seed does (costs throughput).
    #[arg(long)]
    log_each: bool,
}

impl ServerArgs {
    fn config(&self) -> Config {
        let mut config = Config {
            addr: self.addr,
            max_sessions: self.max_sessions,
            send_queue_limit: self.send_queue_limit,
            backend: self.backend,
            linger: Duration::from_secs(self.linger),
            ..Config::default()
        };
        if let Some(workers) = self.workers {
            config.workers = workers;
        }
        config
    }
}

/// The seed's echo: send back what arrived.
struct Echo {
    log_each: bool,
}

impl Handler for Echo {
    fn on_connect(&self, _ctx: &mut Context<'_>, session: SessionId, peer: std::net::SocketAddr) {
        tracing::debug!("[connect] session {} from {peer}", session.index);
    }

    fn on_receive(&self, ctx: &mut Context<'_>, session: SessionId, data: &[u8]) {
        if self.log_each {
            tracing::info!(
                "[recv] session {}: {} bytes: {}",
                session.index,
                data.len(),
                String::from_utf8_lossy(data)
            );
        }
        // Errors cost only this session and are logged by the server.
        let _ = ctx.send(session, data);
    }

    fn on_close(&self, _ctx: &mut Context<'_>, session: SessionId, reason: CloseReason) {
        tracing::debug!("[close] session {}: {reason}", session.index);
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();

    let cli = Cli::parse();
    let command = cli.command.unwrap_or_else(|| {
        let defaults = Cli::parse_from(["iocp-server", "echo"]);
        defaults.command.expect("echo parses")
    });
    let Command::Echo(args) = command;
    let server = match Server::start(
        args.server.config(),
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
    if let Err(e) = watch_signals(handle.clone()) {
        tracing::warn!("signals are not handled (shut down with the API only): {e}");
    }
    report_stats(&handle, args.server.stats_interval);
    match server.join() {
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

/// Prints the statistics every `interval` seconds until shutdown starts.
fn report_stats(handle: &ServerHandle, interval: u64) {
    if interval == 0 {
        while !handle.wait_for_shutdown(Duration::from_secs(3600)) {}
        return;
    }
    let mut last = handle.stats();
    while !handle.wait_for_shutdown(Duration::from_secs(interval)) {
        let now = handle.stats();
        let rate = (now.messages_in - last.messages_in) / interval;
        tracing::info!("{now} | {rate} msgs/s in");
        last = now;
    }
}

/// SIGINT and SIGTERM start a graceful shutdown; a second one ends the process at once.
#[cfg(unix)]
fn watch_signals(handle: ServerHandle) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut seen = false;
            for signal in signals.forever() {
                if seen {
                    tracing::warn!("second signal {signal}: exiting now");
                    std::process::exit(130);
                }
                seen = true;
                tracing::info!(
                    "signal {signal}: shutting down (flushing for up to the linger time)"
                );
                handle.shutdown();
            }
        })?;
    Ok(())
}

#[cfg(not(unix))]
fn watch_signals(_handle: ServerHandle) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "no signal handling on this platform",
    ))
}
