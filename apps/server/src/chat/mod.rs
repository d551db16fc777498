//! The tutorial's chat server: log in, enter a room, chat with its members.
//!
//! ```text
//!  I/O workers ──frames, connect, disconnect──▶ logic queue ──▶ logic thread (ChatLogic: users, rooms)
//!                                                   ▲                 │ login job (bounded queue)
//!                                                   │                 ▼
//!                                                   └── LoginDone ── login pool: Argon2id check against
//!                                                                    the account store (redb)
//! ```
//!
//! - All chat state (who is logged in, who is in which room) lives on the packet manager's one
//!   logic thread ([`iocp_packet::logic`]) and is touched by nothing else: no locks.
//! - A login is checked on a small pool of threads (`iocp_accounts::LoginPool`): the logic thread hands the job
//!   over without waiting (the tutorial's request queue to its Redis thread), and the result
//!   comes back through the logic queue as a message. A login storm never stalls chat; if more
//!   logins wait than the pool's queue holds, the newest get `LOGIN_SERVER_BUSY`.
//! - A login of a user who is logged in on another session **replaces** that session once the
//!   password is checked: the old one leaves its room (the others are told) and is closed. So a
//!   user whose old connection is stuck, or whose disconnect the server has not seen yet, can
//!   always log in again. A session that is itself logged in (or logging in) and asks again is
//!   refused (`LOGIN_USER_ALREADY`). Room and chat requests before login are refused
//!   (`USER_MGR_NOT_LOGGED_IN`).
//! - A connection that has not logged in within `login_timeout` is closed (checked on the
//!   logic thread's tick). Dead peers are found by TCP keepalive; `idle_timeout` (off by
//!   default: the tutorial's client sends no heartbeat) closes members who send nothing.
//! - A chat notification is encoded once and the same bytes are queued to every member. A
//!   member that stops reading passes its send-queue limit, is disconnected by the server, and
//!   leaves the room through its disconnect like any other: the room never waits for it.
//! - A disconnect, whatever its cause, leaves the room (the others are told) and logs out.
//!
//! - `DEV_ECHO` (id 1) is answered with the same body, logged in or not.
//! - Each member of a room has a unique id (its session id as a number, so that a user who logs
//!   in again gets another); the room notifies the tutorial's C# client parses carry it.
//!
//! The protocol is in the `iocp-chat-protocol` crate and `docs/protocol.md`.

pub(crate) mod engine;
mod logic;
pub(crate) mod login;
mod throttle;
mod users;

pub use throttle::ThrottleConfig;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use iocp_accounts::Accounts;
use iocp_packet::{BadPacket, LogicPackets, LogicServer, LogicStats, PacketOptions, QueueOptions};
use iocp_server::{Config, ServerHandle};

use self::logic::ChatLogic;
use self::login::ChatLoginPool;

/// Where the chat keeps its shared state: presence, rooms and their events.
#[derive(Clone, Default)]
pub enum EngineConfig {
    /// In this process (the default; nothing to install).
    #[default]
    Memory,
    /// In Redis, shared by every instance connected to it.
    Redis(Arc<crate::redis::Redis>),
}

impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EngineConfig::Memory => f.write_str("Memory"),
            EngineConfig::Redis(_) => f.write_str("Redis"),
        }
    }
}

/// Settings of the chat server.
#[derive(Clone, Debug)]
pub struct ChatConfig {
    /// The network server's settings (address, workers, sessions, send-queue limit, ...).
    pub server: Config,
    /// Where presence and rooms live: this process, or Redis.
    pub engine: EngineConfig,
    /// Rooms, numbered `0..rooms`.
    pub rooms: u32,
    /// Members a room holds.
    pub room_capacity: u32,
    /// Threads checking passwords.
    pub login_threads: usize,
    /// Logins that may wait for a password check; more get `LOGIN_SERVER_BUSY`.
    pub login_queue: usize,
    /// The logic queue's size and what the I/O workers do when it is full.
    pub queue: QueueOptions,
    /// What to do with an unknown packet id or a malformed packet.
    pub bad_packet: BadPacket,
    /// Close a connection that has not logged in within this time; `None`: never.
    pub login_timeout: Option<std::time::Duration>,
    /// Limits on failed and waiting logins, per account and per address.
    pub throttle: ThrottleConfig,
    /// Check this often that the logged-in users' accounts still exist (a user removed with
    /// `users remove` then loses its session); `None`: never.
    pub account_check: Option<std::time::Duration>,
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            server: Config::default(),
            engine: EngineConfig::Memory,
            rooms: 10,
            room_capacity: 10,
            login_threads: 2,
            login_queue: 1024,
            queue: QueueOptions::default(),
            bad_packet: BadPacket::Close,
            login_timeout: Some(std::time::Duration::from_secs(10)),
            throttle: ThrottleConfig::default(),
            account_check: Some(std::time::Duration::from_secs(2)),
        }
    }
}

