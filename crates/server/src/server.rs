//! Starting, reaching and stopping the server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use iocp_driver::{Backend, Features};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::config::Config;
use crate::error::{Context as _, Error, Result};
use crate::handle::ServerHandle;
use crate::handler::Handler;
use crate::pool::Shared;
use crate::worker;

/// A running server: the listening socket, the session pool and the worker threads.
///
/// ```no_run
/// use iocp_server::{Config, Context, Handler, Server, SessionId};
///
/// struct Echo;
/// impl Handler for Echo {
///     type Session = ();
///     fn on_receive(&self, ctx: &mut Context<'_>, session: SessionId, data: &[u8]) {
///         let _ = ctx.send(session, data);
///     }
/// }
///
/// let server = Server::start(Config::default(), Echo)?;
/// println!("listening on {}", server.local_addr());
/// server.join()?;
/// # Ok::<(), iocp_server::Error>(())
/// ```
pub struct Server {
    handle: ServerHandle,
    threads: Vec<JoinHandle<Result<()>>>,
    local_addr: SocketAddr,
    backend: Backend,
    features: Features,
}

impl Server {
    /// Binds the listening socket, allocates the session pool and starts the worker threads (the
    /// seed's `Init`, `BindAndListen`, `CreateClient` and `CreateWorkerThread`).
    pub fn start<H: Handler>(config: Config, handler: H) -> Result<Server> {
        if config.workers == 0 || config.max_sessions == 0 || config.send_queue_limit == 0 {
            return Err(Error::Config(
                "workers, max_sessions and send_queue_limit must be at least 1".into(),
            ));
        }
        let table = session_table_bytes::<H::Session>(config.max_sessions);
        if let Some(available) = available_memory() {
            if table > available / 2 {
                return Err(Error::Config(format!(
                    "{} sessions would take {} MiB at start ({} B each), more than half of the \
                     {} MiB of memory available: lower max_sessions",
                    config.max_sessions,
                    table >> 20,
                    table / u64::from(config.max_sessions),
                    available >> 20
                )));
            }
        }
        tracing::debug!(
            "the session table takes {} KiB ({} sessions)",
            table >> 10,
            config.max_sessions
        );
        let workers = config.workers.min(config.max_sessions as usize);
        let descriptor_limit = raise_open_file_limit(config.max_sessions);
        let listener = bind(&config)?;
        let local_addr = listener
            .local_addr()
            .op("reading the listening address")?
            .as_socket()
            .expect("an inet socket has an inet address");

        let shared = Arc::new(Shared::new(config, workers));
        let handle = ServerHandle { shared };
        let handler = Arc::new(handler);

        let (ready_tx, ready_rx) = mpsc::channel();
        let mut threads = Vec::with_capacity(workers);
        for w in 0..workers {
            let listener = listener
                .try_clone()
                .op("duplicating the listening socket")?;
            let handle = handle.clone();
            let handler = handler.clone();
            let ready = ready_tx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("iocp-worker-{w}"))
                .spawn(move || worker::run(w, handle, handler, listener, ready))
                .op("spawning a worker thread")?;
            threads.push(thread);
        }
        drop(ready_tx);

