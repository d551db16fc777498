//! What the driver's tests share: a driver per backend, loopback clients with time limits,
//! reproducible data, an echo server over a driver, and the macro that runs each contract test on
//! every backend.
//!
//! Also included by the backend-specific tests beside each backend (`src/sys/*/tests.rs`, through
//! `#[path]`), so it names the crate `iocp_driver` in both places.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use socket2::Socket;

use iocp_driver::{BackendChoice, CloseMode, Config, ConnId, Driver, Event, Io, UringOptions};

/// No test waits longer than this for one thing.
pub const DEADLINE: Duration = Duration::from_secs(30);
/// Client sockets give up after this.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one turn of a test's loop waits at most.
pub const TURN: Option<Duration> = Some(Duration::from_millis(10));

/// Runs each listed test function (taking a [`Config`] for the backend) on every backend of the
/// platform: io_uring as it is and with each of its fall-backs forced (`mod uring`,
/// `mod uring_oneshot_accept`, `mod uring_oneshot_recv`, `mod uring_plain_fds`), `mod poll` on
/// Unix, `mod iocp` on Windows (under Wine in CI). io_uring tests are skipped, saying why, where
/// no ring can be made.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        #[cfg(target_os = "linux")]
        $crate::backend_tests!(@uring uring, iocp_driver::UringOptions::default(); $($name),*);
        #[cfg(target_os = "linux")]
        $crate::backend_tests!(@uring uring_oneshot_accept, iocp_driver::UringOptions {
            no_multishot_accept: true,
            ..Default::default()
        }; $($name),*);
        #[cfg(target_os = "linux")]
        $crate::backend_tests!(@uring uring_oneshot_recv, iocp_driver::UringOptions {
            no_multishot_recv: true,
            ..Default::default()
        }; $($name),*);
        #[cfg(target_os = "linux")]
        $crate::backend_tests!(@uring uring_plain_fds, iocp_driver::UringOptions {
            no_registered_files: true,
            ..Default::default()
        }; $($name),*);
        #[cfg(unix)]
        mod poll {
            $(
                #[test]
                fn $name() {
                    super::$name($crate::support::config(iocp_driver::BackendChoice::Poll));
                }
            )*
        }
        #[cfg(windows)]
        mod iocp {
            $(
                #[test]
                fn $name() {
                    super::$name($crate::support::config(iocp_driver::BackendChoice::Iocp));
                }
            )*
        }
    };
    (@uring $module:ident, $options:expr; $($name:ident),*) => {
        mod $module {
            $(
                #[test]
                fn $name() {
                    if let Some(why) = $crate::support::uring_unavailable() {
                        eprintln!("skipped: io_uring unavailable: {why}");
                        return;
                    }
                    let mut config = $crate::support::config(iocp_driver::BackendChoice::Uring);
                    config.uring = $options;
                    super::$name(config);
                }
            )*
        }
    };
}

/// A small driver configuration for `backend`.
pub fn config(backend: BackendChoice) -> Config {
    Config {
        backend,
        capacity: 16,
        ring_entries: 256,
        recv_buffer_size: 16 * 1024,
        recv_buffer_count: 64,
        accept_depth: 4,
        uring: UringOptions::default(),
    }
}

/// Why io_uring cannot be used here, if it cannot.
///
/// The probe runs on a thread of its own: tearing a ring down queues work for the thread that
/// created it, which makes one blocking call with a timeout on that thread fail with `EINTR`.
pub fn uring_unavailable() -> Option<String> {
    thread::spawn(|| {
        let config = Config {
            capacity: 1,
            ..config(BackendChoice::Uring)
        };
        Driver::new(&config).err().map(|e| e.to_string())
    })
    .join()
    .unwrap()
}

/// A driver as `config` says, with `capacity` slots; checks it runs on the backend asked for.
pub fn driver(config: &Config, capacity: u32) -> Driver {
    let config = Config {
        capacity,
        ..config.clone()
    };
    let driver = Driver::new(&config).expect("driver");
    let expected = match config.backend {
        BackendChoice::Uring => Some(iocp_driver::Backend::Uring),
        BackendChoice::Poll => Some(iocp_driver::Backend::Poll),
        BackendChoice::Iocp => Some(iocp_driver::Backend::Iocp),
        BackendChoice::Auto => None,
    };
    if let Some(expected) = expected {
        assert_eq!(driver.backend(), expected);
    }
    driver
}

/// A listener on loopback, handed to `driver`. The caller keeps the socket alive.
pub fn listen(driver: &mut Driver) -> (Socket, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let socket = Socket::from(listener);
    driver.io().start_accepting(&socket).unwrap();
    (socket, addr)
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
}

pub fn join<T>(handle: JoinHandle<T>) -> T {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Reproducible bytes: `xorshift64*`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    (0..len).map(|_| (rng.next() >> 56) as u8).collect()
}

/// `xorshift64*`: reproducible test data without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// How one echo client behaves.
#[derive(Clone, Copy, Default)]
pub struct Plan {
    pub seed: u64,
    pub len: usize,
    /// Write in pieces of at most this many bytes (random sizes), or all at once (0).
    pub piece: usize,
    /// Start reading only after a while, so that the server's sends find the socket full.
    pub read_late: bool,
}

