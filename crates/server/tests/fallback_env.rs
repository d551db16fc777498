//! `IOCP_FORCE_URING_FAILURE=1` makes io_uring set-up fail as a seccomp filter would: `auto` must
//! end on `poll`, say why, and serve. (A test binary of its own: the variable is process-wide.)

mod support;

use std::time::Duration;

use iocp_server::{Backend, BackendChoice, Context, Handler, SessionId};
use support::*;

struct Echo;

impl Handler for Echo {
    type Session = ();

    fn on_receive(&self, ctx: &mut Context<'_>, session: SessionId, data: &[u8]) {
        let _ = ctx.send(session, data);
    }
}

#[test]
fn environment_forces_the_fall_back() {
    if cfg!(windows) {
        eprintln!("skipped: `auto` is IOCP on Windows; there is no io_uring to fall back from");
        return;
    }
    // SAFETY: set before any other thread of this test binary exists (a single test).
    unsafe { std::env::set_var("IOCP_FORCE_URING_FAILURE", "1") };
    let server = start(config(BackendChoice::Auto), Echo);
    assert_eq!(server.backend(), Backend::Poll);
    let why = server.features().fallback.clone().expect("a reason");
    println!("{why}");
    assert!(why.contains("IOCP_FORCE_URING_FAILURE"), "{why}");
    let mut client = connect(server.local_addr());
    let data = Rng::new(9).bytes(300_000);
    assert!(echo(&mut client, &data) == data);
    expect_eof(&mut client);
    stop_within(server, Duration::from_secs(10));

    // `uring` forced while io_uring is unavailable fails to start, with the reason.
    let error = iocp_server::Server::start(config(BackendChoice::Uring), Echo)
        .err()
        .expect("io_uring forced off");
    assert!(
        error.to_string().contains("creating a completion port"),
        "{error}"
    );
}
