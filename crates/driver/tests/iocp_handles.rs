//! The IOCP backend closes every socket it makes: the process's handle count is the same before
//! and after 100 listen/stop cycles and 1,000 clients that connect and reset. A test program of
//! its own, with one test, so that no other test opens handles meanwhile. (Under Wine in CI.)

#![cfg(windows)]

mod support;

use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

use iocp_driver::{BackendChoice, CloseMode, Config, Driver, Event, Io};
use socket2::{SockRef, Socket};
use windows_sys::Wdk::System::SystemInformation::NtQuerySystemInformation;
use windows_sys::Win32::System::Threading::{GetCurrentProcess, GetProcessHandleCount};

use support::{DEADLINE, TURN, connect, join, listen, turn_until};

fn driver(capacity: u32, accept_depth: u32) -> Driver {
    let config = Config {
        accept_depth,
        ..support::config(BackendChoice::Iocp)
    };
    support::driver(&config, capacity)
}

#[test]
fn no_handle_is_leaked() {
    listening_and_stopping_leaks_no_handle();
    clients_that_connect_and_reset_leak_no_handle();
}

/// Handles open in this process: `GetProcessHandleCount`, or, where that says 0 (Wine 8, whose
/// `ProcessHandleCount` is a stub), this process's entries in the system's handle table
/// (`NtQuerySystemInformation(SystemHandleInformation)`, which Wine implements).
fn handle_count() -> usize {
    /// `SystemHandleInformation`; `STATUS_INFO_LENGTH_MISMATCH`.
    const CLASS: i32 = 16;
    const TOO_SMALL: i32 = 0xC000_0004_u32 as i32;
    let mut count = 0u32;
    let mut table = vec![0u64; 1 << 14];
    let status = loop {
        let mut needed = 0u32;
        let len = (table.len() * 8) as u32;
        // SAFETY: the pseudo-handle of this process and a `u32` to write its count into; a
        // writable, 8-aligned buffer of `len` bytes for the table and a `u32` for its size.
        let status = unsafe {
            GetProcessHandleCount(GetCurrentProcess(), &mut count);
            NtQuerySystemInformation(CLASS, table.as_mut_ptr().cast(), len, &mut needed)
        };
        if status != TOO_SMALL {
            break status;
        }
        table.resize((needed as usize / 8 + 1).max(table.len() * 2), 0);
    };
    if count > 0 {
        return count as usize;
    }
    assert!(status >= 0, "NtQuerySystemInformation: {status:#x}");
    // `SYSTEM_HANDLE_INFORMATION`: a `u32` count (8 bytes with padding), then 24-byte entries
    // whose first field is the owner's process id, cut to a `u16`.
    let bytes: Vec<u8> = table.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let n = u32::from_ne_bytes(bytes[..4].try_into().unwrap()) as usize;
    let pid = std::process::id() as u16;
    bytes[8..]
        .chunks_exact(24)
        .take(n)
        .filter(|e| u16::from_ne_bytes([e[0], e[1]]) == pid)
        .count()
}

/// Every `AcceptEx` posted has a socket made for it; cancelling the accepts (`stop_accepting`)
/// must close them. 100 listen/stop cycles, 8 accepts posted each time, leave the process's
/// handle count where it was.
fn listening_and_stopping_leaks_no_handle() {
    let mut driver = driver(8, 8);
    let listener = Socket::from(TcpListener::bind("127.0.0.1:0").unwrap());
    let cycle = |driver: &mut Driver| {
        driver.io().start_accepting(&listener).unwrap();
        driver
            .turn(Some(Duration::ZERO), |_, e| panic!("unexpected {e:?}"))
            .unwrap();
        assert!(driver.io().is_accepting());
        driver.io().stop_accepting();
        turn_until(
            driver,
            "the accept to end",
            &mut (),
            |_, _, e| panic!("unexpected {e:?}"),
            |_, d| !d.io().is_accepting(),
        );
    };
    // The first cycle makes what stays: the port's own handle of the listener, the buffers.
    cycle(&mut driver);
    let before = handle_count();
    for _ in 0..100 {
        cycle(&mut driver);
    }
    let after = handle_count();
    println!("handles: {before} before 100 listen/stop cycles, {after} after");
    assert!(
        after <= before + 4,
        "{} handles more after 100 listen/stop cycles of 8 accepts",
        after - before
    );
}

/// Clients that connect and reset at once (a health check): every accept, whether it completes
/// with the connection or with the reset, leaves no socket behind. 1,000 of them, in batches,
/// leave the process's handle count where it was.
fn clients_that_connect_and_reset_leak_no_handle() {
    const CLIENTS: usize = 1000;
    let mut driver = driver(64, 16);
    let (_listener, addr) = listen(&mut driver);
    driver.turn(Some(Duration::ZERO), |_, _| {}).unwrap();
    let before = handle_count();
    let deadline = Instant::now() + 4 * DEADLINE;

    struct State {
        free: Vec<u32>,
        accepted: usize,
        closed: usize,
    }
    let mut state = State {
        free: (0..64).rev().collect(),
        accepted: 0,
        closed: 0,
    };
    let on_event = |s: &mut State, io: &mut Io, event: Event<'_>| match event {
        Event::Accepted(socket) => {
            s.accepted += 1;
            match s.free.pop() {
                Some(index) => {
                    io.attach(index, socket).unwrap();
                }
                None => drop(socket),
            }
        }
        Event::Received { conn, .. } | Event::ReadClosed { conn } => {
            let _ = io.close(conn, CloseMode::Reset);
        }
        Event::Closed { conn, .. } => {
            s.free.push(conn.index);
            s.closed += 1;
        }
        Event::AcceptError(e) => panic!("accept failed: {e}"),
        Event::Woken => {}
    };
    for batch in 0..CLIENTS / 50 {
        let clients = thread::spawn(move || {
            for _ in 0..50 {
                let stream = connect(addr);
                SockRef::from(&stream)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
                drop(stream);
            }
        });
        while !clients.is_finished() {
            assert!(Instant::now() < deadline, "timed out in batch {batch}");
            driver
                .turn(TURN, |io, event| on_event(&mut state, io, event))
                .unwrap();
        }
        join(clients);
    }
    // Whatever was accepted is closed by its reset (or its end); what was reset before it was
    // accepted took its accept's socket with it.
    let quiet = Duration::from_millis(500);
    let mut last_change = Instant::now();
    let mut seen = (state.accepted, state.closed);
    while Instant::now() - last_change < quiet || state.free.len() < 64 {
        assert!(Instant::now() < deadline, "timed out closing");
        driver
            .turn(TURN, |io, event| on_event(&mut state, io, event))
            .unwrap();
        if (state.accepted, state.closed) != seen {
            seen = (state.accepted, state.closed);
            last_change = Instant::now();
        }
    }
    let after = handle_count();
    println!(
        "handles: {before} before {CLIENTS} connect-and-reset clients, {after} after \
         ({} accepted as connections)",
        state.accepted
    );
    assert!(
        after <= before + 8,
        "{} handles more after {CLIENTS} connect-and-reset clients",
        after - before
    );
}
