//! The few calls `std`, `socket2` and the driver do not offer: the process's CPU time,
//! `IP_BIND_ADDRESS_NO_PORT`, and a server's resident memory. The only unsafe code of the binary.
#![allow(unsafe_code)]

use std::io;
use std::time::Duration;

use socket2::Socket;

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
