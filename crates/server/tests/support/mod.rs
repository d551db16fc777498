//! What the integration tests share: starting a server on `127.0.0.1:0` with a chosen backend,
//! clients with time limits, random data, and the macro that runs each test on every backend.

#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iocp_server::{BackendChoice, CloseReason, Config, Context, Handler, Server, SessionId};

/// No single socket operation of a test waits longer than this.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs each listed test function once per backend of the platform: `mod uring { fn name() }`
/// and `mod poll { .. }` on Linux, `mod poll` on other Unix systems, `mod iocp` on Windows.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        #[cfg(target_os = "linux")]
        mod uring {
            $(
                #[test]
                fn $name() {
                    if let Some(why) = $crate::support::uring_unavailable() {
                        eprintln!("skipped: io_uring unavailable: {why}");
                        return;
                    }
                    super::$name(iocp_server::BackendChoice::Uring);
                }
            )*
        }
        #[cfg(unix)]
        mod poll {
            $(
                #[test]
                fn $name() {
                    super::$name(iocp_server::BackendChoice::Poll);
                }
            )*
        }
        #[cfg(windows)]
        mod iocp {
            $(
                #[test]
                fn $name() {
                    super::$name(iocp_server::BackendChoice::Iocp);
                }
            )*
        }
    };
}

/// Why io_uring cannot be used here, if it cannot.
///
/// The probe runs on a thread of its own: tearing a ring down queues work for the thread that
/// created it, which makes one blocking call with a timeout on that thread fail with `EINTR`.
pub fn uring_unavailable() -> Option<String> {
    std::thread::spawn(|| {
        let config = iocp_driver::Config {
            backend: BackendChoice::Uring,
            capacity: 1,
            ..Default::default()
        };
        iocp_driver::Driver::new(&config)
            .err()
            .map(|e| e.to_string())
    })
    .join()
    .unwrap()
}

/// A test configuration: loopback, port 0, two workers, the given backend.
pub fn config(backend: BackendChoice) -> Config {
    Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        workers: 2,
        max_sessions: 1024,
        backend,
        linger: Duration::from_secs(3),
        ..Config::default()
    }
}

/// Starts `handler` and checks that the server runs on the backend asked for.
pub fn start<H: Handler>(config: Config, handler: H) -> Server {
    let asked = config.backend;
    let server = Server::start(config, handler).expect("server starts");
    match asked {
        BackendChoice::Uring => assert_eq!(server.backend(), iocp_server::Backend::Uring),
        BackendChoice::Poll => assert_eq!(server.backend(), iocp_server::Backend::Poll),
        BackendChoice::Iocp => assert_eq!(server.backend(), iocp_server::Backend::Iocp),
        _ => {}
    }
    server
}

/// Shuts the server down and fails the test if that takes longer than `limit`.
pub fn stop_within(server: Server, limit: Duration) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(server.shutdown());
    });
    match rx.recv_timeout(limit) {
        Ok(result) => result.expect("server stopped cleanly"),
        Err(_) => panic!("shutdown took longer than {limit:?}"),
    }
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Writes `data` and reads back exactly as many bytes, concurrently (so that a large message
/// cannot deadlock on full socket buffers), and returns what came back.
pub fn echo(stream: &mut TcpStream, data: &[u8]) -> Vec<u8> {
    let mut reader = stream.try_clone().unwrap();
    let len = data.len();
    let read = std::thread::spawn(move || {
        let mut back = vec![0; len];
        reader.read_exact(&mut back).map(|_| back)
    });
    stream.write_all(data).expect("write");
    read.join().unwrap().expect("read the echo")
}

/// Reads until end of stream (or an error such as a reset), returning what arrived.
pub fn read_to_end_or_reset(stream: &mut TcpStream) -> (Vec<u8>, Option<io::ErrorKind>) {
    let mut out = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (out, None),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => return (out, Some(e.kind())),
        }
    }
}

/// Half-closes and expects the end of stream with nothing (more) to read.
pub fn expect_eof(stream: &mut TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let (rest, error) = read_to_end_or_reset(stream);
    assert!(rest.is_empty(), "unexpected {} bytes", rest.len());
    assert!(
        error.is_none() || error == Some(io::ErrorKind::ConnectionReset),
        "unexpected {error:?}"
    );
}

/// A small deterministic generator (xorshift64*), so failures can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A size from 1 to `max`, spread evenly over the orders of magnitude.
    pub fn size(&mut self, max: usize) -> usize {
        let bits = (usize::BITS - max.leading_zeros()) as u64;
        let cap = 1usize << (self.next_u64() % bits + 1);
        (self.next_u64() as usize % cap.min(max)) + 1
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    /// A message of random size (see [`Rng::size`]) and random content.
    pub fn message(&mut self, max: usize) -> Vec<u8> {
        let len = self.size(max);
        self.bytes(len)
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.fill(&mut v);
        v
    }
}

/// Records the handler's `on_connect` and `on_close` calls for the test to wait on.
#[derive(Default)]
pub struct Log {
    pub connected: Mutex<Vec<SessionId>>,
    pub closed: Mutex<Vec<(SessionId, CloseReason)>>,
}

impl Log {
    pub fn connected(&self) -> Vec<SessionId> {
        self.connected.lock().unwrap().clone()
    }

    pub fn closed(&self) -> Vec<(SessionId, CloseReason)> {
        self.closed.lock().unwrap().clone()
    }
}

/// The seed's echo, recording every connect and close in a [`Log`].
pub struct RecordingEcho(pub Arc<Log>);

impl Handler for RecordingEcho {
    type Session = ();

    fn on_connect(&self, _: &mut Context<'_>, session: SessionId, _: SocketAddr) {
        self.0.connected.lock().unwrap().push(session);
    }

    fn on_receive(&self, ctx: &mut Context<'_>, session: SessionId, data: &[u8]) {
        // A failure closes the session; the test then sees the connection end early.
        let _ = ctx.send(session, data);
    }

    fn on_close(&self, _: &mut Context<'_>, session: SessionId, reason: CloseReason) {
        self.0.closed.lock().unwrap().push((session, reason));
    }
}

/// Polls `cond` until it holds, failing the test after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The Wine version, when the tests run under Wine (a Windows build run on Linux), for the few
/// checks that Wine cannot pass; they say so when they are skipped.
#[cfg(windows)]
pub fn wine() -> Option<String> {
    use std::ffi::{CStr, c_char, c_void};

    #[link(name = "kernel32")]
    unsafe extern "system" {
        fn GetModuleHandleA(name: *const c_char) -> *mut c_void;
        fn GetProcAddress(module: *mut c_void, name: *const c_char) -> *mut c_void;
    }
    // SAFETY: both names are NUL-terminated; `ntdll.dll` is loaded in every process, and a
    // missing export gives a null pointer.
    let f = unsafe {
        GetProcAddress(
            GetModuleHandleA(c"ntdll.dll".as_ptr()),
            c"wine_get_version".as_ptr(),
        )
    };
    if f.is_null() {
        return None;
    }
    // SAFETY: Wine's `wine_get_version` takes nothing and returns a static NUL-terminated string.
    let version = unsafe {
        let get: unsafe extern "C" fn() -> *const c_char = std::mem::transmute(f);
        CStr::from_ptr(get())
    };
    Some(version.to_string_lossy().into_owned())
}

/// The Wine version, when the tests run under Wine: never on this platform.
#[cfg(not(windows))]
pub fn wine() -> Option<String> {
    None
}
