//! A session cut off for not reading ([`CloseReason::SendQueueFull`]) is reset, so the kernel
//! frees its unsent bytes at once: no orphaned socket is left in `FIN-WAIT-1` holding them while
//! the peer, still connected, goes on not reading. Linux only (it reads `/proc/net/sockstat`);
//! one test function, so that no other test of this binary closes sockets meanwhile.

#![cfg(target_os = "linux")]

mod support;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use iocp_server::{BackendChoice, CloseReason, Context, Handler, SessionId};
use support::*;

/// Orphaned TCP sockets of the machine (closed by their process, still held by the kernel).
fn orphans() -> u64 {
    let text = std::fs::read_to_string("/proc/net/sockstat").expect("/proc/net/sockstat");
    let line = text
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .expect("a TCP line");
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == "orphan" {
            return words.next().unwrap().parse().unwrap();
        }
    }
    panic!("no orphan count in {line:?}");
}

/// Floods a session that asks, 64 KiB every 5 ms, until it passes the queue limit: the first
/// blocks fill the kernel's send buffer (the peer does not read), the rest the queue.
struct Flood;

impl Handler for Flood {
    type Session = ();

    fn on_receive(&self, ctx: &mut Context<'_>, session: SessionId, _: &[u8]) {
        let _ = ctx.set_timer(session, Duration::from_millis(5), 0);
    }

    fn on_timer(&self, ctx: &mut Context<'_>, session: SessionId, _: u64) {
        if ctx.send(session, &[0x5a; 64 * 1024]).is_ok() {
            let _ = ctx.set_timer(session, Duration::from_millis(5), 0);
        }
    }
}

fn slow_reader(addr: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect_timeout(&addr.into(), IO_TIMEOUT).unwrap();
    let mut stream: TcpStream = socket.into();
    stream.write_all(b"flood me").unwrap();
    stream
}

fn cut_off_readers_leave_no_orphans(backend: BackendChoice) {
    let before = orphans();
    let mut config = config(backend);
    config.send_queue_limit = 1024 * 1024;
    let server = start(config, Flood);
    let addr = server.local_addr();
    // They never read, and stay connected until the end.
    let readers: Vec<TcpStream> = (0..8).map(|_| slow_reader(addr)).collect();
    wait_until(Duration::from_secs(10), "every reader cut off", || {
        server
            .handle()
            .stats()
            .closed_for(&CloseReason::SendQueueFull)
            == 8
    });
    let cut = Instant::now();
    // The sockets are closed on the workers' next turn: look once that has surely happened.
    std::thread::sleep(Duration::from_millis(200));
    while orphans() > before {
        assert!(
            cut.elapsed() < Duration::from_secs(1),
            "{backend:?}: {} orphaned sockets 1 s after the cut (were {before})",
            orphans()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let stats = server.handle().stats();
    assert!(
        stats.bytes_delivered < stats.bytes_out,
        "what was dropped with the cut-off readers was queued, not delivered: {stats:?}"
    );
    drop(readers);
    stop_within(server, Duration::from_secs(10));
}

#[test]
fn cut_off_readers_are_reset_and_leave_no_orphans() {
    if let Some(why) = uring_unavailable() {
        eprintln!("io_uring skipped: {why}");
    } else {
        cut_off_readers_leave_no_orphans(BackendChoice::Uring);
    }
    cut_off_readers_leave_no_orphans(BackendChoice::Poll);
}
