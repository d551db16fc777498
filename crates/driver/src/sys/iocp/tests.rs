//! The IOCP backend driven through the whole [`Driver`], on loopback (under Wine in CI).

use std::cell::Cell;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bytes::Bytes;
use socket2::{SockRef, Socket};

use crate::{Backend, BackendChoice, CloseMode, Config, ConnId, Driver, Event, Io};

use super::socket::Started;

thread_local! {
    /// Zero-byte receives of this thread's ports that succeeded at once (no packet).
    static RECV_AT_ONCE: Cell<u64> = const { Cell::new(0) };
    /// Sends of this thread's ports that succeeded at once (no packet).
    static SEND_AT_ONCE: Cell<u64> = const { Cell::new(0) };
    /// Sends of this thread's ports that pended.
    static SEND_PENDING: Cell<u64> = const { Cell::new(0) };
}

/// Called by the port when a zero-byte receive succeeded at once.
pub(super) fn count_recv_at_once() {
    RECV_AT_ONCE.with(|c| c.set(c.get() + 1));
}

/// Called by the port for each `WSASend`.
pub(super) fn count_send(started: &io::Result<Started>) {
    match started {
        Ok(Started::Done(_)) => SEND_AT_ONCE.with(|c| c.set(c.get() + 1)),
        Ok(Started::Pending) => SEND_PENDING.with(|c| c.set(c.get() + 1)),
        Err(_) => {}
    }
}

/// No test runs longer than this.
const DEADLINE: Duration = Duration::from_secs(30);
/// Client sockets give up after this.
const IO_TIMEOUT: Duration = Duration::from_secs(20);
const TURN: Option<Duration> = Some(Duration::from_millis(10));

fn driver(capacity: u32, accept_depth: u32) -> Driver {
    let config = Config {
        backend: BackendChoice::Iocp,
        capacity,
        accept_depth,
        ..Config::default()
    };
    let driver = Driver::new(&config).expect("iocp driver");
    assert_eq!(driver.backend(), Backend::Iocp);
    driver
}

/// A listener on loopback, handed to `driver`. The caller keeps the socket alive.
fn listen(driver: &mut Driver) -> (Socket, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let socket = Socket::from(listener);
    driver.io().listen(&socket).unwrap();
    (socket, addr)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
}

fn join<T>(handle: JoinHandle<T>) -> T {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Reproducible bytes: `xorshift64*`.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// Sends `len` random bytes (in pieces of `piece` bytes, after `delay`), half-closes, and checks
/// that exactly those bytes come back before the server closes. `read_late` starts reading only
/// after a while, so that the server's sends pend.
fn echo_client(
    addr: SocketAddr,
    seed: u64,
    len: usize,
    piece: usize,
    read_late: bool,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let data = pattern(seed, len);
        let mut stream = connect(addr);
        let mut reader = stream.try_clone().unwrap();
        let expected = data.clone();
        let reading = thread::spawn(move || {
            if read_late {
                thread::sleep(Duration::from_millis(200));
            }
            let mut got = Vec::with_capacity(expected.len());
            reader.read_to_end(&mut got).unwrap();
            assert_eq!(
                got.len(),
                expected.len(),
                "echo of {} bytes",
                expected.len()
            );
            assert!(got == expected, "echo of {} bytes differs", expected.len());
        });
        for chunk in data.chunks(piece.max(1)) {
            stream.write_all(chunk).unwrap();
        }
        stream.shutdown(Shutdown::Write).unwrap();
        join(reading);
    })
}

/// An echo server over a driver: every byte received is sent back; the end of the client's
/// stream closes the connection once the echo is flushed.
struct Echo {
    free: Vec<u32>,
    send_buffer: Option<usize>,
    attached: Vec<ConnId>,
    closed: usize,
}

impl Echo {
    fn new(capacity: u32, send_buffer: Option<usize>) -> Echo {
        Echo {
            free: (0..capacity).rev().collect(),
            send_buffer,
            attached: Vec::new(),
            closed: 0,
        }
    }

