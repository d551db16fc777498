//! Smoke runs of the `iocp-load` binary: against the iocp-server echo (started in-process from
//! the library), where every byte must verify, and against a deliberately faulty echo server,
//! where the run must fail and say why. Every run is bounded in time and stays on loopback.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use iocp_server::{Config, Context, Handler, Server, SessionId};
use serde_json::Value;

/// Longest a run of the binary may take before the test kills it.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// The seed's echo.
struct Echo;

impl Handler for Echo {
    type Session = ();

    fn on_receive(&self, ctx: &mut Context<'_>, session: SessionId, data: &[u8]) {
        let _ = ctx.send(session, data);
    }
}

fn start_server() -> Server {
    let config = Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        workers: 1,
        ..Config::default()
    };
    Server::start(config, Echo).expect("the echo server starts")
}

/// Runs `iocp-load` with `args`, killing it past [`RUN_LIMIT`].
fn load(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_iocp-load"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("iocp-load starts");
    // Read both pipes on threads, so that a full pipe never blocks the child.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("iocp-load {args:?} ran longer than {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// The JSON object a `--json` run printed.
fn json_of(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}):\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn u(json: &Value, key: &str) -> u64 {
    json[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no `{key}` in {json}"))
}

fn expect_success(output: &Output) -> Value {
    let json = json_of(output);
    assert!(
        output.status.success(),
        "iocp-load failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(json["ok"], Value::Bool(true), "{json}");
    assert_eq!(u(&json, "verify_errors"), 0, "{json}");
    assert_eq!(u(&json, "lost_messages"), 0, "{json}");
    assert_eq!(u(&json, "closed_by_server"), 0, "{json}");
    json
}

/// The requirement: a 2 s run against the server, verifying every byte.
#[test]
fn echo_verifies_every_byte_for_two_seconds() {
    let server = start_server();
    let addr = server.local_addr().to_string();
    let output = load(&[
        "echo",
        "--addr",
        &addr,
        "--connections",
        "20",
        "--size",
        "64",
        "--pipeline",
        "4",
        "--warmup",
        "200ms",
        "--duration",
        "2s",
        "--json",
    ]);
    let json = expect_success(&output);
    assert!(u(&json, "messages") > 0, "{json}");
    assert_eq!(u(&json, "connected"), 20, "{json}");
    // Every message measured was verified, and every verified byte belongs to a whole message.
    assert!(
        u(&json, "verified_messages") >= u(&json, "messages"),
        "{json}"
    );
    assert_eq!(
        u(&json, "verified_bytes"),
        64 * u(&json, "verified_messages"),
        "{json}"
    );
    assert!(json["latency_us"]["p50"].as_f64().unwrap() > 0.0, "{json}");
    server.shutdown().unwrap();
}

/// Messages smaller than the header are checked by their position in the stream; sizes that
/// are not a divisor of the receive buffer make messages straddle every read.
#[test]
fn small_and_large_messages_verify() {
    let server = start_server();
    let addr = server.local_addr().to_string();
    for (size, pipeline) in [("3", "8"), ("100000", "2")] {
        let output = load(&[
            "echo",
            "--addr",
            &addr,
            "-c",
            "4",
            "--size",
            size,
            "--pipeline",
            pipeline,
            "--warmup",
            "0s",
            "--duration",
            "1s",
            "--json",
            "--threads",
            "2",
        ]);
        let json = expect_success(&output);
        assert!(u(&json, "messages") > 0, "size {size}: {json}");
    }
    server.shutdown().unwrap();
}

/// `--messages N` measures exactly N messages, split over the connections.
#[test]
fn a_message_count_is_exact() {
    let server = start_server();
    let addr = server.local_addr().to_string();
    let output = load(&[
        "echo",
        "--addr",
        &addr,
        "-c",
        "7",
        "--messages",
        "5003",
        "-p",
        "3",
        "--json",
    ]);
    let json = expect_success(&output);
    assert_eq!(u(&json, "messages"), 5003, "{json}");
    assert_eq!(u(&json, "verified_messages"), 5003, "{json}");
    server.shutdown().unwrap();
}

/// Open loop: the offered rate is met (roughly) on an idle machine, and every byte verifies.
#[test]
fn open_loop_rate() {
    let server = start_server();
    let addr = server.local_addr().to_string();
    let output = load(&[
        "echo",
        "--addr",
        &addr,
        "-c",
        "10",
        "--rate",
        "2000",
        "--warmup",
        "0s",
        "--duration",
        "1s",
        "--pipeline",
        "16",
        "--json",
    ]);
    let json = expect_success(&output);
    let messages = u(&json, "messages");
    assert!((1000..=2100).contains(&messages), "{json}");
    server.shutdown().unwrap();
}

/// `idle` holds the connections, and the ping after the hold is echoed and verified.
#[test]
fn idle_connections_stay_open() {
    let server = start_server();
    let addr = server.local_addr().to_string();
    let output = load(&[
        "idle",
        "--addr",
        &addr,
        "-c",
        "200",
        "--hold",
        "500ms",
        "--ping",
        "32",
        "--json",
        "--server-pid",
        &std::process::id().to_string(),
    ]);
    let json = expect_success(&output);
    assert_eq!(u(&json, "open_after_hold"), 200, "{json}");
    assert_eq!(json["ping"]["echoed"], 200, "{json}");
    assert!(
        json["server_rss"]["after_bytes"].as_u64().unwrap() > 0,
        "{json}"
    );
    server.shutdown().unwrap();
}

/// An echo server that flips one bit of byte `at` of its first connection's stream.
fn corrupting_server(at: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let _ = stream.set_nodelay(true);
                let mut buf = vec![0u8; 64 * 1024];
                let mut total = 0;
                loop {
                    let len = match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(len) => len,
                    };
                    if n == 0 && (total..total + len).contains(&at) {
                        buf[at - total] ^= 0x10;
                    }
                    total += len;
                    if stream.write_all(&buf[..len]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A damaged byte fails the run, with a message that says where.
#[test]
fn a_corrupted_byte_fails_the_run() {
    let addr = corrupting_server(10_000).to_string();
    let output = load(&[
        "echo",
        "--addr",
        &addr,
        "-c",
        "2",
        "--size",
        "100",
        "-p",
        "4",
        "--warmup",
        "0s",
        "--duration",
        "1s",
        "--json",
    ]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let json = json_of(&output);
    assert_eq!(json["ok"], Value::Bool(false));
    assert_eq!(u(&json, "verify_errors"), 1, "{json}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("connection 0, message 100, byte 0 (stream offset 10000)"),
        "{stderr}"
    );
    assert!(stderr.contains("FAILED"), "{stderr}");
}

/// Nobody listening: every connect fails, and so does the run.
#[test]
fn refused_connections_fail_the_run() {
    let addr = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let output = load(&["echo", "--addr", &addr, "-c", "3", "--duration", "1s"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("3 of 3 connects failed"), "{stderr}");
}