/// Sends random bytes, half-closes, and checks that exactly those bytes come back, in order,
/// before the server closes.
pub fn echo_client(addr: SocketAddr, plan: Plan) -> JoinHandle<()> {
    thread::spawn(move || {
        let data = Arc::new(pattern(plan.seed, plan.len));
        let mut stream = connect(addr);
        let mut reader = stream.try_clone().unwrap();
        let expected = data.clone();
        let reading = thread::spawn(move || {
            if plan.read_late {
                thread::sleep(Duration::from_millis(200));
            }
            let mut got = Vec::with_capacity(expected.len());
            let mut buf = vec![0; 8192];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) => panic!("client read failed after {} bytes: {e}", got.len()),
                }
            }
            assert_eq!(
                got.len(),
                expected.len(),
                "echo of {} bytes",
                expected.len()
            );
            if let Some(at) = got.iter().zip(expected.iter()).position(|(a, b)| a != b) {
                panic!("echo differs at byte {at} of {}", expected.len());
            }
        });
        let mut rng = Rng::new(plan.seed ^ 0xABCD);
        let mut rest = &data[..];
        while !rest.is_empty() {
            let n = if plan.piece > 0 {
                (rng.next() % plan.piece as u64 + 1) as usize
            } else {
                rest.len()
            };
            let n = n.min(rest.len());
            stream.write_all(&rest[..n]).unwrap();
            rest = &rest[n..];
        }
        stream.shutdown(Shutdown::Write).unwrap();
        join(reading);
    })
}

/// An echo server over a driver: every byte received is sent back; the end of the client's
/// stream closes the connection once the echo is flushed.
pub struct Echo {
    pub free: Vec<u32>,
    /// Send buffer size set on accepted sockets, to make them fill up.
    pub send_buffer: Option<usize>,
    pub attached: Vec<ConnId>,
    pub closed: usize,
}

impl Echo {
    pub fn new(capacity: u32, send_buffer: Option<usize>) -> Echo {
        Echo {
            free: (0..capacity).rev().collect(),
            send_buffer,
            attached: Vec::new(),
            closed: 0,
        }
    }

    pub fn on_event(&mut self, io: &mut Io, event: Event<'_>) {
        match event {
            Event::Accepted(socket) => {
                let index = self.free.pop().expect("more connections than slots");
                if let Some(size) = self.send_buffer {
                    socket.set_send_buffer_size(size).unwrap();
                }
                self.attached.push(io.attach(index, socket).unwrap());
            }
            Event::Received { conn, data } => {
                io.send_copy(conn, data).unwrap();
            }
            Event::ReadClosed { conn } => io.close(conn, CloseMode::Flush).unwrap(),
            Event::Closed { conn, error } => {
                assert!(error.is_none(), "{conn:?} closed by {error:?}");
                self.free.push(conn.index);
                self.closed += 1;
            }
            Event::AcceptError(e) => panic!("accept failed: {e}"),
            Event::Woken => {}
        }
    }

    /// Serves until `connections` have been closed and every client has finished.
    pub fn serve(&mut self, driver: &mut Driver, clients: Vec<JoinHandle<()>>, connections: usize) {
        let deadline = Instant::now() + DEADLINE;
        let mut clients: Vec<_> = clients.into_iter().map(Some).collect();
        while self.closed < connections || clients.iter().any(Option::is_some) {
            assert!(
                Instant::now() < deadline,
                "timed out: {} of {connections} connections closed",
                self.closed
            );
            driver
                .turn(TURN, |io, event| self.on_event(io, event))
                .unwrap();
            for client in &mut clients {
                if client.as_ref().is_some_and(JoinHandle::is_finished) {
                    join(client.take().unwrap());
                }
            }
        }
        assert_eq!(self.closed, connections);
        assert_eq!(self.attached.len(), connections);
    }
}

/// Turns until `done` says so, handing events to `f` with `state`.
pub fn turn_until<S>(
    driver: &mut Driver,
    what: &str,
    state: &mut S,
    mut f: impl FnMut(&mut S, &mut Io, Event<'_>),
    done: impl Fn(&S, &mut Driver) -> bool,
) {
    let deadline = Instant::now() + DEADLINE;
    while !done(state, driver) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        driver.turn(TURN, |io, event| f(state, io, event)).unwrap();
    }
}

/// Accepts one connection into slot `index` and turns once more, so that its receive is armed.
pub fn accept_into(driver: &mut Driver, index: u32) -> ConnId {
    let mut conn = None;
    turn_until(
        driver,
        "a connection",
        &mut conn,
        |conn, io, event| match event {
            Event::Accepted(socket) => *conn = Some(io.attach(index, socket).unwrap()),
            other => panic!("unexpected {other:?}"),
        },
        |conn, _| conn.is_some(),
    );
    driver.turn(Some(Duration::ZERO), |_, _| {}).unwrap();
    conn.unwrap()
}

/// Turns until a connection is closed, which (with the end of its stream) is the only event
/// expected.
pub fn wait_closed(driver: &mut Driver) -> (ConnId, Option<std::io::Error>) {
    let mut closed = None;
    turn_until(
        driver,
        "the close",
        &mut closed,
        |closed, _, event| match event {
            Event::Closed { conn, error } => *closed = Some((conn, error)),
            Event::ReadClosed { .. } => {}
            other => panic!("unexpected {other:?}"),
        },
        |closed, _| closed.is_some(),
    );
    closed.unwrap()
}
