//! How a driver is built: which backend, how many connections, how big the receive buffers are.

use std::fmt;

/// Which completion backend to use.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum BackendChoice {
    /// The platform's completion API: io_uring on Linux (falling back to `poll` when the ring
    /// cannot be created or lacks a required operation), IOCP on Windows, `poll` elsewhere.
    #[default]
    Auto,
    /// Linux io_uring only: fail if it is not available.
    Uring,
    /// Readiness (`epoll`/`kqueue` through `mio`) turned into completions.
    Poll,
    /// Windows I/O completion ports.
    Iocp,
}

impl std::str::FromStr for BackendChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            "uring" | "io_uring" | "io-uring" => Ok(BackendChoice::Uring),
            "poll" | "epoll" | "mio" => Ok(BackendChoice::Poll),
            "iocp" => Ok(BackendChoice::Iocp),
            other => Err(format!(
                "unknown backend `{other}` (expected auto, uring, poll or iocp)"
            )),
        }
    }
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Uring => "uring",
            BackendChoice::Poll => "poll",
            BackendChoice::Iocp => "iocp",
        })
    }
}

/// The backend a driver actually runs on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Backend {
    /// Linux io_uring.
    Uring,
    /// Readiness through `mio` (epoll on Linux, kqueue on macOS and the BSDs).
    Poll,
    /// Windows I/O completion ports.
    Iocp,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Uring => "io_uring",
            Backend::Poll => "poll",
            Backend::Iocp => "iocp",
        })
    }
}

/// Settings of one driver (one per worker thread).
#[derive(Clone, Debug)]
pub struct Config {
    /// Backend to use.
    pub backend: BackendChoice,
    /// Number of connection slots this driver manages.
    pub capacity: u32,
    /// Submission queue size (io_uring); the completion queue is four times larger.
    pub ring_entries: u32,
    /// Size of one receive buffer.
    pub recv_buffer_size: u32,
    /// Number of receive buffers shared by all connections of the driver (io_uring provided-buffer
    /// ring; a power of two).
    pub recv_buffer_count: u16,
    /// `AcceptEx` calls kept posted on the listening socket (IOCP). Bounded by `capacity`: more
    /// would only hold sockets for connections that the listen backlog queues anyway.
    pub accept_depth: u32,
    /// Switches to turn io_uring features off, for testing the fall-back paths.
    pub uring: UringOptions,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            backend: BackendChoice::Auto,
            capacity: 1024,
            ring_entries: 1024,
            recv_buffer_size: 16 * 1024,
            recv_buffer_count: 256,
            accept_depth: 32,
            uring: UringOptions::default(),
        }
    }
}

/// io_uring features that can be turned off by configuration.
///
/// Each one falls back to a slower path inside the backend; they exist so that the tests can run
/// those paths on a kernel that has every feature.
#[derive(Clone, Copy, Debug, Default)]
pub struct UringOptions {
    /// Re-arm a one-shot `accept` after each connection instead of one multishot accept.
    pub no_multishot_accept: bool,
    /// Receive with one-shot `recv` into a buffer from the driver's pool instead of multishot
    /// `recv` from the provided-buffer ring.
    pub no_multishot_recv: bool,
    /// Use each socket through its plain descriptor instead of registering it in the ring's
    /// file table.
    pub no_registered_files: bool,
    /// Make ring creation fail as if io_uring were disabled (`EPERM`), to test the `auto`
    /// fall-back. The environment variable `IOCP_FORCE_URING_FAILURE=1` does the same.
    pub force_setup_failure: bool,
}

/// What the running backend supports and uses, for the start-up log line.
#[derive(Clone, Debug, Default)]
pub struct Features {
    /// Multishot accept (Linux 5.19).
    pub multishot_accept: bool,
    /// Multishot recv with a provided-buffer ring (Linux 6.0): an idle connection holds no
    /// receive buffer.
    pub multishot_recv: bool,
    /// `IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN` (Linux 6.1).
    pub defer_taskrun: bool,
    /// Sockets live in the ring's file table instead of the process's descriptor table (Linux
    /// 6.13, where removing one from the table closes it even while other requests are in
    /// flight), so that an operation does not look the descriptor up and take a reference to it
    /// each time, and open connections are not capped by `RLIMIT_NOFILE`.
    pub registered_files: bool,
    /// What a backend other than io_uring uses, in words, shown instead of the io_uring
    /// features (IOCP: how many accepts are posted, how it receives).
    pub summary: Option<String>,
    /// Why the driver runs on something other than what was asked for, if it does.
    pub fallback: Option<String>,
    /// Features the kernel lacks or configuration turned off, in words.
    pub notes: Vec<String>,
}

impl fmt::Display for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let yes = |b: bool| if b { "yes" } else { "no" };
        match &self.summary {
            Some(summary) => f.write_str(summary)?,
            None => write!(
                f,
                "multishot accept: {}, multishot recv + buffer ring: {}, defer taskrun: {}, \
                 registered files: {}",
                yes(self.multishot_accept),
                yes(self.multishot_recv),
                yes(self.defer_taskrun),
                yes(self.registered_files)
            )?,
        }
        for note in &self.notes {
            write!(f, "; {note}")?;
        }
        Ok(())
    }
}
