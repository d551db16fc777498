//! End-to-end test of the baseline echo servers: start each binary on a free
//! loopback port, echo random data over several connections checking every
//! byte (including one slow reader that forces write back-pressure), then
//! stop the server with a signal and check that it exits cleanly.
//!
//! Everything is bounded in time: socket operations have timeouts, waiting
//! for the server has a deadline, and a server left running is killed.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Upper bound for any single wait in this test.
const TIMEOUT: Duration = Duration::from_secs(20);

/// A server child process, killed on drop if still running.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    /// Starts `bin` with `args` plus `--addr 127.0.0.1:0` and waits for its
    /// `listening on ADDR` line.
    fn start(bin: &str, args: &[&str]) -> Server {
        let mut child = Command::new(bin)
            .args(args)
            .args(["--addr", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn server");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut server = Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };

        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(TIMEOUT)
            .expect("server printed no first line in time");
        let addr = line
            .trim_end()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        server.addr = addr.parse().expect("address in first line");
        assert_ne!(server.addr.port(), 0);
        server
    }

    /// Sends `signal` and waits (bounded) for the process to exit.
    fn stop(&mut self, signal: libc::c_int) -> ExitStatus {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our
        // own child, not yet reaped, so it cannot name another process.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill failed");
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit after signal {signal}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Small deterministic PRNG (xorshift64*), enough for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Connects with timeouts set on every operation.
fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.set_write_timeout(Some(TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Sends `messages` random-sized (1..=64 KiB) chunks of random bytes over one
/// connection from a writer thread, then half-closes; reads everything back,
/// checking every byte, and then expects the server to close too. A slow
/// reader waits before reading so the server's writes back up.
fn echo_connection(addr: SocketAddr, seed: u64, messages: usize, slow_reader: bool) -> usize {
    let mut rng = Rng(seed | 1);
    let mut data = Vec::new();
    for _ in 0..messages {
        let len = 1 + rng.below(64 * 1024) as usize;
        data.extend((0..len).map(|_| rng.next() as u8));
    }

    let stream = connect(addr);
    let mut writer = stream.try_clone().expect("clone stream");
    let to_send = data.clone();
    let mut wrng = Rng(seed.rotate_left(17) | 1);
    let write_thread = thread::spawn(move || {
        // Write in random slices, not aligned with the message boundaries.
        let mut off = 0;
        while off < to_send.len() {
            let n = (1 + wrng.below(96 * 1024) as usize).min(to_send.len() - off);
            writer.write_all(&to_send[off..off + n]).expect("write");
            off += n;
        }
        writer.shutdown(Shutdown::Write).expect("shutdown write");
    });

    if slow_reader {
        thread::sleep(Duration::from_millis(300));
    }
    let mut reader = stream;
    let mut got = vec![0u8; data.len()];
    let mut off = 0;
    while off < got.len() {
        match reader.read(&mut got[off..]) {
            Ok(0) => panic!("server closed after {off} of {} bytes", data.len()),
            Ok(n) => {
                assert_eq!(
                    got[off..off + n],
                    data[off..off + n],
                    "echoed bytes differ in {off}..{}",
                    off + n
                );
                off += n;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("read after {off} bytes: {e}"),
        }
    }
    let mut extra = [0u8; 1];
    assert_eq!(reader.read(&mut extra).expect("read EOF"), 0, "extra data");
    write_thread.join().expect("writer thread");
    data.len()
}

/// Runs the full check against one server configuration.
fn check_server(bin: &str, args: &[&str], stop_signal: libc::c_int) {
    let mut server = Server::start(bin, args);
    let addr = server.addr;

    let handles: Vec<_> = (0..12u64)
        .map(|i| {
            let slow = i == 0;
            let messages = if slow { 512 } else { 24 };
            thread::spawn(move || echo_connection(addr, 0x9E37_79B9 * (i + 1), messages, slow))
        })
        .collect();
    let total: usize = handles
        .into_iter()
        .map(|h| h.join().expect("client thread"))
        .sum();
    assert!(total > 0);

    // An idle open connection must not keep the server from exiting.
    let idle = connect(addr);
    let status = server.stop(stop_signal);
    assert!(status.success(), "server exit status {status:?}");
    drop(idle);
}

#[test]
fn tokio_multi_thread_echoes_and_exits_on_sigterm() {
    check_server(
        env!("CARGO_BIN_EXE_echo-tokio"),
        &["--runtime", "mt", "--workers", "2"],
        libc::SIGTERM,
    );
}

#[test]
fn tokio_current_thread_echoes_and_exits_on_sigint() {
    check_server(
        env!("CARGO_BIN_EXE_echo-tokio"),
        &["--runtime", "ct"],
        libc::SIGINT,
    );
}

#[test]
fn mio_echoes_and_exits_on_sigterm() {
    check_server(env!("CARGO_BIN_EXE_echo-mio"), &[], libc::SIGTERM);
}
