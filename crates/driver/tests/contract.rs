//! The backend contract (`src/sys/mod.rs`), tested through [`Driver`] on loopback, the same
//! scenarios on every backend: io_uring (and each of its fall-backs forced), poll, and IOCP (under
//! Wine in CI). Cases that only one backend has are beside it (`src/sys/*/tests.rs`).

mod support;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use iocp_driver::{CloseMode, Config, ConnError, ConnId, Event, Io};
use socket2::SockRef;

use support::{
    DEADLINE, Echo, Plan, TURN, accept_into, connect, driver, echo_client, join, listen,
    turn_until, wait_closed,
};

backend_tests!(
    echoes_every_byte_of_concurrent_connections,
    echoes_through_full_sockets,
    reuses_slots_with_new_generations,
    close_cancels_an_idle_receive,
    abort_cancels_a_pending_send,
    peer_reset_while_sending_closes_with_an_error,
    waker_wakes_a_blocked_wait,
    stop_accepting_then_start_again,
    every_operation_completes_once_when_cancelled_mid_flight,
    a_stale_completion_never_reaches_the_reused_slot,
    running_out_of_receive_buffers_is_survived,
);

fn echoes_every_byte_of_concurrent_connections(config: Config) {
    let mut driver = driver(&config, 16);
    let (_listener, addr) = listen(&mut driver);
    let sizes = [0, 1, 100, 4096, 16 * 1024, 65_537, 100_000, 256 * 1024];
    let clients = sizes
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            let plan = Plan {
                seed: i as u64 + 1,
                len,
                piece: if i % 2 == 0 { 20_000 } else { 0 },
                read_late: false,
            };
            echo_client(addr, plan)
        })
        .collect();
    let mut echo = Echo::new(16, None);
    echo.serve(&mut driver, clients, sizes.len());
}

/// Small send buffers and clients that read late: sends are partial or wait for room.
fn echoes_through_full_sockets(config: Config) {
    let mut driver = driver(&config, 8);
    let (_listener, addr) = listen(&mut driver);
    let clients = (0..6)
        .map(|i| {
            let plan = Plan {
                seed: 100 + i,
                len: 256 * 1024 - i as usize * 1000,
                piece: if i % 3 == 0 { 20_000 } else { 0 },
                read_late: i % 2 == 0,
            };
            echo_client(addr, plan)
        })
        .collect();
    let mut echo = Echo::new(8, Some(4096));
    echo.serve(&mut driver, clients, 6);
}

