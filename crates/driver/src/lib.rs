//! The completion port of iocp-server.
//!
//! The seed server is built on a Windows I/O completion port: operations are *posted* (`AcceptEx`,
//! `WSARecv`, `WSASend`) and worker threads collect their *completions* with
//! `GetQueuedCompletionStatus`. This crate gives that model to every platform, one [`Driver`] per
//! worker thread:
//!
//! - **io_uring** on Linux: multishot accept, multishot receive from a provided-buffer ring (an
//!   idle connection holds no receive buffer), gathering `sendmsg`;
//! - **poll** (`mio`: epoll, kqueue) where io_uring is missing or forbidden, turning readiness into
//!   the same completions;
//! - **IOCP** on Windows: `AcceptEx` kept posted, a zero-byte `WSARecv` per connection (an idle
//!   connection holds no receive buffer), gathering `WSASend`, skip-on-success completions.
//!
//! The driver owns every buffer the kernel may touch until that operation's completion has
//! arrived: receive buffers belong to the backend and are lent to the completion callback;
//! outgoing bytes ([`bytes::Bytes`]) sit in the connection's send queue until the kernel has sent
//! them. A connection's slot is freed only when none of its operations is outstanding, and every
//! completion carries the slot's generation ([`ConnId`]), so a completion can never reach the next
//! connection that gets the slot.
//!
//! ```text
//!            Io::attach / send / close          Driver::turn
//!   owner ─────────────────────────────► Io ─────────────────► sys::Port (uring | poll | iocp)
//!     ▲                                   │  submit                 │ wait
//!     └──────────── Event ◄───────────────┴──── Completion ◄────────┘
//! ```
//!
//! The OS layer and its contract are in `src/sys/mod.rs`.

// The tests beside each backend share the integration tests' support module, which names the
// crate.
#[cfg(test)]
extern crate self as iocp_driver;

mod affinity;
mod config;
mod driver;
mod limits;
mod queue;
mod stats;
mod sys;
mod token;

pub use affinity::pin_current_thread;
pub use config::{Backend, BackendChoice, Config, Features, UringOptions};
pub use driver::{CloseMode, ConnError, Driver, Event, Io};
pub use limits::{open_file_limits, raise_open_file_limit};
pub use sys::Waker;
pub use token::{ConnId, GENERATION_BITS};

pub use stats::DriverStats;
