//! The Winsock and completion-port calls of the IOCP backend, each wrapped once with its error
//! handling.

use std::io::{self, IoSlice};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::ptr;
use std::sync::Once;

use windows_sys::Win32::Foundation::{
    ERROR_IO_PENDING, ERROR_NOT_FOUND, FALSE, GetLastError, HANDLE, INVALID_HANDLE_VALUE, TRUE,
};
use windows_sys::Win32::Networking::WinSock::{
    AF_INET, AF_INET6, FIONBIO, INVALID_SOCKET, IPPROTO_TCP, SO_UPDATE_ACCEPT_CONTEXT, SOCK_STREAM,
    SOCKADDR, SOCKADDR_IN, SOCKADDR_IN6, SOCKADDR_STORAGE, SOCKET, SOCKET_ERROR, SOL_SOCKET,
    WSA_FLAG_NO_HANDLE_INHERIT, WSA_FLAG_OVERLAPPED, WSA_IO_PENDING, WSABUF, WSADATA,
    WSAEWOULDBLOCK, WSAGetLastError, WSAGetOverlappedResult, WSARecv, WSASend, WSASocketW,
    WSAStartup, closesocket, getsockname, ioctlsocket, recv, setsockopt,
};
use windows_sys::Win32::Storage::FileSystem::SetFileCompletionNotificationModes;
use windows_sys::Win32::System::IO::{CancelIoEx, CreateIoCompletionPort, OVERLAPPED};
use windows_sys::Win32::System::WindowsProgramming::{
    FILE_SKIP_COMPLETION_PORT_ON_SUCCESS, FILE_SKIP_SET_EVENT_ON_HANDLE,
};

/// Most buffers one `WSASend` gathers; the caller gathers no more (`queue::MAX_IOVECS`).
pub(super) const MAX_WSABUFS: usize = 64;
const _: () = assert!(MAX_WSABUFS >= crate::queue::MAX_IOVECS);

/// The last Winsock error as an `io::Error`.
fn wsa_error() -> io::Error {
    // SAFETY: reads this thread's last Winsock error; no memory is involved.
    io::Error::from_raw_os_error(unsafe { WSAGetLastError() })
}

/// The last Win32 error as an `io::Error`.
fn last_error() -> io::Error {
    // SAFETY: reads this thread's last error; no memory is involved.
    io::Error::from_raw_os_error(unsafe { GetLastError() } as i32)
}

/// Starts Winsock once for the process (never stopped: sockets may outlive any one port).
pub(super) fn startup() {
    static START: Once = Once::new();
    START.call_once(|| {
        // SAFETY: `WSADATA` is plain old data, written by `WSAStartup`.
        let mut data: WSADATA = unsafe { std::mem::zeroed() };
        // SAFETY: `data` is a valid, writable `WSADATA` for the call. A failure is seen again by
        // the first socket call, which reports it.
        let _ = unsafe { WSAStartup(0x0202, &mut data) };
    });
}

/// A new completion port (`CreateIoCompletionPort` without a file). One thread waits on it, so
/// it lets one thread run at a time (Wine does not enforce the number, and needs not to).
pub(super) fn create_port() -> io::Result<HANDLE> {
    // SAFETY: creating a port passes no memory; the result is checked.
    let port = unsafe { CreateIoCompletionPort(INVALID_HANDLE_VALUE, ptr::null_mut(), 0, 1) };
    if port.is_null() {
        return Err(last_error());
    }
    Ok(port)
}

/// Associates `socket` with `port`: its completions arrive there with `key`. Fails (with
/// `ERROR_INVALID_PARAMETER`) if the socket is already associated with a port, this one included.
pub(super) fn associate(port: HANDLE, socket: SOCKET, key: usize) -> io::Result<()> {
    // SAFETY: passes two handles and an integer; a bad handle is reported as an error.
    let r = unsafe { CreateIoCompletionPort(socket as HANDLE, port, key, 0) };
    if r.is_null() {
        return Err(last_error());
    }
    Ok(())
}

