//! The readiness backend driven through the whole [`Driver`], on loopback.

use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bytes::Bytes;
use socket2::{SockRef, Socket};

use crate::{Backend, BackendChoice, CloseMode, Config, ConnId, Driver, Event, Io};

thread_local! {
    /// Sends of this thread's ports that found the socket full.
    static SEND_WOULD_BLOCK: Cell<u64> = const { Cell::new(0) };
    /// Connections of this thread's ports that stopped reading at the budget.
    static READ_BUDGET_SPENT: Cell<u64> = const { Cell::new(0) };
}

/// Called by the port when a connection has read its budget for one wait.
pub(super) fn count_read_budget_spent() {
    READ_BUDGET_SPENT.with(|c| c.set(c.get() + 1));
}

/// Called by [`super::Port::send`] when the socket took nothing.
pub(super) fn count_send_would_block() {
    SEND_WOULD_BLOCK.with(|c| c.set(c.get() + 1));
}

fn sends_that_would_block() -> u64 {
    SEND_WOULD_BLOCK.with(Cell::get)
}

/// No test runs longer than this.
const DEADLINE: Duration = Duration::from_secs(30);
/// Client sockets give up after this.
const IO_TIMEOUT: Duration = Duration::from_secs(20);
const TURN: Option<Duration> = Some(Duration::from_millis(10));

fn driver(capacity: u32) -> Driver {
    let config = Config {
        backend: BackendChoice::Poll,
        capacity,
        recv_buffer_size: 16 * 1024,
        ..Config::default()
    };
    let driver = Driver::new(&config).expect("poll driver");
    assert_eq!(driver.backend(), Backend::Poll);
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

/// `xorshift64*`: reproducible test data without a dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| (self.next() >> 56) as u8).collect()
    }
}

