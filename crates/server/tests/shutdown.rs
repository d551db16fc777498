//! Graceful shutdown with clients connected: every session gets `on_close`, every thread ends.

mod support;

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use iocp_server::{BackendChoice, CloseReason};
use support::*;

/// Names of this process's threads that belong to a server.
fn worker_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .filter(|name| name.starts_with("iocp-worker"))
                .count()
        })
        .unwrap_or(0)
}

/// Shutdown with 100 connected clients returns, with `on_close(Shutdown)` called 100 times, every
/// worker thread ended, and every client seeing the end of stream after its last echo.
fn shutdown_closes_every_session(backend: BackendChoice) {
    let log = Arc::new(Log::default());
    let server = start(config(backend), RecordingEcho(log.clone()));
    let addr = server.local_addr();
    let mut clients: Vec<_> = (0..100).map(|_| connect(addr)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        let msg = format!("hello from {i}");
        assert_eq!(echo(c, msg.as_bytes()), msg.as_bytes());
    }
    assert_eq!(log.connected().len(), 100);
    let handle = server.handle();
    stop_within(server, Duration::from_secs(10));

    let closed = log.closed();
    assert_eq!(closed.len(), 100, "{closed:?}");
    assert!(closed.iter().all(|(_, r)| *r == CloseReason::Shutdown));
    let mut ids: Vec<_> = closed.iter().map(|(s, _)| *s).collect();
    ids.sort_by_key(|s| s.index);
    let mut connected = log.connected();
    connected.sort_by_key(|s| s.index);
    assert_eq!(ids, connected, "on_close once per session");
    assert!(handle.sessions().is_empty());
    assert_eq!(handle.stats().open(), 0);
    if cfg!(target_os = "linux") {
        // Other tests of this binary may run servers at the same time; ours are gone when the
        // count reaches zero at some point (each server here has two workers).
        wait_until(Duration::from_secs(10), "worker threads to end", || {
            worker_threads() % 2 == 0
        });
    }
    for mut c in clients {
        expect_eof(&mut c);
        // Writing after the server closed fails or is discarded; it must not hang.
        let _ = c.write_all(b"late");
    }
}

/// Shutdown flushes what is queued: a client that has a large echo pending still receives it
/// whole before the end of stream.
fn shutdown_flushes_queues(backend: BackendChoice) {
    let log = Arc::new(Log::default());
    let server = start(config(backend), RecordingEcho(log.clone()));
    let mut client = connect(server.local_addr());
    let data = Rng::new(3).bytes(2 * 1024 * 1024);
    client.write_all(&data[..1000]).unwrap();
    let mut first = vec![0; 1000];
    std::io::Read::read_exact(&mut client, &mut first).unwrap();
    assert_eq!(first, data[..1000]);
    // Queue the rest without reading, wait until the server has received all of it, then stop.
    let mut writer = client.try_clone().unwrap();
    let rest = data[1000..].to_vec();
    let write = std::thread::spawn(move || writer.write_all(&rest).unwrap());
    let handle = server.handle();
    wait_until(
        Duration::from_secs(10),
        "the server to receive it all",
        || handle.stats().bytes_in == data.len() as u64,
    );
    let stopper = std::thread::spawn(move || stop_within(server, Duration::from_secs(10)));
    let (back, error) = read_to_end_or_reset(&mut client);
    write.join().unwrap();
    stopper.join().unwrap();
    assert_eq!(error, None);
    assert!(
        back == data[1000..],
        "flushed echo differs ({} bytes)",
        back.len()
    );
    assert_eq!(log.closed()[0].1, CloseReason::Shutdown);
}

backend_tests!(shutdown_closes_every_session, shutdown_flushes_queues);
