//! Small helpers shared by the baseline echo servers (`echo-tokio`, `echo-mio`).
//!
//! The servers themselves live in `src/bin/`; this library only holds the bits
//! both need so they stay identical: the file-descriptor limit bump and the
//! policy for accept errors.

use std::io;
use std::time::Duration;

/// Default listen address of both baseline servers.
pub const DEFAULT_ADDR: &str = "127.0.0.1:11021";

/// How long to stop accepting after a resource-exhaustion accept error.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// Raises the soft `RLIMIT_NOFILE` limit to the hard limit.
///
/// Returns the soft limit in force afterwards.
pub fn raise_nofile_limit() -> io::Result<libc::rlim_t> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable `rlimit` for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid, initialised `rlimit` read by the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

/// Raises the descriptor limit, reporting (not failing on) an error.
pub fn raise_nofile_limit_or_warn() {
    if let Err(e) = raise_nofile_limit() {
        eprintln!("warning: could not raise RLIMIT_NOFILE: {e}");
    }
}

/// Whether an `accept` error should make the caller stop accepting for
/// [`ACCEPT_BACKOFF`] instead of retrying at once.
///
/// Errors that concern only the one connection being accepted (it was aborted
/// or reset before we got to it, or Linux passing up a pending network error,
/// see accept(2)) return `false`: the next `accept` may well succeed. Anything
/// else, above all running out of descriptors (`EMFILE`, `ENFILE`), buffers or
/// memory, returns `true`, since retrying immediately would only spin.
pub fn accept_needs_backoff(err: &io::Error) -> bool {
    #[cfg(target_os = "linux")]
    if err.raw_os_error() == Some(libc::ENONET) {
        return false;
    }
    !matches!(
        err.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::ECONNRESET
                | libc::EINTR
                | libc::EPROTO
                | libc::EPERM
                | libc::ENETDOWN
                | libc::ENETUNREACH
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emfile_backs_off_econnaborted_does_not() {
        assert!(accept_needs_backoff(&io::Error::from_raw_os_error(
            libc::EMFILE
        )));
        assert!(!accept_needs_backoff(&io::Error::from_raw_os_error(
            libc::ECONNABORTED
        )));
    }

    #[test]
    fn raising_the_limit_is_idempotent() {
        let a = raise_nofile_limit().unwrap();
        let b = raise_nofile_limit().unwrap();
        assert_eq!(a, b);
    }
}
