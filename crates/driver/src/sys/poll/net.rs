//! The socket calls of the readiness backend: non-blocking, and never raising `SIGPIPE`.

use std::io::{self, IoSlice};
use std::os::fd::FromRawFd;
use std::ptr;

use socket2::Socket;

use crate::sys::Raw;

/// Most slices one `sendmsg` takes (`UIO_MAXIOV` on Linux, `IOV_MAX` on macOS and the BSDs); the
/// caller gathers far fewer.
const MAX_IOV: usize = 1024;

/// `MSG_NOSIGNAL`: a peer that went away gives `EPIPE`, not `SIGPIPE`.
#[cfg(not(target_vendor = "apple"))]
const SEND_FLAGS: libc::c_int = libc::MSG_NOSIGNAL;
/// macOS has no `MSG_NOSIGNAL`; its sockets get `SO_NOSIGPIPE` instead (see [`no_sigpipe`]).
#[cfg(target_vendor = "apple")]
const SEND_FLAGS: libc::c_int = 0;

/// Whether sockets need [`no_sigpipe`] before the first send.
pub(super) const NEEDS_NO_SIGPIPE: bool = cfg!(target_vendor = "apple");

fn result(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Takes one pending connection off `listener`, non-blocking and close-on-exec (`accept4`).
#[cfg(not(target_vendor = "apple"))]
pub(super) fn accept(listener: Raw) -> io::Result<Socket> {
    // SAFETY: null address pointers ask for no peer address, so `accept4` writes no memory of
    // ours; a bad descriptor is reported as an error.
    let fd = unsafe {
        libc::accept4(
            listener,
            ptr::null_mut(),
            ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `accept4` just created `fd`; nothing else owns it.
    Ok(unsafe { Socket::from_raw_fd(fd) })
}

/// Takes one pending connection off `listener`, non-blocking, close-on-exec and without
/// `SIGPIPE` (macOS has no `accept4`).
#[cfg(target_vendor = "apple")]
pub(super) fn accept(listener: Raw) -> io::Result<Socket> {
    // SAFETY: null address pointers ask for no peer address, so `accept` writes no memory of
    // ours; a bad descriptor is reported as an error.
    let fd = unsafe { libc::accept(listener, ptr::null_mut(), ptr::null_mut()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `accept` just created `fd`; nothing else owns it.
    let socket = unsafe { Socket::from_raw_fd(fd) };
    let setup = socket
        .set_cloexec(true)
        .and_then(|()| socket.set_nonblocking(true))
        .and_then(|()| socket.set_nosigpipe(true));
    match setup {
        Ok(()) => Ok(socket),
        // macOS fails `setsockopt` on a connection the peer already reset: skip it like one that
        // was aborted before `accept`.
        Err(_) => Err(io::Error::from_raw_os_error(libc::ECONNABORTED)),
    }
}

/// Makes `listener` non-blocking, so that accepting until `EAGAIN` never blocks. The flag belongs
/// to the open file, so the owner's handle of the listener becomes non-blocking too.
pub(super) fn set_nonblocking(listener: Raw) -> io::Result<()> {
    // SAFETY: `F_GETFL` takes no argument and touches no memory of ours.
    let flags = unsafe { libc::fcntl(listener, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    if flags & libc::O_NONBLOCK != 0 {
        return Ok(());
    }
    // SAFETY: `F_SETFL` takes an integer argument and touches no memory of ours.
    if unsafe { libc::fcntl(listener, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads what `fd` has into `buf` (`recv`).
pub(super) fn recv(fd: Raw, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the kernel writes at most `buf.len()` bytes at `buf`, which is borrowed mutably for
    // the call.
    result(unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) })
}

/// Writes as much of `bufs` as `fd` takes, gathering (`sendmsg`, `MSG_NOSIGNAL` where it exists).
pub(super) fn send(fd: Raw, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: `msghdr` is plain old data; all zeroes means no address and no control data.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = bufs.as_ptr().cast::<libc::iovec>().cast_mut();
    msg.msg_iovlen = bufs.len().min(MAX_IOV) as _;
    // SAFETY:
    // - `IoSlice` is guaranteed to be ABI-compatible with `iovec` on Unix;
    // - every slice borrows memory that is valid for this call, and `sendmsg` only reads it (the
    //   `*mut` of `msg_iov` is the C type's, nothing is written through it);
    // - `msg` names no address and no control buffer.
    result(unsafe { libc::sendmsg(fd, &msg, SEND_FLAGS) })
}

/// Sets `SO_NOSIGPIPE` on `fd`, so that writing to a closed connection gives `EPIPE` rather than
/// killing the process (macOS, where sends cannot say `MSG_NOSIGNAL`).
#[cfg(target_vendor = "apple")]
pub(super) fn no_sigpipe(fd: Raw) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: passes a pointer to a local `c_int` and its exact size; the kernel only reads it.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_NOSIGPIPE,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Nothing to do where sends say `MSG_NOSIGNAL`.
#[cfg(not(target_vendor = "apple"))]
pub(super) fn no_sigpipe(_fd: Raw) -> io::Result<()> {
    Ok(())
}
