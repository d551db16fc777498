//! The Winsock and completion-port calls of the IOCP backend, each wrapped once with its error
//! handling.

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::ptr;
use std::sync::{Once, OnceLock};

use windows_sys::Win32::Foundation::{
    CompareObjectHandles, ERROR_IO_PENDING, ERROR_NOT_FOUND, FALSE, HANDLE, INVALID_HANDLE_VALUE,
    TRUE,
};
use windows_sys::Win32::Networking::WinSock::{
    AF_INET, AF_INET6, FIONBIO, INVALID_SOCKET, IPPROTO_TCP, SIO_BASE_HANDLE,
    SO_UPDATE_ACCEPT_CONTEXT, SOCK_STREAM, SOCKADDR, SOCKADDR_IN, SOCKADDR_IN6, SOCKADDR_STORAGE,
    SOCKET, SOCKET_ERROR, SOL_SOCKET, WSA_FLAG_NO_HANDLE_INHERIT, WSA_FLAG_OVERLAPPED,
    WSA_IO_PENDING, WSABUF, WSADATA, WSAEWOULDBLOCK, WSAEnumProtocolsW, WSAGetLastError,
    WSAGetOverlappedResult, WSAIoctl, WSAPROTOCOL_INFOW, WSARecv, WSASend, WSASocketW, WSAStartup,
    XP1_IFS_HANDLES, closesocket, getsockname, ioctlsocket, recv, setsockopt,
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

/// The last Win32 error as an `io::Error` (`GetLastError`).
fn last_error() -> io::Error {
    io::Error::last_os_error()
}

/// Whether every TCP provider, base or layered, hands out IFS handles (`XP1_IFS_HANDLES`):
/// real file handles of the kernel's socket driver, on which `SetFileCompletionNotificationModes`
/// and `CancelIoEx` do what they say. A non-IFS layered provider (an old firewall or proxy LSP)
/// completes operations itself: there skip-on-success can lose a packet, or deliver one for an
/// operation that already completed at once (its `OVERLAPPED` then serves two operations).
/// Checked once per process with `WSAEnumProtocolsW`, as Go's `internal/poll` and libuv do.
pub(super) fn ifs_handles() -> bool {
    static IFS: OnceLock<bool> = OnceLock::new();
    *IFS.get_or_init(|| {
        startup();
        let protocols = [IPPROTO_TCP, 0];
        let mut infos = vec![MaybeUninit::<WSAPROTOCOL_INFOW>::uninit(); 64];
        let mut len = (infos.len() * size_of::<WSAPROTOCOL_INFOW>()) as u32;
        // SAFETY:
        // - the protocol list is zero-terminated, and `infos` is writable for `len` bytes;
        // - on success the call returns how many entries it wrote, from the start of `infos`,
        //   so those are initialised (the closure reads only them).
        let flags: Option<Vec<u32>> = unsafe {
            let n = WSAEnumProtocolsW(protocols.as_ptr(), infos.as_mut_ptr().cast(), &mut len);
            (n != SOCKET_ERROR).then(|| {
                infos[..n as usize]
                    .iter()
                    .map(|info| info.assume_init_ref().dwServiceFlags1)
                    .collect()
            })
        };
        match flags {
            Some(flags) if flags.iter().all(|f| f & XP1_IFS_HANDLES != 0) => true,
            Some(_) => {
                tracing::info!(
                    "iocp: a TCP socket provider without IFS handles (a layered provider) is \
                     installed: every operation posts a packet (no skip-on-success)"
                );
                false
            }
            None => {
                tracing::warn!(
                    error = %wsa_error(),
                    "iocp: WSAEnumProtocolsW failed; every operation posts a packet"
                );
                false
            }
        }
    })
}

/// The base provider's handle of `socket` (`SIO_BASE_HANDLE`): the kernel's own socket under any
/// layered provider, which `CancelIoEx` can find operations on.
pub(super) fn base_handle(socket: SOCKET) -> io::Result<SOCKET> {
    let mut base = INVALID_SOCKET;
    let mut bytes = 0u32;
    // SAFETY: no input; the output is a `SOCKET` local of the size given; no `OVERLAPPED`.
    let r = unsafe {
        WSAIoctl(
            socket,
            SIO_BASE_HANDLE,
            ptr::null(),
            0,
            (&mut base as *mut SOCKET).cast(),
            size_of::<SOCKET>() as u32,
            &mut bytes,
            ptr::null_mut(),
            None,
        )
    };
    if r != 0 {
        return Err(wsa_error());
    }
    Ok(base)
}

/// Whether two socket handles name the same socket (duplicates of one another), by the kernel
/// object they refer to (`CompareObjectHandles`; the base handles under a layered provider).
pub(super) fn same_socket(a: SOCKET, b: SOCKET) -> bool {
    if a == b {
        return true;
    }
    let (a, b) = if ifs_handles() {
        (a, b)
    } else {
        match (base_handle(a), base_handle(b)) {
            (Ok(a), Ok(b)) => (a, b),
            _ => return false,
        }
    };
    // SAFETY: compares two handle values; an invalid one makes the call return false.
    unsafe { CompareObjectHandles(a as HANDLE, b as HANDLE) != FALSE }
}

/// Starts Winsock once for the process (never stopped: sockets may outlive any one port).
pub(super) fn startup() {
    static START: Once = Once::new();
    START.call_once(|| {
        let mut data = MaybeUninit::<WSADATA>::uninit();
        // SAFETY: `data` is writable for a `WSADATA`, which the call fills (it is not read
        // here). A failure is seen again by the first socket call, which reports it.
        let _ = unsafe { WSAStartup(0x0202, data.as_mut_ptr()) };
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
///
/// Only where every TCP provider hands out IFS handles ([`ifs_handles`]): Microsoft documents the
/// mode as safe only then, and the call's success proves nothing.
pub(super) fn skip_completion_on_success(socket: SOCKET) -> bool {
    if !ifs_handles() {
        return false;
    }
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
    let mut lens = [0u32; MAX_WSABUFS];
    let count = gather(bufs.iter().map(|b| b.len()), &mut lens);
    for ((dst, src), &len) in wsabufs.iter_mut().zip(bufs).zip(&lens[..count]) {
        *dst = WSABUF {
            len,
            buf: src.as_ptr().cast_mut(),
        };
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

/// The lengths of the `WSABUF`s that gather buffers of `lens` bytes into one `WSASend` (at most
/// `out.len()` of them), and how many there are. The byte count of one `WSASend` is a `u32`:
/// gathering stops before the total passes `u32::MAX` (the last buffer taken may be cut short),
/// and what is left over is a partial send, which the caller continues.
pub(super) fn gather(lens: impl Iterator<Item = usize>, out: &mut [u32]) -> usize {
    let mut room = u32::MAX;
    let mut count = 0;
    for (dst, len) in out.iter_mut().zip(lens) {
        if room == 0 {
            break;
        }
        let take = u32::try_from(len).unwrap_or(u32::MAX).min(room);
        *dst = take;
        count += 1;
        room -= take;
        if take as usize != len {
            break;
        }
    }
    count
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

/// Asks the pending operation of `overlapped` on `handle` to end early (`CancelIoEx`, on the base
/// provider's handle where a layered provider is not IFS, as libuv does). Returns false when
/// there was nothing to cancel: the operation has completed and its packet is on the way, or it
/// was never started. Any other failure is logged as a warning: the operation then runs until it
/// ends by itself (a connection being closed waits for it).
///
/// # Safety
///
/// `overlapped` must be the address of an `OVERLAPPED` of this port (it is only compared, never
/// written, by the call).
pub(super) unsafe fn cancel(handle: SOCKET, overlapped: *const OVERLAPPED) -> bool {
    let handle = if ifs_handles() {
        handle
    } else {
        base_handle(handle).unwrap_or(handle)
    };
    // SAFETY: `CancelIoEx` looks the address up among the handle's pending operations; it does
    // not dereference it.
    if unsafe { CancelIoEx(handle as HANDLE, overlapped) } != FALSE {
        return true;
    }
    let e = last_error();
    if e.raw_os_error() != Some(ERROR_NOT_FOUND as i32) {
        tracing::warn!(error = %e, "iocp: CancelIoEx failed; the operation runs on");
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
    let mut storage = MaybeUninit::<SOCKADDR_STORAGE>::zeroed();
    let mut len = size_of::<SOCKADDR_STORAGE>() as i32;
    // SAFETY:
    // - Winsock writes at most `len` bytes into `storage` and the length into `len`;
    // - on success `storage` holds `len` bytes of a socket address (and zeroes after them), which
    //   is what `to_socket_addr` reads.
    let addr = unsafe {
        if getsockname(socket, storage.as_mut_ptr().cast(), &mut len) != 0 {
            return Err(wsa_error());
        }
        to_socket_addr(storage.as_ptr().cast(), len)
    };
    addr.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an IPv4 or IPv6 socket"))
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
            // SAFETY:
            // - `len` covers a whole `SOCKADDR_IN`; plain old data, read unaligned;
            // - every variant of the `IN_ADDR` union is plain bytes.
            let (a, ip) = unsafe {
                let a = addr.cast::<SOCKADDR_IN>().read_unaligned();
                (a, a.sin_addr.S_un.S_addr)
            };
            let ip = Ipv4Addr::from(ip.to_ne_bytes());
            Some(SocketAddrV4::new(ip, u16::from_be(a.sin_port)).into())
        }
        AF_INET6 if len >= size_of::<SOCKADDR_IN6>() as i32 => {
            // SAFETY:
            // - `len` covers a whole `SOCKADDR_IN6`; plain old data, read unaligned;
            // - every variant of its unions is plain bytes.
            let (a, ip, scope) = unsafe {
                let a = addr.cast::<SOCKADDR_IN6>().read_unaligned();
                (a, a.sin6_addr.u.Byte, a.Anonymous.sin6_scope_id)
            };
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
