//! Redis, for several chat instances sharing their accounts, logins and rooms
//! (`--engine redis --redis URL`): one Redis, or a Redis Cluster given several seed URLs.
//!
//! - [`Redis`]: the connection, made with the `fred` client on a small tokio runtime of its
//!   own (two threads); it reconnects by itself, with back-off (50 ms doubling up to 1 s), and
//!   commands fail fast while it is away (the chat then answers `LOGIN_SERVER_BUSY` at once).
//!   The engine takes its rooms' channels again after each reconnect.
//! - [`RedisStore`]: the accounts (Argon2id hashes, never passwords) in one hash.
//! - `RedisEngine`: presence, rooms and room messages (the engine of [`crate::chat`]).
//!
//! Keys (`PREFIX` is `iocp`; the part in braces is the cluster hash tag, so that every atomic
//! step touches one slot):
//!
//! | key | type | what |
//! |---|---|---|
//! | `iocp:accounts` | hash | user id → password hash (PHC string) |
//! | `iocp:{user:ID}:presence` | string, expiring | the id of the instance the user is logged in on |
//! | `iocp:{room:N}:members` | hash | member id → `entry-seq instance user-id` |
//! | `iocp:{room:N}:alive` | sorted set | member id → when its instance must have refreshed it by (ms) |
//! | `iocp:{room:N}:seq` | counter | the number of the room's last event |
//! | `iocp:{room:N}:events` | shard channel | the room's events, numbered (`SPUBLISH`) |

mod accounts;
mod engine;
mod scripts;

pub use accounts::RedisStore;
pub(crate) use engine::RedisEngine;

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use fred::types::config::{ClusterDiscoveryPolicy, ServerConfig};

/// How the instances reach Redis.
#[derive(Clone, Debug)]
pub struct RedisConfig {
    /// `redis://HOST:PORT` of one Redis, or several: seeds of a Redis Cluster.
    pub urls: Vec<String>,
    /// How long a presence or a room membership lives without its instance refreshing it (the
    /// time an instance that died keeps its users).
    pub presence_ttl: Duration,
    /// How long a command may take before it counts as failed.
    pub command_timeout: Duration,
}

impl RedisConfig {
    /// One Redis at `url`, with the default times.
    pub fn new(urls: Vec<String>) -> RedisConfig {
        RedisConfig {
            urls,
            presence_ttl: Duration::from_secs(10),
            command_timeout: Duration::from_secs(2),
        }
    }

    fn fred_config(&self) -> Result<Config, String> {
        match self.urls.as_slice() {
            [] => Err("no Redis URL".into()),
            [url] => Config::from_url(url).map_err(|e| format!("{url}: {e}")),
            urls => {
                let mut hosts = Vec::new();
                for url in urls {
                    let config =
                        Config::from_url_centralized(url).map_err(|e| format!("{url}: {e}"))?;
                    match config.server {
                        ServerConfig::Centralized { server } => hosts.push(server),
                        _ => return Err(format!("{url}: not a redis://HOST:PORT URL")),
                    }
                }
                let first = Config::from_url_centralized(&urls[0]).map_err(|e| e.to_string())?;
                Ok(Config {
                    server: ServerConfig::Clustered {
                        hosts,
                        policy: ClusterDiscoveryPolicy::default(),
                    },
                    ..first
                })
            }
        }
    }
}

/// A connection to Redis (or a Redis Cluster): a command client and a subscriber, driven by a
/// tokio runtime of their own. Shared by the account store and the chat engine of one chat
/// server (the engine owns the subscriber's channels: give each server its own connection).
pub struct Redis {
    runtime: tokio::runtime::Runtime,
    client: Client,
    subscriber: fred::clients::SubscriberClient,
    config: RedisConfig,
    metrics: RedisMetrics,
}

/// What the chat engine's use of Redis looks like from outside (`--metrics`): not on the hot
/// path (one update per script, per reconnect).
#[derive(Clone, Debug)]
pub struct RedisMetrics {
    /// `iocp_redis_up`: 1 while the engine can use Redis, 0 during an outage.
    pub up: prometheus_client::metrics::gauge::Gauge,
    /// `iocp_redis_reconnects_total`: times the engine came back to Redis after an outage (and
    /// registered its users and members anew).
    pub reconnects: prometheus_client::metrics::counter::Counter,
    /// `iocp_redis_command_errors_total`: scripts that failed (timeouts, connection lost, ...).
    pub errors: prometheus_client::metrics::counter::Counter,
    /// `iocp_redis_command_seconds`: how long each script took, round trip included.
    pub command_seconds: prometheus_client::metrics::histogram::Histogram,
}

