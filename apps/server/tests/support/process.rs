//! The `iocp-server` binary as a child process: started with its arguments, its log lines
//! read as they come (the address it listens on from the first), stopped by signal.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::IO_TIMEOUT;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_iocp-server");

/// Waits for `child` to exit, killing it and failing the test after `limit`.
pub fn wait_status(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("iocp-server did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub struct ServerProcess {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
    pub addr: SocketAddr,
    /// Every line read so far.
    pub seen: Vec<String>,
}

impl ServerProcess {
    pub fn start(args: &[&str]) -> ServerProcess {
        ServerProcess::spawn(Command::new(BIN).args(args))
    }

    /// Starts the server from `command` (its arguments and anything else already set).
    pub fn spawn(command: &mut Command) -> ServerProcess {
        let mut child = command
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn iocp-server");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(strip_ansi(&line)).is_err() {
                    break;
                }
            }
        });
        let mut server = ServerProcess {
            child,
            lines,
            addr: "0.0.0.0:0".parse().unwrap(),
            seen: Vec::new(),
        };
        let line = server.wait_for("listening on ");
        let rest = &line[line.find("listening on ").unwrap() + "listening on ".len()..];
        server.addr = rest[..rest.find(": ").unwrap()].parse().unwrap();
        server
    }

    /// The first line (from now) containing `what`.
    pub fn wait_for(&mut self, what: &str) -> String {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(what) {
                        return line;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    panic!("the server never logged {what:?}");
                }
            }
        }
    }

    /// SIGTERM, then waits for a clean exit.
    #[cfg(unix)]
    pub fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.wait_for("stopped");
        let status = wait_status(&mut self.child, IO_TIMEOUT);
        assert!(status.success(), "{status:?}");
    }

    #[cfg(not(unix))]
    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
