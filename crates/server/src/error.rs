//! The server's errors.

use std::io;

use crate::session::SessionId;

/// What can go wrong when using the server.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The session is closed (or closing): its id is stale, and nothing is delivered to whoever
    /// holds its slot now.
    SessionClosed(SessionId),
    /// The session's send queue passed its limit; the session is being disconnected
    /// ([`crate::CloseReason::SendQueueFull`]).
    SendQueueFull(SessionId),
    /// The session belongs to another worker, and what was asked can only be done on its own
    /// ([`crate::Context::set_timer`]).
    NotOwned(SessionId),
    /// A worker thread failed to start or panicked.
    WorkerFailed(String),
    /// Configuration that cannot work.
    Config(String),
    /// An I/O error of the server itself (not of one session).
    Io {
        /// What the server was doing.
        op: &'static str,
        /// The error.
        source: io::Error,
    },
}

/// `Result` with the server's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::SessionClosed(id) => write!(f, "session {id} is closed"),
            Error::SendQueueFull(id) => {
                write!(
                    f,
                    "session {id} passed its send queue limit and is disconnected"
                )
            }
            Error::NotOwned(id) => write!(f, "session {id} belongs to another worker"),
            Error::WorkerFailed(why) => write!(f, "worker failed: {why}"),
            Error::Config(msg) => write!(f, "invalid configuration: {msg}"),
            Error::Io { op, source } => write!(f, "{op}: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Attaches what the server was doing to an I/O error.
pub(crate) trait Context<T> {
    fn op(self, op: &'static str) -> Result<T>;
}

impl<T> Context<T> for io::Result<T> {
    fn op(self, op: &'static str) -> Result<T> {
        self.map_err(|source| Error::Io { op, source })
    }
}
