//! `echo-tokio`: the minimal, typical tokio TCP echo server, as a baseline.
//!
//! One task per connection reads into its own 8 KiB buffer and writes the
//! bytes back with `write_all`. Runs on either the multi-thread runtime
//! (`--runtime mt`, `--workers N`) or the current-thread one (`--runtime ct`).
//! Prints `listening on ADDR` first on stdout; exits on SIGINT or SIGTERM.

use std::io;
use std::net::SocketAddr;
use std::num::NonZeroUsize;

use clap::{CommandFactory, Parser, ValueEnum};
use iocp_baselines::{ACCEPT_BACKOFF, DEFAULT_ADDR, accept_needs_backoff};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};

/// Which tokio runtime flavour to run on.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Runtime {
    /// Multi-thread, work-stealing runtime.
    Mt,
    /// Current-thread runtime: everything on the main thread.
    Ct,
}

/// Minimal tokio echo server (baseline).
#[derive(Debug, Parser)]
#[command(name = "echo-tokio", version)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = DEFAULT_ADDR)]
    addr: SocketAddr,
    /// Runtime flavour.
    #[arg(long, value_enum, default_value_t = Runtime::Mt)]
    runtime: Runtime,
    /// Worker threads for `--runtime mt` (default: number of cores).
    #[arg(long)]
    workers: Option<NonZeroUsize>,
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    if matches!(args.runtime, Runtime::Ct) && args.workers.is_some() {
        Args::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--workers only applies to --runtime mt",
            )
            .exit();
    }
    iocp_baselines::raise_nofile_limit_or_warn();

    let mut builder = match args.runtime {
        Runtime::Mt => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if let Some(n) = args.workers {
                b.worker_threads(n.get());
            }
            b
        }
        Runtime::Ct => tokio::runtime::Builder::new_current_thread(),
    };
    let rt = builder.enable_all().build()?;
    rt.block_on(serve(args.addr))?;
    // Connection tasks still blocked in `read` are dropped with the runtime.
    drop(rt);
    Ok(())
}

/// Accepts connections until SIGINT or SIGTERM arrives.
async fn serve(addr: SocketAddr) -> io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    println!("listening on {}", listener.local_addr()?);

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;

    loop {
        tokio::select! {
            res = listener.accept() => match res {
                Ok((socket, _peer)) => {
                    let _ = socket.set_nodelay(true);
                    tokio::spawn(echo(socket));
                }
                Err(e) if accept_needs_backoff(&e) => {
                    eprintln!("accept: {e}; backing off");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
                Err(e) => eprintln!("accept: {e}"),
            },
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    Ok(())
}

/// Echoes everything read from `socket` back to it until EOF or an error.
async fn echo(mut socket: TcpStream) {
    let mut buf = vec![0; 8192];
    loop {
        let n = match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if socket.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