        let mut started: Option<(Backend, Features)> = None;
        let mut failure = None;
        for _ in 0..workers {
            match ready_rx.recv() {
                Ok(Ok(info)) => {
                    started.get_or_insert(info);
                }
                Ok(Err(e)) => {
                    failure.get_or_insert(e);
                }
                Err(_) => {
                    failure
                        .get_or_insert(Error::WorkerFailed("a worker thread died at start".into()));
                }
            }
        }
        handle.shared.set_go(failure.is_none());
        if let Some(error) = failure {
            handle.shutdown();
            for t in threads {
                let _ = t.join();
            }
            return Err(error);
        }
        let (backend, features) = started.expect("at least one worker");
        if let Some(why) = &features.fallback {
            tracing::warn!("{why}");
        }
        tracing::info!(
            "listening on {local_addr}: {workers} workers, {} sessions, backend {backend} ({features})",
            handle.shared.config.max_sessions
        );
        if let Some(limit) = descriptor_limit {
            warn_open_file_limit(
                limit,
                handle.shared.config.max_sessions,
                handle.shared.slots.per_worker(),
                &features,
            );
        }
        Ok(Server {
            handle,
            threads,
            local_addr,
            backend,
            features,
        })
    }

    /// The address the server listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The backend the workers run on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// What the backend supports, and why it fell back if it did.
    pub fn features(&self) -> &Features {
        &self.features
    }

    /// A handle for other threads.
    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }

    /// Waits until every worker thread has ended (after [`ServerHandle::shutdown`]).
    pub fn join(self) -> Result<()> {
        let mut result = Ok(());
        for thread in self.threads {
            let r = thread
                .join()
                .unwrap_or_else(|_| Err(Error::WorkerFailed("a worker thread panicked".into())));
            if result.is_ok() {
                result = r;
            }
        }
        result
    }

    /// Shuts down gracefully and waits for the end.
    pub fn shutdown(self) -> Result<()> {
        self.handle.shutdown();
        self.join()
    }
}

/// Memory the session table takes at start, per slot: the slot table and free list, the
/// worker's record and the handler's state, the driver's connection and its backend's slot.
fn session_table_bytes<S>(max_sessions: u32) -> u64 {
    /// The driver's connection and its backend's per-slot state, at most.
    const DRIVER_PER_SLOT: u64 = 192;
    let per_slot = 8 + crate::local::RECORD_BYTES as u64 + size_of::<S>() as u64 + DRIVER_PER_SLOT;
    per_slot * u64::from(max_sessions)
}

/// The memory available to the process (Linux: `MemAvailable`), if known.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Descriptors the server needs besides one per session: listener, rings, wake-ups, logs.
const SPARE_DESCRIPTORS: u64 = 64;

/// Raises the descriptor limit so that `max_sessions` connections fit; returns the limit if the
/// hard limit does not allow that.
fn raise_open_file_limit(max_sessions: u32) -> Option<u64> {
    let wanted = u64::from(max_sessions) + SPARE_DESCRIPTORS;
    match iocp_driver::raise_open_file_limit(wanted) {
        Ok(limit) if limit < wanted => Some(limit),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!("reading the open file limit failed: {e}");
            None
        }
    }
}

/// Warns that the descriptor limit is below the sessions asked for, unless the connections do
/// not need descriptors: on io_uring they live in the rings' file tables, each of which may hold
/// up to the limit. Past it, connections are refused with `EMFILE` (accepting backs off).
fn warn_open_file_limit(limit: u64, max_sessions: u32, per_worker: u32, features: &Features) {
    if features.registered_files && u64::from(per_worker) + SPARE_DESCRIPTORS <= limit {
        tracing::info!(
            "open file limit is {limit}, below the {max_sessions} sessions, but each worker's \
             io_uring file table holds its {per_worker} without descriptors"
        );
        return;
    }
    let mut advice = "raise the hard limit (ulimit -Hn) to serve them all".to_owned();
    if features.registered_files {
        let workers =
            u64::from(max_sessions).div_ceil(limit.saturating_sub(SPARE_DESCRIPTORS).max(1));
        advice.push_str(&format!(
            ", or run at least {workers} workers so that each io_uring file table fits under it"
        ));
    }
    tracing::warn!(
        "open file limit is {limit}, below the {max_sessions} sessions asked for: {advice}"
    );
}

fn bind(config: &Config) -> Result<Socket> {
    let addr = config.addr;
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .op("creating the listening socket")?;
    // On Unix, SO_REUSEADDR lets a restarted server bind while old connections linger in
    // TIME_WAIT. Windows allows that without it, and there SO_REUSEADDR would let another socket
    // bind the same port while we listen.
    #[cfg(unix)]
    socket.set_reuse_address(true).op("setting SO_REUSEADDR")?;
    socket
        .bind(&SockAddr::from(addr))
        .map_err(|source| Error::Io {
            op: "binding the listening address",
            source: std::io::Error::new(source.kind(), format!("{addr}: {source}")),
        })?;
    socket.listen(config.backlog).op("listening")?;
    Ok(socket)
}
