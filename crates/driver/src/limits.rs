//! The process's limit on open descriptors, which caps how many connections can be open at once.

use std::io;

/// Raises the soft limit on open file descriptors (`RLIMIT_NOFILE`) towards `wanted`, as far as
/// the hard limit allows, and returns the soft limit now in force. The hard limit is left alone.
///
/// Every connection holds one descriptor: a server that wants `max_sessions` connections calls
/// this at start. On Windows sockets are not limited this way; it returns `wanted`.
#[cfg(unix)]
#[allow(clippy::unnecessary_cast)] // `rlim_t` is `u64` on Linux, not on every Unix.
pub fn raise_open_file_limit(wanted: u64) -> io::Result<u64> {
    let mut limit = open_file_limit()?;
    let current = limit.rlim_cur as u64;
    if current >= wanted {
        return Ok(current);
    }
    let raised = (wanted as libc::rlim_t).min(limit.rlim_max);
    if raised <= limit.rlim_cur {
        return Ok(current);
    }
    limit.rlim_cur = raised;
    // SAFETY: `limit` is a valid `rlimit` whose soft value does not exceed its hard value.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(raised as u64)
}

/// The soft and hard `RLIMIT_NOFILE`.
#[cfg(unix)]
pub(crate) fn open_file_limit() -> io::Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable `rlimit`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit)
}

/// Raises the soft limit on open file descriptors (no such limit on Windows sockets).
#[cfg(windows)]
pub fn raise_open_file_limit(wanted: u64) -> io::Result<u64> {
    Ok(wanted)
}

/// The soft and hard limits on open file descriptors (`RLIMIT_NOFILE`), `u64::MAX` for none.
#[cfg(unix)]
#[allow(clippy::unnecessary_cast)] // `rlim_t` is `u64` on Linux, not on every Unix.
pub fn open_file_limits() -> io::Result<(u64, u64)> {
    let limit = open_file_limit()?;
    let value = |v: libc::rlim_t| {
        if v == libc::RLIM_INFINITY {
            u64::MAX
        } else {
            v as u64
        }
    };
    Ok((value(limit.rlim_cur), value(limit.rlim_max)))
}

/// The soft and hard limits on open file descriptors: none on Windows sockets (`u64::MAX`).
#[cfg(windows)]
pub fn open_file_limits() -> io::Result<(u64, u64)> {
    Ok((u64::MAX, u64::MAX))
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn never_lowers_the_limit() {
        let before = raise_open_file_limit(0).unwrap();
        assert!(before > 0);
        assert_eq!(raise_open_file_limit(1).unwrap(), before);
        let raised = raise_open_file_limit(before + 1).unwrap();
        assert!(raised >= before);
    }
}