/// `SetFileCompletionNotificationModes(FILE_SKIP_COMPLETION_PORT_ON_SUCCESS |
/// FILE_SKIP_SET_EVENT_ON_HANDLE)`: an operation that succeeds at once posts no packet, and the
/// socket's internal event is not signalled. Returns whether the mode is in effect; when it is not,
/// every operation, even one that succeeded at once, posts a packet, and the backend waits for it.
pub(super) fn skip_completion_on_success(socket: SOCKET) -> bool {
    let flags = (FILE_SKIP_COMPLETION_PORT_ON_SUCCESS | FILE_SKIP_SET_EVENT_ON_HANDLE) as u8;
    // SAFETY: passes a handle and flags; a bad handle is reported as an error.
    let ok = unsafe { SetFileCompletionNotificationModes(socket as HANDLE, flags) } != FALSE;
    if !ok {
        tracing::debug!(
            error = %last_error(),
            "iocp: SetFileCompletionNotificationModes failed; every operation will post a packet"
        );
    }
    ok
}

/// How an overlapped call started.
pub(super) enum Started {
    /// It completed at once with this many bytes.
    Done(usize),
    /// It is pending: its packet will arrive on the port.
    Pending,
}

/// Posts a zero-byte `WSARecv`: it completes when data (or the end of stream, or an error) is
/// there, without holding any buffer while the connection is idle.
///
/// # Safety
///
/// `overlapped` must be zeroed and stay valid, and not be used for another operation, until the
/// operation has completed (its packet was dequeued, or this returned `Done` on a socket in
/// skip-on-success mode, or an error).
pub(super) unsafe fn recv_zero(socket: SOCKET, overlapped: *mut OVERLAPPED) -> io::Result<Started> {
    let buf = WSABUF {
        len: 0,
        buf: ptr::null_mut(),
    };
    let mut flags = 0u32;
    let mut received = 0u32;
    // SAFETY:
    // - `buf` describes no memory, and Winsock copies the `WSABUF` array before returning;
    // - `received` and `flags` are valid for the call;
    // - `overlapped` stays valid until completion (the caller's promise).
    let r = unsafe { WSARecv(socket, &buf, 1, &mut received, &mut flags, overlapped, None) };
    started(r, received)
}

