//! Which io_uring features the kernel gives us, and the fall-back paths inside the backend.

mod support;

use std::time::Duration;

use iocp_server::{Backend, BackendChoice, Context, Handler, SessionId, UringOptions};
use support::*;

struct Echo;

impl Handler for Echo {
    type Session = ();

    fn on_receive(&self, ctx: &mut Context<'_>, session: SessionId, data: &[u8]) {
        ctx.send(session, data).unwrap();
    }
}

fn echo_a_few(server: &iocp_server::Server) {
    let addr = server.local_addr();
    let clients: Vec<_> = (0..20)
        .map(|i| {
            std::thread::spawn(move || {
                let mut rng = Rng::new(i);
                let mut stream = connect(addr);
                for _ in 0..30 {
                    let data = rng.message(100 * 1024);
                    assert!(echo(&mut stream, &data) == data);
                }
                expect_eof(&mut stream);
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
}

#[test]
fn kernel_probe_reports_features() {
    if let Some(why) = uring_unavailable() {
        eprintln!("skipped: io_uring unavailable: {why}");
        return;
    }
    let server = start(config(BackendChoice::Uring), Echo);
    let features = server.features().clone();
    println!("io_uring features in use: {features}");
    assert_eq!(server.backend(), Backend::Uring);
    assert!(features.fallback.is_none());
    assert!(
        features.registered_files || features.notes.iter().any(|n| n.contains("file table")),
        "sockets are registered in the ring's file table, or a note says why not: {features}"
    );
    echo_a_few(&server);
    stop_within(server, Duration::from_secs(10));
}

/// One-shot accept, one-shot receive into pooled buffers and plain descriptors (what older
/// kernels get) serve the same traffic.
#[test]
fn uring_fallback_paths_echo() {
    if uring_unavailable().is_some() {
        eprintln!("skipped: io_uring unavailable");
        return;
    }
    let mut config = config(BackendChoice::Uring);
    config.uring = UringOptions {
        no_multishot_accept: true,
        no_multishot_recv: true,
        no_registered_files: true,
        ..UringOptions::default()
    };
    let server = start(config, Echo);
    let features = server.features().clone();
    println!("io_uring features in use: {features}");
    assert!(!features.multishot_accept && !features.multishot_recv && !features.registered_files);
    echo_a_few(&server);
    stop_within(server, Duration::from_secs(10));
}

/// `auto` falls back to `poll` when io_uring cannot be set up, says why, and serves echo.
#[test]
fn auto_falls_back_to_poll() {
    if cfg!(windows) {
        eprintln!("skipped: `auto` is IOCP on Windows; there is no io_uring to fall back from");
        return;
    }
    let mut config = config(BackendChoice::Auto);
    config.uring.force_setup_failure = true;
    let server = start(config, Echo);
    assert_eq!(server.backend(), Backend::Poll);
    let why = server.features().fallback.clone().expect("a reason");
    println!("{why}");
    assert!(
        why.contains("io_uring unavailable") && why.contains("poll"),
        "{why}"
    );
    echo_a_few(&server);
    stop_within(server, Duration::from_secs(10));
}
