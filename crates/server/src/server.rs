//! Starting, reaching and stopping the server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use iocp_driver::{Backend, Features, Waker};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::config::Config;
use crate::error::{Context as _, Error, Result};
use crate::handler::Handler;
use crate::session::{CloseReason, SessionId, SlotTable};
use crate::stats::{Stats, WorkerStats};
use crate::worker;

/// Work handed to a worker by another thread.
pub(crate) enum Command {
    Send(SessionId, Bytes),
    Close(SessionId, CloseReason),
    /// A connection accepted by another worker, for a slot of this one.
    Adopt(u32, Socket),
    Broadcast(Bytes),
    Shutdown,
}

/// A worker's queue of [`Command`]s, and the wake-up that goes with it (the seed's
/// `PostQueuedCompletionStatus`).
pub(crate) struct Inbox {
    queue: Mutex<Vec<Command>>,
    /// A wake-up is pending: later pushes need not wake again.
    notified: AtomicBool,
    waker: OnceLock<Waker>,
}

impl Inbox {
    fn new() -> Inbox {
        Inbox {
            queue: Mutex::new(Vec::new()),
            notified: AtomicBool::new(false),
            waker: OnceLock::new(),
        }
    }

    /// Sets the worker's wake-up, and wakes it once: a command pushed before the waker existed
    /// woke nobody, and the worker must not wait for it.
    pub(crate) fn set_waker(&self, waker: Waker) {
        let _ = self.waker.set(waker);
        if let Some(waker) = self.waker.get() {
            if let Err(e) = waker.wake() {
                tracing::error!("waking a worker failed: {e}");
            }
        }
    }

    pub(crate) fn push(&self, command: Command) {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(command);
        if !self.notified.swap(true, Ordering::AcqRel) {
            if let Some(waker) = self.waker.get() {
                if let Err(e) = waker.wake() {
                    tracing::error!("waking a worker failed: {e}");
                }
            }
        }
    }

    /// Moves the queued commands into `out` (which should be empty). Cheap when nothing is queued.
    pub(crate) fn take(&self, out: &mut Vec<Command>) {
        if self.notified.swap(false, Ordering::AcqRel) {
            std::mem::swap(
                &mut *self.queue.lock().unwrap_or_else(|e| e.into_inner()),
                out,
            );
        }
    }
}

/// What every thread of the server shares.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) slots: SlotTable,
    /// Free slot indices of each worker (local to that worker).
    free: Vec<Mutex<Vec<u32>>>,
    pub(crate) inboxes: Vec<Inbox>,
    pub(crate) stats: Vec<WorkerStats>,
    shutdown: AtomicBool,
    stopped: (Mutex<bool>, Condvar),
    /// Whether the workers may start (every one of them is ready), once decided.
    go: (Mutex<Option<bool>>, Condvar),
    next_worker: AtomicUsize,
}

impl Shared {
    pub(crate) fn workers(&self) -> usize {
        self.inboxes.len()
    }

    /// Takes a free slot for a new connection, spreading connections over the workers in turn.
    /// `None` when the pool is full.
    pub(crate) fn take_slot(&self) -> Option<(usize, u32)> {
        let n = self.workers();
        let start = self.next_worker.fetch_add(1, Ordering::Relaxed) % n;
        (0..n).map(|i| (start + i) % n).find_map(|w| {
            let index = self.free[w]
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop()?;
            Some((w, index))
        })
    }

    pub(crate) fn free_slot(&self, worker: usize, index: u32) {
        self.free[worker]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(index);
    }

    /// Waits until every worker is ready (or one failed): no worker accepts a connection before
    /// every worker can take one. Returns whether to run.
    pub(crate) fn wait_for_go(&self) -> bool {
        let (lock, cvar) = &self.go;
        let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        let guard = cvar
            .wait_while(guard, |go| go.is_none())
            .unwrap_or_else(|e| e.into_inner());
        guard.unwrap_or(false)
    }

    fn set_go(&self, go: bool) {
        let (lock, cvar) = &self.go;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = Some(go);
        cvar.notify_all();
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    fn inbox_of(&self, session: SessionId) -> Result<&Inbox> {
        if !self.slots.is_open(session) {
            return Err(Error::SessionClosed(session));
        }
        Ok(&self.inboxes[self.slots.owner(session.index).0])
    }
}

/// A cloneable handle to a running server, usable from any thread (threads the server did not
/// create included).
#[derive(Clone)]
pub struct ServerHandle {
    pub(crate) shared: Arc<Shared>,
}

impl ServerHandle {
    /// Queues a copy of `data` for `session` (the seed's `SendMsg(client_index, size, data)`).
    ///
    /// A closed or stale session is refused with [`Error::SessionClosed`]. The bytes are handed
    /// to the session's worker, which checks the id again before queueing them, so they never
    /// reach a later client of the same slot.
    pub fn send(&self, session: SessionId, data: &[u8]) -> Result<()> {
        self.send_bytes(session, Bytes::copy_from_slice(data))
    }

