//! The `iocp-server` binary as a process, for tests that start it: its stderr read line by
//! line (the address it listens on, the metrics endpoint's), stopped with SIGTERM, killed on
//! drop. And a small HTTP GET for the metrics endpoint.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::IO_TIMEOUT;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_iocp-server");

/// A server process whose stderr is read line by line.
pub struct ServerProcess {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Every line read so far.
    pub seen: Vec<String>,
}

impl ServerProcess {
    /// Starts `iocp-server args...` and waits until it listens.
    pub fn start(args: &[&str]) -> ServerProcess {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn iocp-server");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
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
        server.addr = server.address_after("listening on ", ": ");
        server
    }

    /// The address in the first line containing `marker`, right after it and up to `end` (or
    /// the end of the line).
    pub fn address_after(&mut self, marker: &str, end: &str) -> SocketAddr {
        let line = match self.seen.iter().find(|l| l.contains(marker)) {
            Some(line) => line.clone(),
            None => self.wait_for(marker),
        };
        let rest = &line[line.find(marker).unwrap() + marker.len()..];
        let rest = rest.find(end).map_or(rest, |at| &rest[..at]);
        rest.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{rest:?}: {e}"))
    }

    /// The metrics endpoint's address, from its log line.
    pub fn metrics_addr(&mut self) -> SocketAddr {
        self.address_after("metrics on http://", "/metrics")
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
                    panic!(
                        "the server never logged {what:?}; it logged {:?}",
                        self.seen
                    );
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
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "{status:?}");
                return;
            }
            assert!(Instant::now() < deadline, "the server did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
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
        let _ = self.child.wait();
    }
}

/// `GET path` from `addr` (with `accept` as the `Accept` header if given): the status code,
/// the headers and the body.
pub fn http_get(addr: SocketAddr, path: &str, accept: Option<&str>) -> (u16, String, String) {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .expect("read the response");
    let response = String::from_utf8(response).expect("UTF-8");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    (status, head.to_owned(), body.to_owned())
}
