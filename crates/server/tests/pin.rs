//! `Config::pin_workers`. Its own test binary: the worker threads of servers started by other
//! tests would carry the same names.
#![cfg(target_os = "linux")]

mod support;

use std::time::Duration;

use iocp_server::{BackendChoice, Context, Handler, SessionId};
use support::*;

struct Echo;

impl Handler for Echo {
    type Session = ();

    fn on_receive(&self, ctx: &mut Context<'_>, session: SessionId, data: &[u8]) {
        ctx.send(session, data).unwrap();
    }
}

/// `pin_workers`: each worker runs on one CPU of those the process may use, worker n on the n-th,
/// and the server serves as before.
#[test]
fn pinned_workers_keep_one_cpu_each() {
    let allowed = cpus_allowed(&std::fs::read_to_string("/proc/self/status").unwrap());
    if allowed.len() < 2 {
        // With one CPU every thread already runs on it: pinning could not be told apart.
        eprintln!("skipped: the process may use only CPU {allowed:?}");
        return;
    }
    let mut config = config(BackendChoice::Auto);
    config.pin_workers = true;
    config.workers = 3;
    let server = start(config, Echo);
    let mut stream = connect(server.local_addr());
    for i in 0..50u32 {
        let message = i.to_le_bytes().repeat(i as usize + 1);
        assert_eq!(echo(&mut stream, &message), message);
    }
    let mut pinned = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let path = task.unwrap().path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let Some(n) = name.trim().strip_prefix("iocp-worker-") else {
            continue;
        };
        let n: usize = n.parse().unwrap();
        let cpus = cpus_allowed(&std::fs::read_to_string(path.join("status")).unwrap());
        assert_eq!(
            cpus,
            vec![allowed[n % allowed.len()]],
            "worker {n} runs on {cpus:?}; the process may use {allowed:?}"
        );
        pinned.push(n);
    }
    pinned.sort();
    assert_eq!(pinned, vec![0, 1, 2], "every worker was found and pinned");
    stop_within(server, Duration::from_secs(10));
}

/// The CPUs of `Cpus_allowed_list` in a `/proc/.../status` ("0-2,5" → [0, 1, 2, 5]).
fn cpus_allowed(status: &str) -> Vec<usize> {
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list in /proc status")
        .trim();
    let mut cpus = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().unwrap()..=b.parse().unwrap()),
            None => cpus.push(part.parse().unwrap()),
        }
    }
    cpus
}