fn reuses_slots_with_new_generations(config: Config) {
    let mut driver = driver(&config, 1);
    let (_listener, addr) = listen(&mut driver);
    let rounds = 20;
    let client = thread::spawn(move || {
        for i in 0..rounds {
            let plan = Plan {
                seed: 1000 + i,
                len: (i as usize * 997) % 5000,
                ..Plan::default()
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

fn close_cancels_an_idle_receive(config: Config) {
    let mut driver = driver(&config, 1);
    let (_listener, addr) = listen(&mut driver);
    let mut stream = connect(addr);
    let conn = accept_into(&mut driver, 0);
    driver.io().close(conn, CloseMode::Flush).unwrap();
    let (c, error) = wait_closed(&mut driver);
    assert_eq!(c, conn);
    assert!(error.is_none(), "closed by {error:?}");
    assert_eq!(
        stream.read(&mut [0; 16]).unwrap(),
        0,
        "the client sees the end"
    );
    assert_eq!(driver.io().send_copy(conn, b"late"), Err(ConnError::Stale));
}

/// A send that cannot finish (the peer does not read) is cancelled by an abort.
fn abort_cancels_a_pending_send(config: Config) {
    let mut driver = driver(&config, 1);
    let (_listener, addr) = listen(&mut driver);
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let client = thread::spawn(move || {
        let stream = connect(addr);
        SockRef::from(&stream).set_recv_buffer_size(4096).unwrap();
        let _ = done_rx.recv_timeout(DEADLINE);
        drop(stream);
    });
    let conn = accept_into(&mut driver, 0);
    if let Some(socket) = driver.io().socket(conn) {
        socket.set_send_buffer_size(4096).unwrap();
    }
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

/// A reset while a send is in flight closes the connection with the error.
fn peer_reset_while_sending_closes_with_an_error(config: Config) {
    let mut driver = driver(&config, 1);
    let (_listener, addr) = listen(&mut driver);
    let client = thread::spawn(move || {
        let mut stream = connect(addr);
        SockRef::from(&stream).set_recv_buffer_size(4096).unwrap();
        stream.write_all(b"go").unwrap();
        thread::sleep(Duration::from_millis(300));
        // Close with unread data and no linger: the server gets a reset.
        SockRef::from(&stream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    });
    let mut state: (Option<ConnId>, Option<(ConnId, Option<std::io::Error>)>) = (None, None);
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
                io.send(conn, Bytes::from(vec![1; 16 << 20])).unwrap();
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
        matches!(
            error.kind(),
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
        ),
        "closed by {error}"
    );
}

fn waker_wakes_a_blocked_wait(config: Config) {
    let mut driver = driver(&config, 1);
    let waker = driver.waker();
    let start = Instant::now();
    let waking = thread::spawn(move || {
        thread::sleep(Duration::from_millis(50));
        waker.wake().unwrap();
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

/// Accepting stops, connections wait in the backlog untaken, and accepting again on the same
/// listening socket takes them without a new edge.
fn stop_accepting_then_start_again(config: Config) {
    let mut driver = driver(&config, 4);
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
    driver.io().start_accepting(&listener).unwrap();
    turn_until(
        &mut driver,
        "the waiting connections",
        &mut accepted,
        count,
        |n, _| *n == 3,
    );
    // (A one-shot accept is armed again by the next turn.)
    driver
        .turn(Some(Duration::ZERO), |io, event| {
            count(&mut accepted, io, event)
        })
        .unwrap();
    assert!(driver.io().is_accepting());
}

/// Connections closed (abort, reset, flush then abort) while receives are armed and sends are
/// in flight: each gets exactly one `Closed`, after which nothing more of it arrives. (A second
/// completion of an operation would reach a closed slot, which the driver's debug assertion
/// turns into a panic; a missing one would leave the connection unclosed.)
fn every_operation_completes_once_when_cancelled_mid_flight(config: Config) {
    const CLIENTS: u32 = 12;
    let mut driver = driver(&config, CLIENTS);
    let (_listener, addr) = listen(&mut driver);
    let stop = Arc::new(AtomicBool::new(false));
    // Clients that write without end and never read: the server's sends pend.
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut stream = connect(addr);
                SockRef::from(&stream).set_recv_buffer_size(4096).unwrap();
                stream
                    .set_write_timeout(Some(Duration::from_millis(50)))
                    .unwrap();
                let chunk = vec![i as u8; 1000];
                while !stop.load(Ordering::Relaxed) {
                    if stream.write_all(&chunk).is_err() {
                        // Closed by the server, or full: wait for the end.
                        thread::sleep(Duration::from_millis(5));
                    }
                }
            })
        })
        .collect();

    struct State {
        next: u32,
        received: HashMap<ConnId, usize>,
        closed: HashMap<ConnId, usize>,
    }
    let mut state = State {
        next: 0,
        received: HashMap::new(),
        closed: HashMap::new(),
    };
    turn_until(
        &mut driver,
        "every connection to close",
        &mut state,
        |s, io, event| match event {
            Event::Accepted(socket) => {
                socket.set_send_buffer_size(4096).unwrap();
                io.attach(s.next, socket).unwrap();
                s.next += 1;
            }
            Event::Received { conn, data } => {
                assert!(
                    !s.closed.contains_key(&conn),
                    "data for {conn:?} after Closed"
                );
                // Echo a lot more than the peer takes: a send stays in flight.
                io.send(conn, Bytes::from(vec![0; 64 * 1024])).unwrap();
                io.send_copy(conn, data).unwrap();
                let n = s.received.entry(conn).or_default();
                *n += 1;
                // After a few receives, close mid-flight, a different way per connection.
                if *n == 3 {
                    match conn.index % 3 {
                        0 => io.close(conn, CloseMode::Abort).unwrap(),
                        1 => io.close(conn, CloseMode::Reset).unwrap(),
                        _ => {
                            io.close(conn, CloseMode::Flush).unwrap();
                            io.close(conn, CloseMode::Abort).unwrap();
                        }
                    }
                    assert_eq!(io.send_copy(conn, b"x"), Err(ConnError::Closing));
                }
            }
            Event::ReadClosed { conn } => {
                let _ = io.close(conn, CloseMode::Abort);
            }
            Event::Closed { conn, .. } => {
                *s.closed.entry(conn).or_default() += 1;
                assert_eq!(io.send_copy(conn, b"x"), Err(ConnError::Stale));
            }
            Event::AcceptError(e) => panic!("accept failed: {e}"),
            Event::Woken => {}
        },
        |s, _| s.closed.len() == CLIENTS as usize,
    );
    // Nothing more comes for any of them.
    let until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < until {
        driver
            .turn(TURN, |_, event| match event {
                Event::Accepted(_) => {}
                other => panic!("after every close: {other:?}"),
            })
            .unwrap();
    }
    assert!(state.closed.values().all(|&n| n == 1), "{:?}", state.closed);
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        join(client);
    }
}

/// One slot, connections closed (reset) with a receive armed and a send in flight, and the slot
/// given at once to the next connection: the new connection sees only its own bytes, and the old
/// id is refused. Every client sends its own byte value.
fn a_stale_completion_never_reaches_the_reused_slot(config: Config) {
    const ROUNDS: u8 = 20;
    let mut driver = driver(&config, 1);
    let (_listener, addr) = listen(&mut driver);
    let stop = Arc::new(AtomicBool::new(false));
    let clients = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut held = Vec::new();
            for round in 0..ROUNDS {
                let mut stream = connect(addr);
                SockRef::from(&stream).set_recv_buffer_size(4096).unwrap();
                // Its bytes, until the server is done with it (or it is reset).
                let _ = stream.write_all(&[round; 3000]);
                held.push(stream);
                if stop.load(Ordering::Relaxed) {
                    break;
                }
            }
            while !stop.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_millis(5));
            }
        })
    };

    struct State {
        /// The open connection and the byte its client sends.
        current: Option<(ConnId, u8)>,
        accepted: u8,
        /// Accepted while the slot was busy, attached once it is free.
        waiting: Vec<socket2::Socket>,
        old: Vec<ConnId>,
        closed: usize,
    }
    let mut state = State {
        current: None,
        accepted: 0,
        waiting: Vec::new(),
        old: Vec::new(),
        closed: 0,
    };
    fn attach_next(s: &mut State, io: &mut Io) {
        if s.current.is_none() && !s.waiting.is_empty() {
            let socket = s.waiting.remove(0);
            let conn = io.attach(0, socket).unwrap();
            assert!(!s.old.contains(&conn), "a reused slot got an old id");
            s.current = Some((conn, s.accepted - 1 - s.waiting.len() as u8));
        }
    }
    turn_until(
        &mut driver,
        "every round",
        &mut state,
        |s, io, event| {
            match event {
                Event::Accepted(socket) => {
                    s.waiting.push(socket);
                    s.accepted += 1;
                }
                Event::Received { conn, data } => {
                    let (current, byte) = s.current.expect("data with no connection open");
                    assert_eq!(conn, current, "data for a stale connection");
                    assert!(
                        data.iter().all(|&b| b == byte),
                        "connection {byte} got another connection's bytes"
                    );
                    // A send that stays in flight, then a reset with the receive still armed.
                    io.send(conn, Bytes::from(vec![0; 256 * 1024])).unwrap();
                    io.close(conn, CloseMode::Reset).unwrap();
                }
                Event::ReadClosed { conn } => {
                    let _ = io.close(conn, CloseMode::Reset);
                }
                Event::Closed { conn, .. } => {
                    let (current, _) = s.current.take().expect("a close with none open");
                    assert_eq!(conn, current);
                    s.old.push(conn);
                    s.closed += 1;
                    assert_eq!(io.send_copy(conn, b"x"), Err(ConnError::Stale));
                    assert_eq!(io.close(conn, CloseMode::Abort), Err(ConnError::Stale));
                }
                Event::AcceptError(e) => panic!("accept failed: {e}"),
                Event::Woken => {}
            }
            attach_next(s, io);
        },
        |s, _| s.closed == usize::from(ROUNDS),
    );
    stop.store(true, Ordering::Relaxed);
    join(clients);
    let mut generations: Vec<_> = state.old.iter().map(|c| c.generation).collect();
    generations.dedup();
    assert_eq!(generations.len(), usize::from(ROUNDS));
}

/// A tiny buffer ring (one buffer of 64 bytes on io_uring): the kernel runs out of buffers while
/// data keeps coming, the multishot receive ends with `ENOBUFS`, and the driver arms it again.
/// Every byte still arrives, in order. (Elsewhere it is one more echo test.)
fn running_out_of_receive_buffers_is_survived(mut config: Config) {
    config.recv_buffer_count = 1;
    config.recv_buffer_size = 64;
    let mut driver = driver(&config, 4);
    let (_listener, addr) = listen(&mut driver);
    let clients = (0..4)
        .map(|i| {
            let plan = Plan {
                seed: 500 + i,
                len: 200_000,
                piece: if i % 2 == 0 { 10_000 } else { 0 },
                read_late: false,
            };
            echo_client(addr, plan)
        })
        .collect();
    let mut echo = Echo::new(4, None);
    echo.serve(&mut driver, clients, 4);
}
