//! The few calls `std` and `socket2` do not offer: the open-file limit, the process's CPU time,
//! `IP_BIND_ADDRESS_NO_PORT`, and a server's resident memory. The only unsafe code of the binary.
#![allow(unsafe_code)]

use std::io;
use std::time::Duration;

use socket2::Socket;

/// What became of the open-file limit.
pub struct FdLimit {
    /// The soft limit now in force.
    pub soft: u64,
    /// The hard limit (the most the soft limit can be raised to without privileges).
    pub hard: u64,
    /// The soft limit before it was raised.
    pub was: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (where the hard limit is unlimited, to
/// `want`).
#[cfg(unix)]
#[allow(clippy::unnecessary_cast)] // `rlim_t` is not `u64` on every Unix.
pub fn raise_fd_limit(want: u64) -> io::Result<FdLimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable `rlimit` for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let was = lim.rlim_cur as u64;
    let target = if lim.rlim_max == libc::RLIM_INFINITY {
        want.max(was) as libc::rlim_t
    } else {
        lim.rlim_max
    };
    if target > lim.rlim_cur {
        let new = libc::rlimit {
            rlim_cur: target,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `new` is a valid `rlimit` that lives across the call; the kernel only reads it.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
            return Err(io::Error::last_os_error());
        }
        lim.rlim_cur = target;
    }
    Ok(FdLimit {
        soft: lim.rlim_cur as u64,
        hard: lim.rlim_max as u64,
        was,
    })
}

/// Elsewhere there is no limit to raise.
#[cfg(not(unix))]
pub fn raise_fd_limit(want: u64) -> io::Result<FdLimit> {
    Ok(FdLimit {
        soft: want,
        hard: want,
        was: want,
    })
}

/// CPU time used by this process (all threads) so far.
#[derive(Clone, Copy, Default, Debug)]
pub struct CpuTime {
    /// Time in user mode.
    pub user: Duration,
    /// Time in the kernel.
    pub system: Duration,
}

impl CpuTime {
    /// CPU time used since `earlier`.
    pub fn since(self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }

    /// User plus system time.
    pub fn total(self) -> Duration {
        self.user + self.system
    }
}

/// `getrusage(RUSAGE_SELF)`: user and system time of every thread of the process.
#[cfg(unix)]
pub fn cpu_time() -> CpuTime {
    // SAFETY: `rusage` is plain data for which all-zero bytes are a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable `rusage` for the duration of the call.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return CpuTime::default();
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    CpuTime {
        user: tv(usage.ru_utime),
        system: tv(usage.ru_stime),
    }
}

/// Not measured on this platform.
#[cfg(not(unix))]
pub fn cpu_time() -> CpuTime {
    CpuTime::default()
}

/// Sets `IP_BIND_ADDRESS_NO_PORT` on a socket about to be bound to a source address, so that
/// the port is chosen at `connect` for the full 4-tuple and not reserved at `bind` (which would
/// limit every source address to one connection per ephemeral port in all).
#[cfg(target_os = "linux")]
pub fn bind_address_no_port(socket: &Socket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY:
    // - the descriptor belongs to `socket`, which outlives the call;
    // - `one` is a valid `c_int` that lives across the call, and the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Not available on this platform: `bind` picks the port.
#[cfg(not(target_os = "linux"))]
pub fn bind_address_no_port(_socket: &Socket) -> io::Result<()> {
    Ok(())
}

/// Resident memory of process `pid` in bytes (`VmRSS` of `/proc/PID/status`).
pub fn resident_memory(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| io::Error::other(format!("no VmRSS line in /proc/{pid}/status")))
}