    /// Queues shared bytes for `session`, without copying them.
    pub fn send_bytes(&self, session: SessionId, data: Bytes) -> Result<()> {
        self.shared
            .inbox_of(session)?
            .push(Command::Send(session, data));
        Ok(())
    }

    /// Sends the same bytes to every open session (one command per worker, no copy per session).
    pub fn broadcast(&self, data: Bytes) {
        for inbox in &self.shared.inboxes {
            inbox.push(Command::Broadcast(data.clone()));
        }
    }

    /// Closes `session` after what is queued for it has been sent.
    pub fn close(&self, session: SessionId) -> Result<()> {
        self.close_with(session, CloseReason::Closed)
    }

    /// Closes `session` with `reason`, after what is queued for it has been sent.
    pub fn close_with(&self, session: SessionId, reason: CloseReason) -> Result<()> {
        self.shared
            .inbox_of(session)?
            .push(Command::Close(session, reason));
        Ok(())
    }

    /// Whether `session` is open.
    pub fn is_open(&self, session: SessionId) -> bool {
        self.shared.slots.is_open(session)
    }

    /// Every open session, at this moment.
    pub fn sessions(&self) -> Vec<SessionId> {
        self.shared.slots.open_sessions()
    }

    /// The server's counters.
    pub fn stats(&self) -> Stats {
        Stats::sum(&self.shared.stats)
    }

    /// Starts a graceful shutdown: stop accepting, flush every session's queue (up to
    /// [`Config::linger`]), close every session (`on_close` is called for each), and end the
    /// worker threads. Returns at once; [`Server::join`] waits for the end.
    pub fn shutdown(&self) {
        if self.shared.shutdown.swap(true, Ordering::AcqRel) {
            return;
        }
        for inbox in &self.shared.inboxes {
            inbox.push(Command::Shutdown);
        }
        let (lock, cvar) = &self.shared.stopped;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cvar.notify_all();
    }

    /// Whether shutdown has started.
    pub fn is_shutting_down(&self) -> bool {
        self.shared.is_shutting_down()
    }

    /// Waits up to `timeout` for shutdown to be asked for; returns whether it was.
    pub fn wait_for_shutdown(&self, timeout: Duration) -> bool {
        let (lock, cvar) = &self.shared.stopped;
        let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = cvar
            .wait_timeout_while(guard, timeout, |stopped| !*stopped)
            .unwrap_or_else(|e| e.into_inner());
        *guard
    }
}

/// A running server: the listening socket, the session pool and the worker threads.
///
/// ```no_run
/// use iocp_server::{Config, Context, Handler, Server, SessionId};
///
/// struct Echo;
/// impl Handler for Echo {
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
        if config.workers == 0 || config.max_sessions == 0 {
            return Err(Error::Config(
                "workers and max_sessions must be at least 1".into(),
            ));
        }
        let workers = config.workers.min(config.max_sessions as usize);
        let descriptor_limit = raise_open_file_limit(config.max_sessions);
        let listener = bind(&config)?;
        let local_addr = listener
            .local_addr()
            .op("reading the listening address")?
            .as_socket()
            .expect("an inet socket has an inet address");

        let slots = SlotTable::new(config.max_sessions, workers as u32);
        let per_worker = slots.per_worker();
        let free = (0..workers)
            .map(|w| {
                let first = w as u32 * per_worker;
                let count = per_worker.min(slots.len().saturating_sub(first));
                Mutex::new((0..count).rev().collect())
            })
            .collect();
        let shared = Arc::new(Shared {
            slots,
            free,
            inboxes: (0..workers).map(|_| Inbox::new()).collect(),
            stats: (0..workers).map(|_| WorkerStats::default()).collect(),
            shutdown: AtomicBool::new(false),
            stopped: (Mutex::new(false), Condvar::new()),
            go: (Mutex::new(None), Condvar::new()),
            next_worker: AtomicUsize::new(0),
            config,
        });
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
                    failure.get_or_insert(Error::Config("a worker thread died at start".into()));
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
                .unwrap_or_else(|_| Err(Error::Config("a worker thread panicked".into())));
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
