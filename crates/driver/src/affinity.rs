//! Pinning a worker thread to one CPU.

use std::io;

/// Pins the calling thread to the `n`-th of the CPUs it may run on (counting modulo their
/// number), and returns that CPU's number.
///
/// Worker `n` of a thread-per-core server calls this with its own index, so that each worker keeps
/// its core (and its cache) and two workers never share one. The CPUs counted are those the thread
/// was allowed when called (`taskset`, cgroup cpusets), so pinning stays inside them.
///
/// Linux (`sched_setaffinity`) and Windows (`SetThreadAffinityMask`, within the process's
/// affinity mask); elsewhere it fails with [`io::ErrorKind::Unsupported`].
#[cfg(target_os = "linux")]
pub fn pin_current_thread(n: usize) -> io::Result<usize> {
    let size = size_of::<libc::cpu_set_t>();
    // SAFETY: `cpu_set_t` is plain old data; all-zero is the empty set.
    let mut allowed: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `allowed` is a valid, writable set of `size` bytes; 0 names the calling thread.
    if unsafe { libc::sched_getaffinity(0, size, &mut allowed) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below `CPU_SETSIZE`, the size of the set.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &allowed) })
        .collect();
    let Some(&cpu) = cpus.get(n % cpus.len().max(1)) else {
        return Err(io::Error::other("the thread may run on no CPU"));
    };
    // SAFETY: as above.
    let mut one: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` came from the set above, so it is below `CPU_SETSIZE`.
    unsafe { libc::CPU_SET(cpu, &mut one) };
    // SAFETY: `one` is a valid set of `size` bytes; 0 names the calling thread.
    if unsafe { libc::sched_setaffinity(0, size, &one) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cpu)
}

/// Pins the calling thread to the `n`-th of the CPUs it may run on (counting modulo their
/// number), and returns that CPU's number.
///
/// Worker `n` of a thread-per-core server calls this with its own index, so that each worker keeps
/// its core (and its cache) and two workers never share one. The CPUs counted are those the thread
/// was allowed when called (`taskset`, cgroup cpusets), so pinning stays inside them.
///
/// Linux (`sched_setaffinity`) and Windows (`SetThreadAffinityMask`; there the CPUs counted are
/// the process's affinity mask); elsewhere it fails with [`io::ErrorKind::Unsupported`].
#[cfg(windows)]
pub fn pin_current_thread(n: usize) -> io::Result<usize> {
    use windows_sys::Win32::System::Threading::{
        GetCurrentProcess, GetCurrentThread, GetProcessAffinityMask, SetThreadAffinityMask,
    };
    let (mut process, mut system) = (0usize, 0usize);
    // SAFETY: the pseudo-handle of this process and two valid, writable masks.
    if unsafe { GetProcessAffinityMask(GetCurrentProcess(), &mut process, &mut system) } == 0 {
        return Err(io::Error::last_os_error());
    }
    let cpus: Vec<usize> = (0..usize::BITS as usize)
        .filter(|&cpu| process & (1 << cpu) != 0)
        .collect();
    let Some(&cpu) = cpus.get(n % cpus.len().max(1)) else {
        return Err(io::Error::other("the process may run on no CPU"));
    };
    // SAFETY: the pseudo-handle of this thread and a mask inside the process's mask.
    if unsafe { SetThreadAffinityMask(GetCurrentThread(), 1 << cpu) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cpu)
}

/// Pinning is not supported on this platform: always fails with
/// [`io::ErrorKind::Unsupported`].
#[cfg(not(any(target_os = "linux", windows)))]
pub fn pin_current_thread(_n: usize) -> io::Result<usize> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "pinning threads to CPUs is supported on Linux and Windows",
    ))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn pins_to_an_allowed_cpu_and_wraps_around() {
        std::thread::spawn(|| {
            let first = pin_current_thread(0).unwrap();
            // Now only `first` is allowed: every index lands on it.
            assert_eq!(pin_current_thread(0).unwrap(), first);
            assert_eq!(pin_current_thread(7).unwrap(), first);
        })
        .join()
        .unwrap();
    }
}

#[cfg(all(test, windows))]
mod tests {
    use super::*;

    /// Windows counts the process's CPUs (Wine's view of them varies), so only check that
    /// pinning works and names a CPU the machine has.
    #[test]
    fn pins_to_a_cpu() {
        std::thread::spawn(|| {
            let cpu = pin_current_thread(0).unwrap();
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            assert!(cpu < cpus.max(64), "CPU {cpu}");
        })
        .join()
        .unwrap();
    }
}