fn join<T>(handle: JoinHandle<T>) -> T {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// How one echo client behaves.
#[derive(Clone, Copy)]
struct Plan {
    seed: u64,
    len: usize,
    /// Write in random pieces rather than all at once.
    chunked: bool,
    /// Start reading only after a while, so that the server's sends find the socket full. (A
    /// small client receive buffer would do it too, but TCP's zero-window probing makes that
    /// take seconds.)
    slow_reader: bool,
}

/// Sends random bytes, half-closes, and checks that exactly those bytes come back before the
/// server closes.
fn echo_client(addr: SocketAddr, plan: Plan) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut rng = Rng::new(plan.seed);
        let data = Arc::new(rng.bytes(plan.len));
        let mut stream = connect(addr);
        let mut reader = stream.try_clone().unwrap();
        let expected = data.clone();
        let reading = thread::spawn(move || {
            if plan.slow_reader {
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
        let mut rest = &data[..];
        while !rest.is_empty() {
            let n = if plan.chunked {
                (rng.next() % 20_000 + 1) as usize
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
struct Echo {
    free: Vec<u32>,
    /// Send buffer size set on accepted sockets, to make them fill up.
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
        assert_eq!(self.attached.len(), connections);
    }
}

#[test]
fn echoes_every_byte_of_concurrent_connections() {
    let mut driver = driver(16);
    let (_listener, addr) = listen(&mut driver);
    let sizes = [0, 1, 100, 4096, 16 * 1024, 65_537, 100_000, 256 * 1024];
    let clients = sizes
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            let plan = Plan {
                seed: i as u64 + 1,
                len,
                chunked: i % 2 == 0,
                slow_reader: false,
            };
            echo_client(addr, plan)
        })
        .collect();
    let mut echo = Echo::new(16, None);
    echo.serve(&mut driver, clients, sizes.len());
}

#[test]
fn echoes_through_full_sockets() {
    let mut driver = driver(8);
    let (_listener, addr) = listen(&mut driver);
    let before = sends_that_would_block();
    let clients = (0..6)
        .map(|i| {
            let plan = Plan {
                seed: 100 + i,
                len: 256 * 1024 - i as usize * 1000,
                chunked: i % 3 == 0,
                slow_reader: i % 2 == 0,
            };
            echo_client(addr, plan)
        })
        .collect();
    let mut echo = Echo::new(8, Some(4096));
    echo.serve(&mut driver, clients, 6);
    assert!(
        sends_that_would_block() > before,
        "no send found a full socket: the test did not test waiting for writable"
    );
}

#[test]
fn a_fast_sender_is_read_across_waits() {
    let mut driver = driver(1);
    let (listener, addr) = listen(&mut driver);
    // Room for much more than one wait's budget to pile up before the server reads.
    listener.set_recv_buffer_size(4 << 20).unwrap();
    let before = READ_BUDGET_SPENT.with(Cell::get);
    let plan = Plan {
        seed: 7,
        len: 2 << 20,
        chunked: false,
        slow_reader: false,
    };
    let client = echo_client(addr, plan);
    let mut echo = Echo::new(1, None);
    turn_until(
        &mut driver,
        "the connection",
        &mut echo,
        Echo::on_event,
        |echo, _| !echo.attached.is_empty(),
    );
    // The receive is armed on the next turn, with the client's bytes already waiting.
    thread::sleep(Duration::from_millis(300));
    echo.serve(&mut driver, vec![client], 1);
    assert!(
        READ_BUDGET_SPENT.with(Cell::get) > before,
        "no connection read its whole budget: the test did not test reading across waits"
    );
}

#[test]
fn reuses_slots_with_new_generations() {
    let mut driver = driver(1);
    let (_listener, addr) = listen(&mut driver);
    let rounds = 30;
    let client = thread::spawn(move || {
        for i in 0..rounds {
            let plan = Plan {
                seed: 1000 + i,
                len: (i as usize * 997) % 5000,
                chunked: false,
                slow_reader: false,
            };
            join(echo_client(addr, plan));
        }
    });
    let mut echo = Echo::new(1, None);
    echo.serve(&mut driver, vec![client], rounds as usize);
    let mut generations: Vec<_> = echo.attached.iter().map(|c| c.generation).collect();
    assert!(echo.attached.iter().all(|c| c.index == 0));
    generations.dedup();
    assert_eq!(
        generations.len(),
        rounds as usize,
        "every connection got a new generation"
    );
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

/// What ended a connection.
type Closed = Option<(ConnId, Option<std::io::Error>)>;

/// Turns until a connection is closed, which is the only event expected.
fn wait_closed(driver: &mut Driver) -> (ConnId, Option<std::io::Error>) {
    let mut closed: Closed = None;
    turn_until(
        driver,
        "the close",
        &mut closed,
        |closed, _, event| match event {
            Event::Closed { conn, error } => *closed = Some((conn, error)),
            other => panic!("unexpected {other:?}"),
        },
        |closed, _| closed.is_some(),
    );
    closed.unwrap()
}

/// Accepts one connection into slot 0 and turns once more, so that its receive is armed.
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

#[test]
fn close_cancels_an_idle_receive() {
    let mut driver = driver(1);
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

#[test]
fn abort_cancels_a_send_waiting_for_room() {
    let mut driver = driver(1);
    let (_listener, addr) = listen(&mut driver);
    let (done_tx, done_rx) = mpsc::channel::<()>();
    // A client that never reads, until told to go.
    let client = thread::spawn(move || {
        let stream = connect(addr);
        SockRef::from(&stream).set_recv_buffer_size(4096).unwrap();
        let _ = done_rx.recv_timeout(DEADLINE);
        drop(stream);
    });
    let conn = accept_one(&mut driver);
    let socket = driver.io().socket(conn).unwrap();
    socket.set_send_buffer_size(4096).unwrap();
    let before = sends_that_would_block();
    driver
        .io()
        .send(conn, Bytes::from(vec![7; 4 << 20]))
        .unwrap();
    turn_until(
        &mut driver,
        "a send to find the socket full",
        &mut (),
        |_, _, event| panic!("unexpected {event:?}"),
        |_, _| sends_that_would_block() > before,
    );
    assert!(driver.io().queued(conn).unwrap() > 0);
    driver.io().close(conn, CloseMode::Abort).unwrap();
    let (c, error) = wait_closed(&mut driver);
    assert_eq!(c, conn);
    assert!(error.is_none(), "closed by {error:?}");
    done_tx.send(()).unwrap();
    join(client);
}

#[test]
fn peer_reset_while_sending_closes_with_the_error() {
    let mut driver = driver(1);
    let (_listener, addr) = listen(&mut driver);
    let client = thread::spawn(move || {
        let mut stream = connect(addr);
        SockRef::from(&stream).set_recv_buffer_size(4096).unwrap();
        stream.write_all(b"go").unwrap();
        thread::sleep(Duration::from_millis(200));
        // Close with unread data and no linger: the server gets a reset.
        SockRef::from(&stream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    });
    let mut state: (Option<ConnId>, Closed) = (None, None);
    turn_until(
        &mut driver,
        "the reset",
        &mut state,
        |(conn, closed), io, event| match event {
            Event::Accepted(socket) => {
                socket.set_send_buffer_size(4096).unwrap();
                *conn = Some(io.attach(0, socket).unwrap());
            }
            Event::Received { conn, .. } => {
                io.send(conn, Bytes::from(vec![1; 4 << 20])).unwrap();
            }
            Event::Closed { conn, error } => *closed = Some((conn, error)),
            Event::ReadClosed { .. } => {}
            other => panic!("unexpected {other:?}"),
        },
        |(_, closed), _| closed.is_some(),
    );
    join(client);
    let (conn, closed) = state;
    let (c, error) = closed.unwrap();
    assert_eq!(Some(c), conn);
    let error = error.expect("closed without an error");
    assert!(
        matches!(error.raw_os_error(), Some(libc::ECONNRESET | libc::EPIPE)),
        "closed by {error}"
    );
}

#[test]
fn waker_wakes_a_blocked_wait() {
    let mut driver = driver(1);
    let waker = driver.waker();
    let start = Instant::now();
    let waking = thread::spawn(move || {
        thread::sleep(Duration::from_millis(50));
        waker.wake().unwrap();
    });
    let mut woken = false;
    while !woken {
        assert!(start.elapsed() < DEADLINE, "never woken");
        driver
            .turn(Some(Duration::from_secs(10)), |_, event| {
                assert!(matches!(event, Event::Woken), "unexpected {event:?}");
                woken = true;
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

#[test]
fn stop_accepting_then_listen_again() {
    let mut driver = driver(4);
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
    // Connections now wait in the backlog, untaken.
    let _second = connect(addr);
    let _third = connect(addr);
    let until = Instant::now() + Duration::from_millis(200);
    while Instant::now() < until {
        driver
            .turn(TURN, |io, event| count(&mut accepted, io, event))
            .unwrap();
    }
    assert_eq!(accepted, 1, "accepted after stop_accepting");

    // Armed again, the accept takes the waiting connections without a new edge.
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