    fn on_event(&mut self, io: &mut Io, event: Event<'_>) {
        match event {
            Event::Accepted(socket) => {
                let index = self.free.pop().expect("more connections than slots");
                assert!(socket.peer_addr().unwrap().as_socket().is_some());
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
    fn serve(&mut self, driver: &mut Driver, clients: Vec<JoinHandle<()>>, connections: usize) {
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
    }
}

/// Turns until `done` says so, handing events to `f` with `state`.
fn turn_until<S>(
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

/// Accepts one connection into slot 0 and turns once more, so that its receive is posted.
fn accept_one(driver: &mut Driver) -> ConnId {
    let mut conn = None;
    turn_until(
        driver,
        "a connection",
        &mut conn,
        |conn, io, event| match event {
            Event::Accepted(socket) => *conn = Some(io.attach(0, socket).unwrap()),
            other => panic!("unexpected {other:?}"),
        },
        |conn, _| conn.is_some(),
    );
    driver.turn(Some(Duration::ZERO), |_, _| {}).unwrap();
    conn.unwrap()
}

/// Turns until a connection is closed, which is the only event expected.
fn wait_closed(driver: &mut Driver) -> (ConnId, Option<std::io::Error>) {
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

#[test]
fn echoes_every_byte_of_concurrent_connections() {
    let mut driver = driver(16, 4);
    let (_listener, addr) = listen(&mut driver);
    let sizes = [0, 1, 100, 4096, 16 * 1024, 65_537, 100_000, 1 << 20];
    let clients = sizes
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            echo_client(
                addr,
                i as u64 + 1,
                len,
                if i % 2 == 0 { 7_000 } else { len },
                false,
            )
        })
        .collect();
    let before = SEND_AT_ONCE.with(Cell::get);
    let mut echo = Echo::new(16, None);
    echo.serve(&mut driver, clients, sizes.len());
    assert!(
        SEND_AT_ONCE.with(Cell::get) > before,
        "no send succeeded at once: the skip-on-success path was not tested"
    );
}

/// Small send buffers and clients that read late: the server's `WSASend`s pend, some partly.
#[test]
fn echoes_through_pending_sends() {
    let mut driver = driver(8, 2);
    let (_listener, addr) = listen(&mut driver);
    let clients = (0..6)
        .map(|i| {
            echo_client(
                addr,
                100 + i,
                512 * 1024 - i as usize * 1000,
                20_000,
                i % 2 == 0,
            )
        })
        .collect();
    let before = SEND_PENDING.with(Cell::get);
    let mut echo = Echo::new(8, Some(4096));
    echo.serve(&mut driver, clients, 6);
    assert!(
        SEND_PENDING.with(Cell::get) > before,
        "no send pended: the test did not test pending sends"
    );
}

/// With one accept posted, a burst of connections is still accepted, one after the other.
#[test]
fn accepts_a_burst_deeper_than_the_posted_accepts() {
    let mut driver = driver(32, 1);
    let (_listener, addr) = listen(&mut driver);
    let clients = (0..24)
        .map(|i| echo_client(addr, i, 1000, 1000, false))
        .collect();
    let mut echo = Echo::new(32, None);
    echo.serve(&mut driver, clients, 24);
}

#[test]
fn reuses_slots_with_new_generations() {
    let mut driver = driver(1, 32);
    let (_listener, addr) = listen(&mut driver);
    let rounds = 20;
    let client = thread::spawn(move || {
        for i in 0..rounds {
            join(echo_client(
                addr,
                1000 + i,
                (i as usize * 997) % 5000,
                5000,
                false,
            ));
        }
    });
    let mut echo = Echo::new(1, None);
    echo.serve(&mut driver, vec![client], rounds as usize);
    let mut generations: Vec<_> = echo.attached.iter().map(|c| c.generation).collect();
    assert!(echo.attached.iter().all(|c| c.index == 0));
    generations.dedup();
    assert_eq!(generations.len(), rounds as usize);
}

/// Data already waiting when the receive is posted: the zero-byte `WSARecv` succeeds at once, and
/// with skip-on-success no packet comes; the backend reads it on its own.
#[test]
fn reads_data_that_arrived_before_the_receive() {
    let mut driver = driver(1, 1);
    let (_listener, addr) = listen(&mut driver);
    let mut stream = connect(addr);
    let mut socket = None;
    turn_until(
        &mut driver,
        "a connection",
        &mut socket,
        |socket, _, event| match event {
            Event::Accepted(s) => *socket = Some(s),
            other => panic!("unexpected {other:?}"),
        },
        |socket, _| socket.is_some(),
    );
    stream.write_all(b"early bird").unwrap();
    thread::sleep(Duration::from_millis(100));
    let before = RECV_AT_ONCE.with(Cell::get);
    let conn = driver.io().attach(0, socket.unwrap()).unwrap();
    let mut got = Vec::new();
    turn_until(
        &mut driver,
        "the early bytes",
        &mut got,
        |got, io, event| match event {
            Event::Received { conn: c, data } => {
                assert_eq!(c, conn);
                got.extend_from_slice(data);
                io.send_copy(c, data).unwrap();
            }
            other => panic!("unexpected {other:?}"),
        },
        |got, _| got.len() == 10,
    );
    assert_eq!(got, b"early bird");
    assert!(
        RECV_AT_ONCE.with(Cell::get) > before,
        "the zero-byte receive pended: the test did not test the skip-on-success path"
    );
    // The echo is submitted by the next turn.
    turn_until(
        &mut driver,
        "the echo to be sent",
        &mut (),
        |_, _, event| panic!("unexpected {event:?}"),
        |_, d| d.io().queued(conn) == Some(0),
    );
    let mut back = [0; 10];
    stream.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"early bird");
}

#[test]
fn close_cancels_an_idle_receive() {
    let mut driver = driver(1, 1);
    let (_listener, addr) = listen(&mut driver);
    let mut stream = connect(addr);
    let conn = accept_one(&mut driver);
    driver.io().close(conn, CloseMode::Flush).unwrap();
    let (c, error) = wait_closed(&mut driver);
    assert_eq!(c, conn);
    assert!(error.is_none(), "closed by {error:?}");
    assert_eq!(
        stream.read(&mut [0; 16]).unwrap(),
        0,
        "the client sees the end"
    );
}

/// `CancelIoEx` on a `WSASend` that pends because the peer does not read.
#[test]
fn abort_cancels_a_pending_send() {
    let mut driver = driver(1, 1);
    let (_listener, addr) = listen(&mut driver);
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let client = thread::spawn(move || {
        let stream = connect(addr);
        SockRef::from(&stream).set_recv_buffer_size(4096).unwrap();
        let _ = done_rx.recv_timeout(DEADLINE);
        drop(stream);
    });
    let conn = accept_one(&mut driver);
    driver
        .io()
        .socket(conn)
        .unwrap()
        .set_send_buffer_size(4096)
        .unwrap();
    driver
        .io()
        .send(conn, Bytes::from(vec![7; 16 << 20]))
        .unwrap();
    for _ in 0..20 {
        driver
            .turn(TURN, |_, event| panic!("unexpected {event:?}"))
            .unwrap();
    }
    assert!(
        driver.io().queued(conn).unwrap() > 0,
        "16 MiB sent to a client that does not read"
    );
    driver.io().close(conn, CloseMode::Abort).unwrap();
    let (c, error) = wait_closed(&mut driver);
    assert_eq!(c, conn);
    assert!(error.is_none(), "closed by {error:?}");
    done_tx.send(()).unwrap();
    join(client);
}

/// A reset while a send pends closes the connection with the error (whatever its code).
#[test]
fn peer_reset_while_sending_closes_with_an_error() {
    let mut driver = driver(1, 1);
    let (_listener, addr) = listen(&mut driver);
    let client = thread::spawn(move || {
        let mut stream = connect(addr);
        SockRef::from(&stream).set_recv_buffer_size(4096).unwrap();
        stream.write_all(b"go").unwrap();
        thread::sleep(Duration::from_millis(300));
        SockRef::from(&stream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    });
    let mut closed = None;
    turn_until(
        &mut driver,
        "the reset",
        &mut closed,
        |closed, io, event| match event {
            Event::Accepted(socket) => {
                socket.set_send_buffer_size(4096).unwrap();
                io.attach(0, socket).unwrap();
            }
            Event::Received { conn, .. } => {
                io.send(conn, Bytes::from(vec![1; 16 << 20])).unwrap();
            }
            Event::Closed { error, .. } => *closed = Some(error),
            Event::ReadClosed { .. } => {}
            other => panic!("unexpected {other:?}"),
        },
        |closed, _| closed.is_some(),
    );
    join(client);
    let error = closed.unwrap().expect("closed without an error");
    assert!(
        matches!(
            error.kind(),
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
        ),
        "closed by {error}"
    );
}

#[test]
fn waker_wakes_a_blocked_wait() {
    let mut driver = driver(1, 1);
    let waker = driver.waker();
    let start = Instant::now();
    let waking = thread::spawn(move || {
        thread::sleep(Duration::from_millis(50));
        waker.wake().unwrap();
        waker.wake().unwrap();
    });
    let mut woken = 0;
    while woken == 0 {
        assert!(start.elapsed() < DEADLINE, "never woken");
        driver
            .turn(Some(Duration::from_secs(10)), |_, event| {
                assert!(matches!(event, Event::Woken), "unexpected {event:?}");
                woken += 1;
            })
            .unwrap();
    }
    assert!(start.elapsed() < Duration::from_secs(5), "woken late");
    join(waking);

    // A wake-up before the wait makes it return at once.
    driver.waker().wake().unwrap();
    let start = Instant::now();
    let mut woken = false;
    driver
        .turn(Some(Duration::from_secs(10)), |_, event| {
            woken |= matches!(event, Event::Woken);
        })
        .unwrap();
    assert!(woken);
    assert!(start.elapsed() < Duration::from_secs(5));
}

/// `listen` again on the same listening socket (a new duplicate of it, whose association with
/// this port already exists) accepts the connections that waited meanwhile.
#[test]
fn stop_accepting_then_listen_again() {
    let mut driver = driver(4, 2);
    let (listener, addr) = listen(&mut driver);
    let count = |accepted: &mut usize, _: &mut Io, event: Event<'_>| match event {
        Event::Accepted(_) => *accepted += 1,
        other => panic!("unexpected {other:?}"),
    };
    let mut accepted = 0;
    let _first = connect(addr);
    turn_until(
        &mut driver,
        "the first connection",
        &mut accepted,
        count,
        |n, _| *n == 1,
    );
    driver.io().stop_accepting();
    turn_until(
        &mut driver,
        "the accept to end",
        &mut accepted,
        count,
        |_, d| !d.io().is_accepting(),
    );
    let _second = connect(addr);
    let _third = connect(addr);
    let until = Instant::now() + Duration::from_millis(200);
    while Instant::now() < until {
        driver
            .turn(TURN, |io, event| count(&mut accepted, io, event))
            .unwrap();
    }
    assert_eq!(accepted, 1, "accepted after stop_accepting");
    driver.io().listen(&listener).unwrap();
    turn_until(
        &mut driver,
        "the waiting connections",
        &mut accepted,
        count,
        |n, _| *n == 3,
    );
    assert!(driver.io().is_accepting());
}

/// Two ports asked to accept on one listener: the first owns its association and accepts; the
/// second stays armed without accepting, and ends with a cancellation when told to stop.
#[test]
fn a_second_port_on_the_same_listener_is_dormant() {
    let mut owner = driver(4, 2);
    let (listener, addr) = listen(&mut owner);
    owner.turn(Some(Duration::ZERO), |_, _| {}).unwrap();
    let mut dormant = driver(4, 2);
    dormant.io().listen(&listener).unwrap();
    dormant
        .turn(Some(Duration::ZERO), |_, e| panic!("unexpected {e:?}"))
        .unwrap();
    assert!(dormant.io().is_accepting());

    let _clients: Vec<_> = (0..3).map(|_| connect(addr)).collect();
    let mut accepted = 0;
    turn_until(
        &mut owner,
        "the connections",
        &mut accepted,
        |n, _, event| match event {
            Event::Accepted(_) => *n += 1,
            other => panic!("unexpected {other:?}"),
        },
        |n, _| *n == 3,
    );
    for _ in 0..5 {
        dormant
            .turn(TURN, |_, e| panic!("the dormant port reported {e:?}"))
            .unwrap();
    }
    dormant.io().stop_accepting();
    turn_until(
        &mut dormant,
        "the dormant accept to end",
        &mut (),
        |_, _, e| panic!("unexpected {e:?}"),
        |_, d| !d.io().is_accepting(),
    );
}

/// Dropping a driver with its accepts posted cancels them and waits for them (or leaks their
/// buffers): no write into freed memory, and the listener can be used by a new port after.
#[test]
fn dropping_an_accepting_driver_is_clean() {
    let listener = Socket::from(TcpListener::bind("127.0.0.1:0").unwrap());
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    for _ in 0..3 {
        let mut d = driver(8, 8);
        d.io().listen(&listener).unwrap();
        d.turn(Some(Duration::ZERO), |_, _| {}).unwrap();
        drop(d);
    }
    // The listener stays associated with the first (now closed) port: no other port can accept
    // on it. A client still connects (the backlog takes it).
    let _client = connect(addr);
}
