//! The IOCP game server of the tutorial, on completion I/O: a pool of pre-allocated sessions,
//! worker threads that each own a completion port, a bounded send queue per session, and a
//! [`Handler`] for the application's logic.
//!
//! | the seed (C++, Windows IOCP) | here |
//! |---|---|
//! | `client_Infos_` created by `CreateClient` | the session pool: `max_sessions` slots made at start, ids with a generation ([`SessionId`]) |
//! | `accepter_thread_` + `AcceptEx` per slot | no accept thread: accepts are completions of the workers' ports (multishot accept on io_uring) |
//! | `io_worker_threads_` on `GetQueuedCompletionStatus` | worker threads, one completion port each ([`iocp_driver::Driver`]) |
//! | `WSARecv` / `WSASend` + `send_data_queue_` | receive armed once per session; one send in flight per session, gathering the queue, partial sends continued, a byte limit |
//! | `SendMsg(client_index, size, data)` | [`Context::send`] in callbacks, [`ServerHandle::send`] from any thread |
//! | `ProcessPacket()` | your [`Handler`] |
//!
//! ```no_run
//! use iocp_server::{CloseReason, Config, Context, Handler, Server, SessionId};
//!
//! struct Echo;
//!
//! impl Handler for Echo {
//!     type Session = (); // the handler's own state per session: none here
//!
//!     fn on_receive(&self, ctx: &mut Context<'_>, session: SessionId, data: &[u8]) {
//!         // A client that does not read is disconnected at the queue limit; nothing to do here.
//!         let _ = ctx.send(session, data);
//!     }
//!
//!     fn on_close(&self, _ctx: &mut Context<'_>, session: SessionId, reason: CloseReason) {
//!         println!("{session} closed: {reason}");
//!     }
//! }
//!
//! let server = Server::start(Config::default(), Echo)?;
//! let handle = server.handle(); // send, broadcast, close, stats, shutdown from any thread
//! # handle.shutdown();
//! server.join()?;
//! # Ok::<(), iocp_server::Error>(())
//! ```
//!
//! Rules the server keeps: a session's callbacks run in order on the worker that owns it; a slot
//! is reused only after every operation on it has completed; a stale id never reaches the next
//! client of its slot; bad input, a reset or a client that stops reading costs that session only,
//! with a [`CloseReason`]; shutdown flushes, closes every session (calling `on_close`) and joins
//! every thread.

mod config;
mod error;
mod handle;
mod handler;
mod inbox;
mod local;
mod pool;
mod server;
mod session;
mod stats;
mod timer;
mod worker;

pub use bytes::Bytes;
pub use config::Config;
pub use error::{Error, Result};
pub use handle::ServerHandle;
pub use handler::{Context, Handler};
pub use iocp_driver::{Backend, BackendChoice, DriverStats, Features, UringOptions};
pub use server::Server;
pub use session::{CloseReason, SessionId};
pub use stats::{EVENTS_PER_TURN_BOUNDS, EVENTS_PER_TURN_BUCKETS, Stats};
pub use timer::TimerId;
