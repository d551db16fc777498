//! Out of file descriptors (`EMFILE`), accepting backs off instead of spinning, and recovers when
//! descriptors free up; on io_uring, connections in the rings' file tables do not count against
//! the descriptor limit at all. The server runs in a child process (this test binary,
//! re-executed) whose descriptor limit is lowered, so the rest of the suite is not affected.
#![cfg(target_os = "linux")]

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use iocp_server::{BackendChoice, Context, Handler, SessionId};
use support::*;

const CHILD: &str = "IOCP_EMFILE_TEST_CHILD";
const LIMIT: u64 = 64;

struct Echo;

impl Handler for Echo {
    type Session = ();

    fn on_receive(&self, ctx: &mut Context<'_>, session: SessionId, data: &[u8]) {
        let _ = ctx.send(session, data);
    }
}

/// CPU time (user + system) of a process, from `/proc/PID/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// The child: lower the limit, serve, print the address (or `skipped: ...` when `needs_files` and
/// the server has no io_uring file table), run until stdin closes.
fn child(config: iocp_server::Config, needs_files: bool) {
    let limit = libc::rlimit {
        rlim_cur: LIMIT,
        rlim_max: LIMIT,
    };
    // SAFETY: `limit` is a valid rlimit for the duration of the call.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    let server = start(config, Echo);
    if needs_files && !server.features().registered_files {
        println!("skipped: no file table: {}", server.features());
    } else {
        println!("{}", server.local_addr());
    }
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    server.shutdown().unwrap();
}

fn accept_backs_off_when_out_of_descriptors(backend: BackendChoice) {
    let name = format!("{backend:?}");
    if let Ok(wanted) = std::env::var(CHILD) {
        if wanted == name {
            let mut config = config(backend);
            config.workers = 1;
            // Every connection takes a descriptor, so that the server runs out of them.
            config.uring.no_registered_files = true;
            child(config, false);
        }
        return;
    }
    let filter = format!(
        "{}::accept_backs_off_when_out_of_descriptors",
        match backend {
            BackendChoice::Poll => "poll",
            _ => "uring",
        }
    );
    let (mut server, addr, _out) = spawn_child(&filter, &name).unwrap();
    // More connections than the child has descriptors: the kernel completes the handshakes
    // (backlog), the server runs out of descriptors accepting them.
    let mut clients: Vec<_> = (0..2 * LIMIT).map(|_| connect(addr)).collect();
    let before = cpu_time(server.id());
    let start = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    let spent = cpu_time(server.id()) - before;
    assert!(
        spent < start.elapsed() / 4,
        "the server spun while out of descriptors: {spent:?} of CPU in {:?}",
        start.elapsed()
    );
    // Free descriptors: connections are served again, within the back-off (at most 1 s).
    clients.truncate(4);
    let mut again = connect(addr);
    again
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(echo(&mut again, b"served again"), b"served again");
    drop(clients);
    drop(again);
    drop(server.stdin.take());
    let status = server.wait().unwrap();
    assert!(status.success());
}

backend_tests!(accept_backs_off_when_out_of_descriptors);

/// Runs the test `filter` of this binary in a child process with `CHILD=name`; returns it and
/// the address its server printed, and its output (kept open: the child writes to it until it
/// exits). `Err` with the child's line if it printed `skipped: ...` instead (it is then told to
/// stop).
fn spawn_child(
    filter: &str,
    name: &str,
) -> Result<(Child, SocketAddr, BufReader<ChildStdout>), String> {
    let exe = std::env::current_exe().unwrap();
    let mut server = Command::new(exe)
        .args([filter, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, name)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(server.stdout.take().unwrap());
    let addr = loop {
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "the child server died"
        );
        // The harness prints `test NAME ... ` before the child's own line.
        if let Some(at) = line.find("skipped:") {
            drop(server.stdin.take());
            let _ = server.wait();
            return Err(line[at..].trim().to_owned());
        }
        let last = line.split_whitespace().last().unwrap_or("");
        if let Ok(addr) = last.parse::<SocketAddr>() {
            break addr;
        }
    };
    Ok((server, addr, out))
}

/// On io_uring each connection's socket lives in its ring's file table, not in the process's
/// descriptor table: a server limited to 64 descriptors holds and serves 3 × 64 connections
/// (4 workers, each table at most the limit), and uses only a handful of descriptors for them.
#[test]
fn uring_holds_more_connections_than_descriptors() {
    const NAME: &str = "files";
    const CONNECTIONS: usize = 3 * LIMIT as usize;
    if std::env::var(CHILD).is_ok_and(|v| v == NAME) {
        let mut config = config(BackendChoice::Uring);
        config.workers = 4;
        config.max_sessions = 4 * 60;
        child(config, true);
        return;
    }
    if std::env::var(CHILD).is_ok() {
        return;
    }
    if let Some(why) = uring_unavailable() {
        eprintln!("skipped: io_uring unavailable: {why}");
        return;
    }
    let (mut server, addr, _out) =
        match spawn_child("uring_holds_more_connections_than_descriptors", NAME) {
            Ok(child) => child,
            Err(skipped) => return eprintln!("{skipped}"),
        };
    let mut clients: Vec<_> = (0..CONNECTIONS).map(|_| connect(addr)).collect();
    for (i, client) in clients.iter_mut().enumerate() {
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let message = format!("connection {i}");
        assert_eq!(
            echo(client, message.as_bytes()),
            message.as_bytes(),
            "connection {i} of {CONNECTIONS}"
        );
    }
    // All of them are still open and served, the first included.
    for (i, client) in clients.iter_mut().enumerate().step_by(37) {
        assert_eq!(echo(client, b"still here"), b"still here", "connection {i}");
    }
    let descriptors = std::fs::read_dir(format!("/proc/{}/fd", server.id()))
        .unwrap()
        .count();
    println!("{CONNECTIONS} connections held with {descriptors} descriptors open (limit {LIMIT})");
    assert!(descriptors < LIMIT as usize, "{descriptors} descriptors");
    drop(clients);
    drop(server.stdin.take());
    let status = server.wait().unwrap();
    assert!(status.success());
}
