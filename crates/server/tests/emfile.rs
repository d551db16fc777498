//! Out of file descriptors (`EMFILE`), accepting backs off instead of spinning, and recovers when
//! descriptors free up. The server runs in a child process (this test binary, re-executed) whose
//! descriptor limit is lowered, so the rest of the suite is not affected.
#![cfg(target_os = "linux")]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use iocp_server::{BackendChoice, Context, Handler, SessionId};
use support::*;

const CHILD: &str = "IOCP_EMFILE_TEST_CHILD";
const LIMIT: u64 = 64;

struct Echo;

impl Handler for Echo {
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

/// The child: lower the limit, serve, print the address, run until stdin closes.
fn child(backend: BackendChoice) {
    let limit = libc::rlimit {
        rlim_cur: LIMIT,
        rlim_max: LIMIT,
    };
    // SAFETY: `limit` is a valid rlimit for the duration of the call.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    let mut config = config(backend);
    config.workers = 1;
    let server = start(config, Echo);
    println!("{}", server.local_addr());
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    server.shutdown().unwrap();
}

fn accept_backs_off_when_out_of_descriptors(backend: BackendChoice) {
    if let Ok(name) = std::env::var(CHILD) {
        if name == format!("{backend:?}") {
            child(backend);
        }
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let filter = format!(
        "{}::accept_backs_off_when_out_of_descriptors",
        match backend {
            BackendChoice::Poll => "poll",
            _ => "uring",
        }
    );
    let mut server = Command::new(exe)
        .args([
            filter.as_str(),
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, format!("{backend:?}"))
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
        let last = line.split_whitespace().last().unwrap_or("");
        if let Ok(addr) = last.parse::<std::net::SocketAddr>() {
            break addr;
        }
    };
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
