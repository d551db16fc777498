//! The server's settings.

use std::net::SocketAddr;
use std::time::Duration;

use iocp_driver::{BackendChoice, UringOptions};

/// Settings of a [`crate::Server`]. `Config::default()` is a sensible echo-server set-up on the
/// tutorial's address, `127.0.0.1:11021`.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address to listen on.
    pub addr: SocketAddr,
    /// Worker threads, each with its own completion port (default: the number of cores).
    pub workers: usize,
    /// Pin worker `n` to the `n`-th CPU the process may run on (Linux, Windows). Worth it when
    /// the server has its cores to itself; beside another busy process, leave it off, or give
    /// the server fewer workers than cores (see docs/architecture.md, "Workers and cores").
    pub pin_workers: bool,
    /// Session slots allocated at start; a connection beyond them is refused.
    pub max_sessions: u32,
    /// Bytes a session may have queued for sending; past it the session is disconnected
    /// ([`crate::CloseReason::SendQueueFull`]).
    pub send_queue_limit: usize,
    /// How long a closing session may take to flush its queue, and how long shutdown waits for
    /// all of them, before the rest is dropped.
    pub linger: Duration,
    /// Backend of the completion ports.
    pub backend: BackendChoice,
    /// Disable Nagle's algorithm on every session (`TCP_NODELAY`), as game servers do.
    pub nodelay: bool,
    /// Listen backlog.
    pub backlog: i32,
    /// Size of one receive buffer.
    pub recv_buffer_size: u32,
    /// Receive buffers per worker (io_uring buffer ring).
    pub recv_buffer_count: u16,
    /// Submission queue entries per worker (io_uring).
    pub ring_entries: u32,
    /// `AcceptEx` calls kept posted on the listening socket (IOCP; at most the slots of one
    /// worker). Only one worker's port can accept on a listener under IOCP; it hands connections
    /// to the others.
    pub accept_depth: u32,
    /// io_uring features to turn off (for testing the fall-back paths).
    pub uring: UringOptions,
    /// Close a session from which nothing arrived for this long
    /// ([`crate::CloseReason::IdleTimeout`]); `None`: never.
    pub idle_timeout: Option<Duration>,
    /// TCP keepalive on every session: probes after this long without traffic, so that a peer
    /// whose machine vanished is found without any application traffic (the session then ends
    /// with an I/O error); `None`: off.
    pub tcp_keepalive: Option<Duration>,
    /// Call [`crate::Handler::on_tick`] on every worker this often; `None`: never.
    pub tick: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 11021)),
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            pin_workers: false,
            max_sessions: 10_000,
            send_queue_limit: 4 * 1024 * 1024,
            linger: Duration::from_secs(5),
            backend: BackendChoice::Auto,
            nodelay: true,
            backlog: 1024,
            recv_buffer_size: 16 * 1024,
            recv_buffer_count: 256,
            ring_entries: 1024,
            accept_depth: 32,
            uring: UringOptions::default(),
            idle_timeout: None,
            tcp_keepalive: None,
            tick: None,
        }
    }
}
