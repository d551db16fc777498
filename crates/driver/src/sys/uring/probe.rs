//! What the running kernel's io_uring can do, and why it is unavailable when it is.

use std::io;

/// The kernel release as `(major, minor)`, from `uname`.
pub(super) fn kernel_version() -> (u32, u32) {
    // SAFETY: `utsname` is plain old data and `uname` fills it.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `uts` is a valid, writable `utsname`.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return (0, 0);
    }
    let release: Vec<u8> = uts
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    parse_release(&String::from_utf8_lossy(&release))
}

fn parse_release(release: &str) -> (u32, u32) {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// One line saying why io_uring could not be used, with the likely cause and what to do.
pub(crate) fn explain_failure(error: &io::Error) -> String {
    let cause = match error.raw_os_error() {
        Some(libc::EPERM) => {
            let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default();
            if std::env::var_os(super::FORCE_FAILURE_ENV).is_some() {
                format!("forced by {}", super::FORCE_FAILURE_ENV)
            } else if !disabled.is_empty() && disabled != "0" {
                format!(
                    "sysctl kernel.io_uring_disabled = {disabled}; set it to 0 (or add this user \
                     to kernel.io_uring_group) to use io_uring"
                )
            } else {
                "a seccomp profile blocks io_uring_setup (Docker's default does: run with a \
                 profile that allows io_uring, e.g. --security-opt seccomp=unconfined)"
                    .to_owned()
            }
        }
        Some(libc::ENOSYS) => "the kernel has no io_uring (older than 5.1 or built without \
                               CONFIG_IO_URING), or a seccomp filter answers ENOSYS"
            .to_owned(),
        Some(libc::ENOMEM) => "RLIMIT_MEMLOCK is too small for the ring (kernels before 5.12 \
                               charge rings to it): raise `ulimit -l` or use fewer ring entries"
            .to_owned(),
        Some(libc::EINVAL) => {
            "the kernel rejected the ring setup or lacks a required operation (Linux 5.19 or \
             newer is needed)"
                .to_owned()
        }
        _ => "unexpected error from io_uring setup".to_owned(),
    };
    format!("io_uring unavailable ({error}): {cause}; using the poll backend")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_releases() {
        assert_eq!(parse_release("6.18.44-fc-v669"), (6, 18));
        assert_eq!(parse_release("5.4.0-150-generic"), (5, 4));
        assert_eq!(parse_release("garbage"), (0, 0));
    }

    #[test]
    fn explains_each_errno() {
        for errno in [libc::EPERM, libc::ENOSYS, libc::ENOMEM, libc::EINVAL] {
            let line = explain_failure(&io::Error::from_raw_os_error(errno));
            assert!(line.contains("using the poll backend"), "{line}");
        }
        let line = explain_failure(&io::Error::from_raw_os_error(libc::ENOMEM));
        assert!(line.contains("RLIMIT_MEMLOCK"), "{line}");
    }
}
