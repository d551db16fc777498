//! Cases only the readiness backend has, driven through the whole [`Driver`] on loopback: a send
//! that finds the socket full waits for writable; a fast sender is read across waits (the read
//! budget). The scenarios every backend shares are in `tests/contract.rs`.

use std::cell::Cell;
use std::thread;
use std::time::Duration;

use crate::{BackendChoice, Config};

#[path = "../../../tests/support/mod.rs"]
mod support;

use support::{Echo, Plan, echo_client, listen, turn_until};

thread_local! {
    /// Sends of this thread's ports that found the socket full.
    static SEND_WOULD_BLOCK: Cell<u64> = const { Cell::new(0) };
    /// Connections of this thread's ports that stopped reading at the budget.
    static READ_BUDGET_SPENT: Cell<u64> = const { Cell::new(0) };
}

/// Called by the port when a connection has read its budget for one wait.
pub(crate) fn count_read_budget_spent() {
    READ_BUDGET_SPENT.with(|c| c.set(c.get() + 1));
}

/// Called by [`super::Port::send`] when the socket took nothing.
pub(super) fn count_send_would_block() {
    SEND_WOULD_BLOCK.with(|c| c.set(c.get() + 1));
}

fn config() -> Config {
    support::config(BackendChoice::Poll)
}

#[test]
fn a_send_that_finds_the_socket_full_waits_for_writable() {
    let mut driver = support::driver(&config(), 8);
    let (_listener, addr) = listen(&mut driver);
    let before = SEND_WOULD_BLOCK.with(Cell::get);
    let clients = (0..6)
        .map(|i| {
            let plan = Plan {
                seed: 100 + i,
                len: 256 * 1024 - i as usize * 1000,
                piece: if i % 3 == 0 { 20_000 } else { 0 },
                read_late: i % 2 == 0,
            };
            echo_client(addr, plan)
        })
        .collect();
    let mut echo = Echo::new(8, Some(4096));
    echo.serve(&mut driver, clients, 6);
    assert!(
        SEND_WOULD_BLOCK.with(Cell::get) > before,
        "no send found a full socket: the test did not test waiting for writable"
    );
}

#[test]
fn a_fast_sender_is_read_across_waits() {
    let mut driver = support::driver(&config(), 1);
    let (listener, addr) = listen(&mut driver);
    // Room for much more than one wait's budget to pile up before the server reads.
    listener.set_recv_buffer_size(4 << 20).unwrap();
    let before = READ_BUDGET_SPENT.with(Cell::get);
    let plan = Plan {
        seed: 7,
        len: 2 << 20,
        ..Plan::default()
    };
    let client = echo_client(addr, plan);
    let mut echo = Echo::new(1, None);
    turn_until(
        &mut driver,
        "the connection",
        &mut echo,
        Echo::on_event,
        |echo, _| !echo.attached.is_empty(),
    );
    // The receive is armed on the next turn, with the client's bytes already waiting.
    thread::sleep(Duration::from_millis(300));
    echo.serve(&mut driver, vec![client], 1);
    assert!(
        READ_BUDGET_SPENT.with(Cell::get) > before,
        "no connection read its whole budget: the test did not test reading across waits"
    );
}
