//! Cases only the IOCP backend has, driven through the whole [`Driver`] on loopback (under Wine in
//! CI): skip-on-success, pending sends, posted accepts, the listener's owner. The scenarios every
//! backend shares are in `tests/contract.rs`; the handle counts are in `tests/iocp_handles.rs`
//! (a test program of their own: no other test may open handles meanwhile).

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::thread;
use std::time::Duration;

use socket2::Socket;

use crate::{BackendChoice, Config, Driver, Event};

use super::socket::{self, Started};

#[path = "../../../tests/support/mod.rs"]
mod support;

use support::{Echo, Plan, TURN, connect, echo_client, listen, turn_until};

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

fn driver(capacity: u32, accept_depth: u32) -> Driver {
    let config = Config {
        accept_depth,
        ..support::config(BackendChoice::Iocp)
    };
    support::driver(&config, capacity)
}

/// Every TCP provider of Wine and of Windows without a layered provider hands out IFS handles, so
/// skip-on-success is used (the tests below check it was).
#[test]
fn tcp_providers_hand_out_ifs_handles() {
    assert!(socket::ifs_handles());
}

#[test]
fn a_socket_is_its_own_duplicate_and_no_other() {
    let a = Socket::from(TcpListener::bind("127.0.0.1:0").unwrap());
    let b = a.try_clone().unwrap();
    let c = Socket::from(TcpListener::bind("127.0.0.1:0").unwrap());
    let raw = |s: &Socket| std::os::windows::io::AsRawSocket::as_raw_socket(s) as _;
    assert!(socket::same_socket(raw(&a), raw(&b)));
    assert!(!socket::same_socket(raw(&a), raw(&c)));
    assert!(socket::base_handle(raw(&a)).is_ok());
}

#[test]
fn one_send_gathers_less_than_4_gib() {
    let mut lens = [0u32; socket::MAX_WSABUFS];
    assert_eq!(socket::gather([10, 20].into_iter(), &mut lens), 2);
    assert_eq!(&lens[..2], &[10, 20]);
    // 3 GiB, then 2 GiB: the second is cut at the u32 total, and nothing after it is taken.
    let (three, two) = (3usize << 30, 2usize << 30);
    assert_eq!(socket::gather([three, two, 5].into_iter(), &mut lens), 2);
    assert_eq!(u64::from(lens[0]) + u64::from(lens[1]), u64::from(u32::MAX));
    // Exactly full: nothing more is gathered.
    let full = u32::MAX as usize;
    assert_eq!(socket::gather([full, 1].into_iter(), &mut lens), 1);
    assert_eq!(socket::gather([full + 1].into_iter(), &mut lens), 1);
    assert_eq!(lens[0], u32::MAX);
}

#[test]
fn sends_and_receives_that_succeed_at_once_post_no_packet() {
    let mut driver = driver(16, 4);
    let (_listener, addr) = listen(&mut driver);
    let sizes = [0, 1, 100, 4096, 16 * 1024, 65_537, 100_000, 1 << 20];
    let clients = sizes
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            let plan = Plan {
                seed: i as u64 + 1,
                len,
                piece: if i % 2 == 0 { 7_000 } else { 0 },
                read_late: false,
            };
            echo_client(addr, plan)
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
            let plan = Plan {
                seed: 100 + i,
                len: 512 * 1024 - i as usize * 1000,
                piece: 20_000,
                read_late: i % 2 == 0,
            };
            echo_client(addr, plan)
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
        .map(|i| {
            let plan = Plan {
                seed: i,
                len: 1000,
                ..Plan::default()
            };
            echo_client(addr, plan)
        })
        .collect();
    let mut echo = Echo::new(32, None);
    echo.serve(&mut driver, clients, 24);
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

/// Two ports asked to accept on one listener: the first owns its association and accepts; the
/// second stays armed without accepting, and ends with a cancellation when told to stop.
#[test]
fn a_second_port_on_the_same_listener_is_dormant() {
    let mut owner = driver(4, 2);
    let (listener, addr) = listen(&mut owner);
    owner.turn(Some(Duration::ZERO), |_, _| {}).unwrap();
    let mut dormant = driver(4, 2);
    dormant.io().start_accepting(&listener).unwrap();
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

/// Dropping a driver with its accepts posted cancels them and waits for them: no write into freed
/// memory. The listener stays associated with the port that is gone, so a new port cannot accept
/// on it, and says so (an error, not a port that silently accepts nothing).
#[test]
fn a_listener_whose_owner_is_gone_is_an_error() {
    let listener = Socket::from(TcpListener::bind("127.0.0.1:0").unwrap());
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let mut d = driver(8, 8);
    d.io().start_accepting(&listener).unwrap();
    d.turn(Some(Duration::ZERO), |_, _| {}).unwrap();
    drop(d);

    let mut orphan = driver(8, 8);
    orphan.io().start_accepting(&listener).unwrap();
    let mut error = None;
    turn_until(
        &mut orphan,
        "the accept error",
        &mut error,
        |error, _, event| match event {
            Event::AcceptError(e) => *error = Some(e),
            other => panic!("unexpected {other:?}"),
        },
        |error, _| error.is_some(),
    );
    let error = error.unwrap();
    assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{error}");
    // A client still connects (the backlog takes it).
    let _client = connect(addr);
}