/// What the chat server has done since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChatStats {
    /// Users logged in now.
    pub online: u64,
    /// Logins accepted.
    pub logins: u64,
    /// Logins refused (unknown user, wrong password, already logged in, invalid id, busy).
    pub logins_refused: u64,
    /// Logins that replaced an earlier session of the same user.
    pub logins_replaced: u64,
    /// Connections closed for not logging in within the login timeout.
    pub login_timeouts: u64,
    /// Logins answered at once without a check, for too many failures or checks waiting.
    pub logins_throttled: u64,
    /// Password checks not done because their session closed while they waited.
    pub login_checks_dropped: u64,
    /// Room entries.
    pub room_enters: u64,
    /// Chat messages accepted.
    pub chats: u64,
    /// Chat notifications queued to members (a message to a room of 10 is 10).
    pub notifies: u64,
    /// Members of all rooms together, now.
    pub members: u64,
    /// Rooms with at least one member, now.
    pub rooms_occupied: u64,
    /// Logins waiting for their password check or being checked, now.
    pub login_queue: u64,
}

impl std::fmt::Display for ChatStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "chat: {} online | logins {} ok, {} refused, {} throttled, {} replaced, {} timed out, \
             {} checks dropped | room enters {} | chats {} → {} notifies",
            self.online,
            self.logins,
            self.logins_refused,
            self.logins_throttled,
            self.logins_replaced,
            self.login_timeouts,
            self.login_checks_dropped,
            self.room_enters,
            self.chats,
            self.notifies
        )
    }
}

/// The chat counters, written by the logic thread only and read by anyone.
#[derive(Default)]
pub(crate) struct Counters {
    online: AtomicU64,
    logins: AtomicU64,
    logins_refused: AtomicU64,
    logins_replaced: AtomicU64,
    login_timeouts: AtomicU64,
    logins_throttled: AtomicU64,
    login_checks_dropped: AtomicU64,
    room_enters: AtomicU64,
    chats: AtomicU64,
    notifies: AtomicU64,
    members: AtomicU64,
    rooms_occupied: AtomicU64,
    /// Logins handed to the login pool, and answers that came back: the difference is the
    /// login queue's depth.
    login_checks: AtomicU64,
    login_answers: AtomicU64,
    /// Seconds from a login request to its answer, for the logins whose password was checked.
    pub(crate) login_latency: LoginLatency,
}

/// Seconds from a login request to its answer: a `prometheus-client` histogram, whose atomics
/// the logic thread writes once per login and a metrics endpoint reads.
#[derive(Clone, Debug)]
pub struct LoginLatency(pub prometheus_client::metrics::histogram::Histogram);

/// Upper bounds of the buckets of [`LoginLatency`], in seconds: an Argon2id check takes tens of
/// milliseconds; seconds mean that logins wait in the login queue.
pub const LOGIN_LATENCY_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl Default for LoginLatency {
    fn default() -> Self {
        LoginLatency(prometheus_client::metrics::histogram::Histogram::new(
            LOGIN_LATENCY_BUCKETS,
        ))
    }
}

impl Counters {
    /// Adds `n` to `counter` (one writer: a plain load and store).
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.store(
            counter.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// Subtracts `n` from `counter` (one writer).
    pub(crate) fn sub(counter: &AtomicU64, n: u64) {
        Counters::add(counter, n.wrapping_neg());
    }

    /// A member entered a room, which now has `members`.
    pub(crate) fn entered(&self, members: usize) {
        Counters::add(&self.members, 1);
        if members == 1 {
            Counters::add(&self.rooms_occupied, 1);
        }
    }

    /// A member left a room, which now has `members`.
    pub(crate) fn left(&self, members: usize) {
        Counters::sub(&self.members, 1);
        if members == 0 {
            Counters::sub(&self.rooms_occupied, 1);
        }
    }

    fn snapshot(&self) -> ChatStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ChatStats {
            online: get(&self.online),
            logins: get(&self.logins),
            logins_refused: get(&self.logins_refused),
            logins_replaced: get(&self.logins_replaced),
            login_timeouts: get(&self.login_timeouts),
            logins_throttled: get(&self.logins_throttled),
            login_checks_dropped: get(&self.login_checks_dropped),
            room_enters: get(&self.room_enters),
            chats: get(&self.chats),
            notifies: get(&self.notifies),
            members: get(&self.members),
            rooms_occupied: get(&self.rooms_occupied),
            login_queue: get(&self.login_checks).saturating_sub(get(&self.login_answers)),
        }
    }
}

