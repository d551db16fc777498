//! `echo-mio`: a plain single-threaded mio (epoll, edge-triggered) echo server.
//!
//! Idle connections own no buffer: data is read into one scratch buffer shared
//! by all connections and written straight back. Only when a write would block
//! is the unsent rest copied into a per-connection `Vec` (allocated then, freed
//! once drained); the connection then waits for WRITABLE and is not read from
//! until that backlog is gone, which bounds memory per connection.
//! Prints `listening on ADDR` first on stdout; exits on SIGINT or SIGTERM.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

use clap::Parser;
use iocp_baselines::{ACCEPT_BACKOFF, DEFAULT_ADDR, accept_needs_backoff};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

/// Token of the listening socket.
const LISTENER: Token = Token(usize::MAX);
/// Token of the signal pipe.
const SIGNALS: Token = Token(usize::MAX - 1);
/// Size of the scratch buffer shared by all connections.
const SCRATCH_SIZE: usize = 64 * 1024;

/// Plain single-threaded mio/epoll echo server (baseline).
#[derive(Debug, Parser)]
#[command(name = "echo-mio", version)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = DEFAULT_ADDR)]
    addr: SocketAddr,
}

/// One accepted connection.
struct Conn {
    /// The socket, registered under the connection's slab key.
    stream: TcpStream,
    /// Bytes read but not yet written back; empty (no allocation) unless a
    /// write would have blocked.
    pending: Vec<u8>,
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    iocp_baselines::raise_nofile_limit_or_warn();

    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(args.addr)?;
    println!("listening on {}", listener.local_addr()?);
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut signals = Signals::new([libc::SIGINT, libc::SIGTERM])?;
    poll.registry()
        .register(&mut signals, SIGNALS, Interest::READABLE)?;

    let mut conns: Slab<Conn> = Slab::new();
    let mut scratch = vec![0u8; SCRATCH_SIZE];
    let mut events = Events::with_capacity(1024);
    // Set after a resource-exhaustion accept error: accepting resumes then.
    let mut accept_resume: Option<Instant> = None;

    loop {
        let timeout = accept_resume.map(|t| t.saturating_duration_since(Instant::now()));
        match poll.poll(&mut events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }

        // The listener is edge-triggered: after a back-off nothing new may
        // arrive on it, so retry explicitly once the deadline has passed.
        if accept_resume.is_some_and(|t| Instant::now() >= t) {
            accept_resume = accept_all(&listener, poll.registry(), &mut conns);
        }

        for event in events.iter() {
            match event.token() {
                LISTENER => {
                    if accept_resume.is_none() {
                        accept_resume = accept_all(&listener, poll.registry(), &mut conns);
                    }
                }
                SIGNALS => {
                    if signals
                        .pending()
                        .any(|s| s == libc::SIGINT || s == libc::SIGTERM)
                    {
                        return Ok(());
                    }
                }
                Token(key) => {
                    let Some(conn) = conns.get_mut(key) else {
                        continue;
                    };
                    match drive(conn, Token(key), poll.registry(), &mut scratch) {
                        Ok(true) => {}
                        // EOF or error: dropping the socket closes it, which
                        // also removes it from the epoll set.
                        Ok(false) | Err(_) => drop(conns.remove(key)),
                    }
                }
            }
        }
    }
}

/// Accepts until the backlog is empty. Returns the time to resume accepting
/// if accepting must pause because a resource (descriptors, memory) ran out.
fn accept_all(
    listener: &TcpListener,
    registry: &Registry,
    conns: &mut Slab<Conn>,
) -> Option<Instant> {
    loop {
        match listener.accept() {
            Ok((mut stream, _peer)) => {
                let _ = stream.set_nodelay(true);
                let entry = conns.vacant_entry();
                let token = Token(entry.key());
                match registry.register(&mut stream, token, Interest::READABLE) {
                    Ok(()) => {
                        entry.insert(Conn {
                            stream,
                            pending: Vec::new(),
                        });
                    }
                    Err(e) => eprintln!("register: {e}"),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if accept_needs_backoff(&e) => {
                eprintln!("accept: {e}; backing off");
                return Some(Instant::now() + ACCEPT_BACKOFF);
            }
            Err(e) => eprintln!("accept: {e}"),
        }
    }
}

/// Handles readiness on one connection. Returns `Ok(false)` once the peer has
/// closed its side (everything it sent has been echoed by then).
fn drive(
    conn: &mut Conn,
    token: Token,
    registry: &Registry,
    scratch: &mut [u8],
) -> io::Result<bool> {
    if !conn.pending.is_empty() {
        let written = write_some(&mut conn.stream, &conn.pending)?;
        if written < conn.pending.len() {
            conn.pending.drain(..written);
            return Ok(true);
        }
        // Drained: free the backlog and go back to reading. Data may have
        // piled up meanwhile without a fresh edge, so read right away.
        conn.pending = Vec::new();
        registry.reregister(&mut conn.stream, token, Interest::READABLE)?;
    }

    loop {
        let n = match conn.stream.read(scratch) {
            Ok(0) => return Ok(false),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let written = write_some(&mut conn.stream, &scratch[..n])?;
        if written < n {
            conn.pending.extend_from_slice(&scratch[written..n]);
            registry.reregister(&mut conn.stream, token, Interest::WRITABLE)?;
            return Ok(true);
        }
    }
}

/// Writes as much of `buf` as the socket takes without blocking and returns
/// how many bytes that was.
fn write_some(stream: &mut TcpStream, buf: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < buf.len() {
        match stream.write(&buf[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}
