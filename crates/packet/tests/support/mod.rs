//! What the packet manager's tests share: a server configuration on `127.0.0.1:0`, a framed
//! client with time limits, and waiting for a condition.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use iocp_server::Config;
use iocp_wire::{Decoder, MAX_FRAME_LEN};

/// No single socket operation of a test waits longer than this.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Loopback, port 0, two workers.
pub fn config() -> Config {
    Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        workers: 2,
        max_sessions: 64,
        linger: Duration::from_secs(2),
        ..Config::default()
    }
}

/// Waits until `f` holds, for up to [`IO_TIMEOUT`].
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + IO_TIMEOUT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A client that sends and reads whole frames.
pub struct Client {
    pub stream: TcpStream,
    decoder: Decoder,
    pending: VecDeque<(u16, Vec<u8>)>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            decoder: Decoder::with_max_frame_len(MAX_FRAME_LEN),
            pending: VecDeque::new(),
        }
    }

    /// Sends one frame.
    pub fn send(&mut self, id: u16, body: &[u8]) {
        let frame = iocp_wire::encode(id, 0, body).unwrap();
        self.stream.write_all(&frame).expect("send");
    }

    /// The next frame's id and body.
    pub fn recv(&mut self) -> (u16, Vec<u8>) {
        let mut buf = [0u8; 8192];
        loop {
            if let Some(frame) = self.pending.pop_front() {
                return frame;
            }
            let n = match self.stream.read(&mut buf) {
                Ok(0) => panic!("the server closed the connection"),
                Ok(n) => n,
                Err(e) => panic!("read: {e}"),
            };
            let pending = &mut self.pending;
            self.decoder
                .decode(&buf[..n], |f| {
                    pending.push_back((f.id(), f.body().to_vec()))
                })
                .unwrap();
        }
    }

    /// Reads until the server closes the connection; returns the frames that came before.
    pub fn expect_closed(&mut self) -> Vec<(u16, Vec<u8>)> {
        let mut frames: Vec<_> = self.pending.drain(..).collect();
        let mut buf = [0u8; 8192];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return frames,
                Ok(n) => {
                    self.decoder
                        .decode(&buf[..n], |f| frames.push((f.id(), f.body().to_vec())))
                        .unwrap();
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return frames,
                Err(e) => panic!("expected the server to close, got {e}"),
            }
        }
    }
}