/// A running chat server: the network server and its logic thread.
pub struct ChatServer {
    inner: LogicServer<ChatLogic>,
    counters: Arc<Counters>,
}

impl ChatServer {
    /// Starts the chat server, checking logins against `accounts`.
    ///
    /// # Errors
    ///
    /// If the server cannot start (address in use, bad configuration), or a thread cannot be
    /// spawned.
    pub fn start(config: ChatConfig, accounts: Accounts) -> iocp_server::Result<ChatServer> {
        if config.rooms == 0 || config.room_capacity == 0 || config.login_threads == 0 {
            return Err(iocp_server::Error::Config(
                "rooms, room capacity and login threads must be at least 1".into(),
            ));
        }
        let counters = Arc::new(Counters::default());
        let mut config = config;
        if config.queue.tick.is_none() {
            // Login deadlines and the account check run on the logic thread's tick.
            let finest = [config.login_timeout, config.account_check]
                .into_iter()
                .flatten()
                .min();
            config.queue.tick = finest.map(|t| {
                (t / 10).clamp(
                    std::time::Duration::from_millis(10),
                    std::time::Duration::from_secs(1),
                )
            });
        }
        let mut packets = LogicPackets::new();
        logic::register(&mut packets);
        let options = PacketOptions {
            bad_packet: config.bad_packet,
            ..PacketOptions::default()
        };
        let mut pool_error = None;
        let server = Arc::new(std::sync::OnceLock::new());
        let inner = packets.start_with(config.server.clone(), options, config.queue, |sender| {
            let audit = login::Audit::start(accounts.clone(), sender.clone()).unwrap_or_else(|e| {
                pool_error = Some(e);
                login::Audit::none()
            });
            let engine: Box<dyn engine::Engine> = match &config.engine {
                EngineConfig::Memory => Box::new(engine::MemoryEngine::new(
                    config.rooms,
                    config.room_capacity,
                )),
                EngineConfig::Redis(redis) => Box::new(crate::redis::RedisEngine::start(
                    redis.clone(),
                    config.rooms,
                    config.room_capacity,
                    sender.clone(),
                )),
            };
            let login = login::start(
                accounts,
                config.login_threads,
                config.login_queue,
                server.clone(),
                sender,
            )
            .unwrap_or_else(|e| {
                pool_error = Some(e);
                ChatLoginPool::none()
            });
            ChatLogic::new(&config, engine, login, audit, counters.clone())
        })?;
        let _ = server.set(inner.handle());
        if let Some(source) = pool_error {
            let _ = inner.shutdown();
            return Err(iocp_server::Error::Io {
                op: "spawning the login threads",
                source,
            });
        }
        tracing::info!(
            "chat: {} rooms of {}, {} login threads",
            config.rooms,
            config.room_capacity,
            config.login_threads
        );
        Ok(ChatServer { inner, counters })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr()
    }

    /// The network server's handle (statistics, shutdown).
    pub fn handle(&self) -> ServerHandle {
        self.inner.handle()
    }

    /// The network server (its backend, say).
    pub fn server(&self) -> &iocp_server::Server {
        self.inner.server()
    }

    /// The chat counters.
    pub fn stats(&self) -> ChatStats {
        self.counters.snapshot()
    }

    /// The logic queue's counters.
    pub fn logic_stats(&self) -> LogicStats {
        self.inner.logic_stats()
    }

    /// The logic queue's counters, readable after the server is gone.
    pub fn logic_stats_source(&self) -> impl Fn() -> LogicStats + Send + Sync + 'static {
        self.inner.logic_stats_source()
    }

    /// Seconds from each login request to its answer (for the logins whose password was
    /// checked), as a histogram that reads the live values.
    pub fn login_latency(&self) -> LoginLatency {
        self.counters.login_latency.clone()
    }

    /// The chat counters, readable after the server is gone.
    pub fn stats_source(&self) -> impl Fn() -> ChatStats + Send + Sync + 'static {
        let counters = self.counters.clone();
        move || counters.snapshot()
    }

    /// Waits for the server to stop (after [`ServerHandle::shutdown`]), then for the logic
    /// thread to handle every disconnect, then for the login threads.
    ///
    /// # Errors
    ///
    /// The server's error, if a worker failed.
    pub fn join(self) -> iocp_server::Result<()> {
        let logic = self.inner.join()?;
        drop(logic);
        Ok(())
    }

    /// Shuts down gracefully ([`join`](Self::join)).
    ///
    /// # Errors
    ///
    /// The server's error, if a worker failed.
    pub fn shutdown(self) -> iocp_server::Result<()> {
        self.handle().shutdown();
        self.join()
    }
}