impl RedisMetrics {
    fn new() -> RedisMetrics {
        use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
        RedisMetrics {
            up: Default::default(),
            reconnects: Default::default(),
            errors: Default::default(),
            // 50 µs to ~1.6 s.
            command_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
        }
    }

    fn command(&self, took: Duration, ok: bool) {
        self.command_seconds.observe(took.as_secs_f64());
        if !ok {
            self.errors.inc();
        }
    }

    /// Registers these metrics (`iocp_redis_*`) with `registry`.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "iocp_redis_up",
            "Whether the chat engine can use Redis now (1) or is in an outage (0)",
            self.up.clone(),
        );
        registry.register(
            "iocp_redis_reconnects",
            "Times the chat engine came back to Redis after an outage and registered its users and members anew",
            self.reconnects.clone(),
        );
        registry.register(
            "iocp_redis_command_errors",
            "Redis scripts of the chat engine that failed",
            self.errors.clone(),
        );
        registry.register(
            "iocp_redis_command_seconds",
            "Round trip of each Redis script of the chat engine",
            self.command_seconds.clone(),
        );
    }
}

impl Redis {
    /// Connects, waiting up to `wait` for the first connection. With `must_connect`, failing
    /// to connect in that time is an error; otherwise the connection goes on trying in the
    /// background (and the chat answers busy until it is made).
    ///
    /// # Errors
    ///
    /// A bad URL, a runtime that cannot start, or (with `must_connect`) Redis out of reach.
    pub fn connect(
        config: RedisConfig,
        wait: Duration,
        must_connect: bool,
    ) -> Result<Arc<Redis>, String> {
        let mut fred_config = config.fred_config()?;
        // The first connection is retried like any other (an instance may start before Redis).
        fred_config.fail_fast = false;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("redis")
            .enable_all()
            .build()
            .map_err(|e| format!("starting the Redis client's threads: {e}"))?;
        let mut builder = Builder::from_config(fred_config);
        builder
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(2);
                c.internal_command_timeout = Duration::from_secs(2);
                // A command is not sent twice: the chat's steps are not all idempotent.
                c.max_command_attempts = 1;
                c.tcp.nodelay = Some(true);
            })
            .with_performance_config(|p| {
                p.default_command_timeout = config.command_timeout;
                // Room events wait here while the forwarder hands them to the logic thread.
                p.broadcast_channel_capacity = 1 << 16;
            })
            // Unlimited attempts, 50 ms doubling up to 1 s: service resumes within about a
            // second of Redis's return.
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 1_000, 2));
        let client = builder.build().map_err(|e| format!("Redis client: {e}"))?;
        let subscriber = builder
            .build_subscriber_client()
            .map_err(|e| format!("Redis subscriber: {e}"))?;
        // The connection tasks reconnect by themselves; this waits for both to be up (by
        // looking: a wait for the "connected" notification could miss one that came first).
        let connected = runtime.block_on(async {
            client.connect();
            subscriber.connect();
            let deadline = tokio::time::Instant::now() + wait;
            while !(client.is_connected() && subscriber.is_connected()) {
                if tokio::time::Instant::now() >= deadline {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            true
        });
        if !connected {
            let why = format!(
                "Redis at {} not reachable within {wait:?}",
                config.urls.join(", ")
            );
            if must_connect {
                return Err(why);
            }
            tracing::warn!("{why}: retrying in the background");
        }
        let metrics = RedisMetrics::new();
        metrics.up.set(i64::from(connected));
        Ok(Arc::new(Redis {
            runtime,
            client,
            subscriber,
            config,
            metrics,
        }))
    }

    /// The connection's metrics (register them with [`RedisMetrics::register`]).
    pub fn metrics(&self) -> &RedisMetrics {
        &self.metrics
    }

    /// Whether both connections are up.
    pub fn is_connected(&self) -> bool {
        self.client.is_connected() && self.subscriber.is_connected()
    }

    /// Runs `future` on the connection's runtime, from a thread outside it.
    fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let (client, subscriber) = (self.client.clone(), self.subscriber.clone());
        self.runtime.block_on(async move {
            let quit = async {
                let _ = subscriber.quit().await;
                let _ = client.quit().await;
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), quit).await;
        });
    }
}