/// Posts a `WSASend` gathering `bufs` (at most [`MAX_WSABUFS`] of them; each slice at most
/// `u32::MAX` bytes: what is left over is a partial send, which the caller continues).
///
/// # Safety
///
/// The bytes of `bufs` must stay valid and unchanged, and `overlapped` zeroed, valid and unused by
/// anything else, until the operation has completed (see [`recv_zero`]). The `IoSlice` array
/// itself may go as soon as this returns: Winsock copies the `WSABUF`s.
pub(super) unsafe fn send(
    socket: SOCKET,
    bufs: &[IoSlice<'_>],
    overlapped: *mut OVERLAPPED,
) -> io::Result<Started> {
    let mut wsabufs = [WSABUF {
        len: 0,
        buf: ptr::null_mut(),
    }; MAX_WSABUFS];
    let mut count = 0;
    for (dst, src) in wsabufs.iter_mut().zip(bufs) {
        // A slice longer than 4 GiB is sent in part; nothing after it is gathered.
        let len = u32::try_from(src.len()).unwrap_or(u32::MAX);
        *dst = WSABUF {
            len,
            buf: src.as_ptr().cast_mut(),
        };
        count += 1;
        if len as usize != src.len() {
            break;
        }
    }
    let mut sent = 0u32;
    // SAFETY:
    // - the `WSABUF`s point at `bufs`' bytes, valid and unchanged until completion (the caller's
    //   promise); `WSASend` only reads through them (the `*mut` is the C type's);
    // - Winsock copies the `WSABUF` array itself before returning (documented for overlapped
    //   calls), so a stack array is fine;
    // - `overlapped` stays valid until completion (the caller's promise).
    let r = unsafe {
        WSASend(
            socket,
            wsabufs.as_ptr(),
            count as u32,
            &mut sent,
            0,
            overlapped,
            None,
        )
    };
    started(r, sent)
}

fn started(r: i32, bytes: u32) -> io::Result<Started> {
    if r == 0 {
        return Ok(Started::Done(bytes as usize));
    }
    let e = wsa_error();
    if e.raw_os_error() == Some(WSA_IO_PENDING) {
        Ok(Started::Pending)
    } else {
        Err(e)
    }
}

/// Reads what `socket` (non-blocking) has into `buf`; `WouldBlock` when nothing is there.
pub(super) fn recv_now(socket: SOCKET, buf: &mut [u8]) -> io::Result<usize> {
    let len = i32::try_from(buf.len()).unwrap_or(i32::MAX);
    // SAFETY: Winsock writes at most `len <= buf.len()` bytes at `buf`, borrowed mutably for the
    // call.
    let n = unsafe { recv(socket, buf.as_mut_ptr(), len, 0) };
    if n == SOCKET_ERROR {
        let e = wsa_error();
        if e.raw_os_error() == Some(WSAEWOULDBLOCK) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        return Err(e);
    }
    Ok(n as usize)
}

/// Asks the pending operation of `overlapped` on `handle` to end early (`CancelIoEx`). Returns
/// false when there was nothing to cancel: the operation has completed and its packet is on the
/// way, or it was never started.
///
/// # Safety
///
/// `overlapped` must be the address of an `OVERLAPPED` of this port (it is only compared, never
/// written, by the call).
pub(super) unsafe fn cancel(handle: SOCKET, overlapped: *const OVERLAPPED) -> bool {
    // SAFETY: `CancelIoEx` looks the address up among the handle's pending operations; it does
    // not dereference it.
    if unsafe { CancelIoEx(handle as HANDLE, overlapped) } != FALSE {
        return true;
    }
    let e = last_error();
    if e.raw_os_error() != Some(ERROR_NOT_FOUND as i32) {
        tracing::debug!(error = %e, "iocp: CancelIoEx failed");
    }
    false
}

/// The outcome of a completed operation whose packet said it failed: `Ok(bytes)` if Winsock says
/// it succeeded after all (an informational status), else its Winsock error (`WSAECONNRESET` for
/// a reset, where `GetQueuedCompletionStatus` would say `ERROR_NETNAME_DELETED`).
///
/// # Safety
///
/// `overlapped` must be the `OVERLAPPED` of an operation on `socket` that has completed.
pub(super) unsafe fn overlapped_result(
    socket: SOCKET,
    overlapped: *const OVERLAPPED,
) -> io::Result<usize> {
    let mut bytes = 0u32;
    let mut flags = 0u32;
    // SAFETY: the operation has completed (the caller's promise), so reading its `OVERLAPPED`
    // races with nothing; `bytes` and `flags` are valid for the call; `FALSE`: do not wait.
    let ok = unsafe { WSAGetOverlappedResult(socket, overlapped, &mut bytes, FALSE, &mut flags) };
    if ok != FALSE {
        Ok(bytes as usize)
    } else {
        Err(wsa_error())
    }
}

/// Whether a completion status (`OVERLAPPED::Internal`, an `NTSTATUS`) says success.
pub(super) fn nt_success(status: usize) -> bool {
    (status as u32 as i32) >= 0
}

/// A new TCP socket for `AcceptEx` to accept into: overlapped, not inherited by child processes.
pub(super) fn new_stream_socket(family: u16) -> io::Result<SOCKET> {
    startup();
    // SAFETY: no protocol info is passed; the result is checked.
    let socket = unsafe {
        WSASocketW(
            i32::from(family),
            SOCK_STREAM,
            IPPROTO_TCP,
            ptr::null(),
            0,
            WSA_FLAG_OVERLAPPED | WSA_FLAG_NO_HANDLE_INHERIT,
        )
    };
    if socket == INVALID_SOCKET {
        return Err(wsa_error());
    }
    Ok(socket)
}

/// Closes a socket this backend created and still owns.
pub(super) fn close(socket: SOCKET) {
    // SAFETY: the caller owns `socket` and uses it no more; a failure leaves nothing to undo.
    if unsafe { closesocket(socket) } != 0 {
        tracing::debug!(error = %wsa_error(), "iocp: closesocket failed");
    }
}

/// Makes `socket` non-blocking (`FIONBIO`): overlapped operations still pend, while `recv`
/// without an `OVERLAPPED` returns `WSAEWOULDBLOCK` instead of waiting.
pub(super) fn set_nonblocking(socket: SOCKET) -> io::Result<()> {
    let mut on = 1u32;
    // SAFETY: `on` is a valid `u32` for the call.
    if unsafe { ioctlsocket(socket, FIONBIO, &mut on) } != 0 {
        return Err(wsa_error());
    }
    Ok(())
}

/// `SO_UPDATE_ACCEPT_CONTEXT`: gives a socket accepted by `AcceptEx` the listener's properties, so
/// that `getpeername`, `getsockname`, `shutdown` and socket options work on it.
pub(super) fn update_accept_context(accepted: SOCKET, listener: SOCKET) -> io::Result<()> {
    // SAFETY: the option value is the listener's handle, read from a local of the size given.
    let r = unsafe {
        setsockopt(
            accepted,
            SOL_SOCKET,
            SO_UPDATE_ACCEPT_CONTEXT,
            (&listener as *const SOCKET).cast(),
            size_of::<SOCKET>() as i32,
        )
    };
    if r != 0 {
        return Err(wsa_error());
    }
    Ok(())
}

/// The local address of `socket`.
pub(super) fn local_addr(socket: SOCKET) -> io::Result<SocketAddr> {
    // SAFETY: `SOCKADDR_STORAGE` is plain old data; all zeroes is valid.
    let mut storage: SOCKADDR_STORAGE = unsafe { std::mem::zeroed() };
    let mut len = size_of::<SOCKADDR_STORAGE>() as i32;
    // SAFETY: Winsock writes at most `len` bytes into `storage` and the length into `len`.
    let r = unsafe {
        getsockname(
            socket,
            (&mut storage as *mut SOCKADDR_STORAGE).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(wsa_error());
    }
    // SAFETY: `storage` holds `len` bytes of a socket address written by `getsockname`.
    unsafe { to_socket_addr((&storage as *const SOCKADDR_STORAGE).cast(), len) }
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an IPv4 or IPv6 socket"))
}

/// An IPv4 or IPv6 socket address from Winsock's representation.
///
/// # Safety
///
/// `addr` must be null or point at `len` readable bytes.
pub(super) unsafe fn to_socket_addr(addr: *const SOCKADDR, len: i32) -> Option<SocketAddr> {
    if addr.is_null() || len < size_of::<u16>() as i32 {
        return None;
    }
    // SAFETY: at least the family is readable (checked above); unaligned reads, since a buffer
    // filled by `GetAcceptExSockaddrs` promises no alignment.
    let family = unsafe { ptr::addr_of!((*addr).sa_family).read_unaligned() };
    match family {
        AF_INET if len >= size_of::<SOCKADDR_IN>() as i32 => {
            // SAFETY: `len` covers a whole `SOCKADDR_IN`; plain old data, read unaligned.
            let a = unsafe { addr.cast::<SOCKADDR_IN>().read_unaligned() };
            // SAFETY: every variant of the `IN_ADDR` union is plain bytes.
            let ip = Ipv4Addr::from(unsafe { a.sin_addr.S_un.S_addr }.to_ne_bytes());
            Some(SocketAddrV4::new(ip, u16::from_be(a.sin_port)).into())
        }
        AF_INET6 if len >= size_of::<SOCKADDR_IN6>() as i32 => {
            // SAFETY: `len` covers a whole `SOCKADDR_IN6`; plain old data, read unaligned.
            let a = unsafe { addr.cast::<SOCKADDR_IN6>().read_unaligned() };
            // SAFETY: every variant of these unions is plain bytes.
            let (ip, scope) = unsafe { (a.sin6_addr.u.Byte, a.Anonymous.sin6_scope_id) };
            Some(
                SocketAddrV6::new(
                    Ipv6Addr::from(ip),
                    u16::from_be(a.sin6_port),
                    a.sin6_flowinfo,
                    scope,
                )
                .into(),
            )
        }
        _ => None,
    }
}

/// `TRUE` as the Win32 `BOOL` the extension functions return.
pub(super) const WIN_TRUE: i32 = TRUE;

/// `ERROR_IO_PENDING` as `WSAGetLastError` reports it after `AcceptEx`.
pub(super) const IO_PENDING: i32 = ERROR_IO_PENDING as i32;

/// The last Winsock error (after an extension function failed).
pub(super) fn last_wsa_error() -> io::Error {
    wsa_error()
}
