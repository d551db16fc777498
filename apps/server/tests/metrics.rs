//! `--metrics`: the real binary, echo and chat traffic, and the counters scraped from
//! `/metrics` checked against what the test did; the exposition checked with `promtool`.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Instant;

use iocp_chat_protocol::ResultCode;
use support::process::{BIN, ServerProcess};
use support::scrape::{http_get, metrics_addr, value};
use support::{Client, IO_TIMEOUT};

/// The metrics as the endpoint serves them to a plain client (Prometheus text format 0.0.4).
fn scrape(addr: SocketAddr) -> String {
    let (status, head, body) = http_get(addr, "/metrics", None);
    assert_eq!(status, 200, "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    body
}

/// Scrapes until every `(series, value)` of `want` holds (for up to [`IO_TIMEOUT`]); returns the
/// last exposition.
fn scrape_until(addr: SocketAddr, want: &[(&str, f64)]) -> String {
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let text = scrape(addr);
        let wrong: Vec<String> = want
            .iter()
            .filter(|(series, v)| value(&text, series) != Some(*v))
            .map(|(series, v)| format!("{series}: want {v}, got {:?}", value(&text, series)))
            .collect();
        if wrong.is_empty() {
            return text;
        }
        assert!(Instant::now() < deadline, "{wrong:#?}\n{text}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// `promtool check metrics` on `text`: it must find nothing to say. Without promtool (the Debian
/// package `prometheus`, which `.ci/run` installs), the check is skipped with a note, except in
/// CI, where it fails.
fn promtool_accepts(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!(
                "SKIPPED: promtool check metrics: promtool not found ({e}): apt-get install prometheus"
            );
            return;
        }
        Err(e) => {
            panic!("promtool not found ({e}): .ci/run installs the Debian package prometheus")
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {:?}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Echo: three sessions, a known number of bytes each way, one closed by its peer.
#[test]
fn echo_counters_are_exact_and_promtool_accepts_them() {
    let mut server = ServerProcess::start(&[
        "echo",
        "--addr",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let metrics = metrics_addr(&mut server);
    let before = scrape(metrics);
    assert_eq!(value(&before, "iocp_sessions_accepted_total"), Some(0.0));
    assert_eq!(value(&before, "iocp_workers"), Some(2.0));
    assert_eq!(value(&before, "iocp_sessions_max"), Some(10_000.0));

    let mut clients = Vec::new();
    let mut bytes = 0;
    for i in 0..3 {
        let mut stream = TcpStream::connect_timeout(&server.addr, IO_TIMEOUT).unwrap();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let message = format!("hello from client {i}");
        stream.write_all(message.as_bytes()).unwrap();
        let mut back = vec![0u8; message.len()];
        stream.read_exact(&mut back).unwrap();
        assert_eq!(back, message.as_bytes());
        bytes += message.len();
        clients.push(stream);
    }
    drop(clients.remove(0));
    let bytes = bytes as f64;
    let text = scrape_until(
        metrics,
        &[
            ("iocp_sessions_accepted_total", 3.0),
            ("iocp_sessions_open", 2.0),
            ("iocp_sessions_closed_total{reason=\"peer\"}", 1.0),
            ("iocp_received_bytes_total", bytes),
            ("iocp_queued_bytes_total", bytes),
            ("iocp_delivered_bytes_total", bytes),
            ("iocp_send_queue_bytes", 0.0),
        ],
    );
    assert_eq!(value(&text, "iocp_sessions_refused_total"), Some(0.0));
    for reason in ["reset", "error", "queue", "protocol", "shutdown", "panic"] {
        let series = format!("iocp_sessions_closed_total{{reason=\"{reason}\"}}");
        assert_eq!(value(&text, &series), Some(0.0), "{series}");
    }
    // Each echo is at least one receive and one queued message; small messages on loopback
    // arrive whole, so exactly one each.
    assert_eq!(value(&text, "iocp_receives_total"), Some(3.0));
    assert_eq!(value(&text, "iocp_queued_messages_total"), Some(3.0));
    assert_eq!(value(&text, "iocp_delivered_messages_total"), Some(3.0));
    for worker in ["0", "1"] {
        let turns = format!("iocp_worker_turns_total{{worker=\"{worker}\"}}");
        assert!(value(&text, &turns).is_some_and(|n| n >= 1.0), "{turns}");
        let count = format!("iocp_worker_events_per_turn_count{{worker=\"{worker}\"}}");
        assert_eq!(value(&text, &count), value(&text, &turns), "{count}");
    }
    for series in [
        "iocp_driver_recv_out_of_buffers_total",
        "iocp_driver_cq_overflows_total",
        "iocp_driver_partial_sends_total",
        "iocp_driver_accept_backoffs_total",
    ] {
        assert_eq!(value(&text, series), Some(0.0), "{series}");
    }
    promtool_accepts(&text);

    // What Prometheus asks for first: OpenMetrics, which ends with `# EOF`.
    let (status, head, body) = http_get(
        metrics,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    );
    assert_eq!(status, 200);
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(body.contains("iocp_sessions_accepted_total 3"), "{body}");
    assert_eq!(http_get(metrics, "/", None).0, 404);

    drop(clients);
    server.stop();
}

/// Adds `user` with `password` to the account file `db` (a cheap hash).
fn add_user(db: &std::path::Path, user: &str, password: &str) {
    let mut child = Command::new(BIN)
        .args(["users", "add", user, "--hash-cost", "light", "--db"])
        .arg(db)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Chat: logins by result (ok, refused, throttled), their latency, rooms, members, notifies.
#[test]
fn chat_counters_are_exact_and_promtool_accepts_them() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.redb");
    add_user(&db, "alice", "pw-alice");
    add_user(&db, "bob", "pw-bob");
    let mut server = ServerProcess::start(&[
        "chat",
        "--addr",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--db",
        db.to_str().unwrap(),
        // One failure and bob's account backs off for a second: his next try is throttled.
        "--login-account-failures",
        "1",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let metrics = metrics_addr(&mut server);

    let mut alice = Client::connect(server.addr);
    assert_eq!(alice.login("alice", "pw-alice"), ResultCode::NONE);
    alice.name = "alice".into();
    let mut bob = Client::connect(server.addr);
    assert_eq!(bob.login("bob", "wrong"), ResultCode::LOGIN_USER_INVALID_PW);
    assert_eq!(
        bob.login("bob", "pw-bob"),
        ResultCode::LOGIN_TOO_MANY_ATTEMPTS
    );
    assert_eq!(alice.enter(0).0.result, ResultCode::NONE);
    assert_eq!(alice.chat("hello"), ResultCode::NONE);
    assert!(matches!(
        alice.recv(),
        iocp_chat_protocol::Packet::RoomChatNotify(_)
    ));

    let text = scrape_until(
        metrics,
        &[
            ("iocp_sessions_accepted_total", 2.0),
            ("iocp_sessions_open", 2.0),
            ("iocp_chat_logins_total{result=\"ok\"}", 1.0),
            ("iocp_chat_logins_total{result=\"refused\"}", 1.0),
            ("iocp_chat_logins_total{result=\"throttled\"}", 1.0),
            ("iocp_chat_login_seconds_count", 2.0),
            ("iocp_chat_login_queue_depth", 0.0),
            ("iocp_chat_users_online", 1.0),
            ("iocp_chat_rooms_occupied", 1.0),
            ("iocp_chat_room_members", 1.0),
            ("iocp_chat_room_enters_total", 1.0),
            ("iocp_chat_messages_total", 1.0),
            // A chat goes to every member of the room, its sender included.
            ("iocp_chat_notifies_total", 1.0),
            ("iocp_chat_logic_queue_depth", 0.0),
        ],
    );
    assert!(value(&text, "iocp_chat_login_seconds_sum").is_some_and(|s| s > 0.0));
    assert_eq!(value(&text, "iocp_chat_logins_replaced_total"), Some(0.0));
    assert_eq!(value(&text, "iocp_chat_bad_packets_total"), Some(0.0));
    promtool_accepts(&text);

    // Leaving empties the room.
    assert_eq!(alice.leave(), ResultCode::NONE);
    scrape_until(
        metrics,
        &[
            ("iocp_chat_rooms_occupied", 0.0),
            ("iocp_chat_room_members", 0.0),
        ],
    );
    drop((alice, bob));
    server.stop();
}

/// A client that sends and never reads: the kernel takes only part of the server's sends
/// (partial sends), its queue passes the limit, and it is closed for that reason. On the poll
/// backend, whose `sendmsg` runs when it is submitted and takes what fits; on io_uring a send
/// into a full socket waits for room, which this client never makes, so whether one completes
/// partly before the queue passes its limit is a race.
#[test]
fn a_slow_reader_shows_in_partial_sends_and_queue_closes() {
    let mut server = ServerProcess::start(&[
        "echo",
        "--addr",
        "127.0.0.1:0",
        "--backend",
        "poll",
        "--workers",
        "1",
        "--send-queue-limit",
        "1048576",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let metrics = metrics_addr(&mut server);
    let mut stream = TcpStream::connect_timeout(&server.addr, IO_TIMEOUT).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    // Far more than the socket buffers on both sides and the queue limit hold: the server is
    // cut off before this ends (the write then fails with a reset, or stops at the timeout).
    let chunk = vec![b'x'; 64 * 1024];
    for _ in 0..1024 {
        if stream.write_all(&chunk).is_err() {
            break;
        }
    }
    let text = scrape_until(
        metrics,
        &[
            ("iocp_sessions_closed_total{reason=\"queue\"}", 1.0),
            ("iocp_sessions_open", 0.0),
            ("iocp_send_queue_bytes", 0.0),
        ],
    );
    let partial = value(&text, "iocp_driver_partial_sends_total").unwrap();
    assert!(partial >= 1.0, "partial sends: {partial}\n{text}");
    let queued = value(&text, "iocp_queued_bytes_total").unwrap();
    let delivered = value(&text, "iocp_delivered_bytes_total").unwrap();
    assert!(
        delivered < queued,
        "{delivered} of {queued} bytes delivered"
    );
    promtool_accepts(&text);
    drop(stream);
    server.stop();
}
