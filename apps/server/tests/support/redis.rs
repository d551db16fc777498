//! Real Redis servers for the tests: each started by the test on a free loopback port in a
//! temporary folder of its own, and stopped by PID (SIGKILL: a crash, as a restart test wants).
//! A 3-master Redis Cluster is made with `redis-cli --cluster create`.
//!
//! `redis-server` and `haproxy` come from the system's packages: where they are missing and
//! the tests run as root on a system with `apt-get`, they are installed once (what `.ci/run`
//! does first); otherwise the test fails saying what to install.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Makes sure `program` is on the PATH, installing `package` with apt-get if it is not (once
/// per machine; concurrent test binaries wait for each other on a lock file).
pub fn require(program: &str, package: &str) {
    let found = |p: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {p}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if found(program) {
        return;
    }
    let lock = std::env::temp_dir().join("iocp-server-test-apt.lock");
    let script = format!(
        "command -v {program} >/dev/null || {{ \
           (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {package}) \
           >/dev/null 2>&1; }}"
    );
    let status = Command::new("flock")
        .arg(&lock)
        .args(["sh", "-c", &script])
        .status();
    assert!(
        found(program),
        "`{program}` is needed by this test and could not be installed ({status:?}): \
         install the package `{package}` (apt-get install {package}), or run .ci/run"
    );
}

/// A port on 127.0.0.1 that nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A free port for a cluster node, whose bus listens on port + 10,000: both free, and valid.
fn cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port <= 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// One `redis-server` process.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    cluster: bool,
}

impl RedisServer {
    /// A Redis on a free port, with its data in `dir` (append-only file on, so that a restart
    /// keeps the accounts, as a production Redis would).
    pub fn start(dir: &Path) -> RedisServer {
        RedisServer::start_on(dir, free_port(), false)
    }

    /// A Redis on `port` (a cluster node with `cluster`).
    pub fn start_on(dir: &Path, port: u16, cluster: bool) -> RedisServer {
        require("redis-server", "redis-server");
        std::fs::create_dir_all(dir).unwrap();
        let mut server = RedisServer {
            child: None,
            port,
            dir: dir.to_owned(),
            cluster,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let mut args = vec![
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--protected-mode",
            "no",
            "--daemonize",
            "no",
            "--logfile",
            "redis.log",
        ];
        if self.cluster {
            args.extend([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            ]);
        }
        let child = Command::new("redis-server")
            .args(&args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while cli(self.port, &["PING"]) != "PONG" {
            assert!(
                Instant::now() < deadline,
                "redis-server on {} did not answer PING: {}",
                self.port,
                std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL: a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and data folder.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// CPU time (user + system) the process has used, in seconds (Linux `/proc`).
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.pid())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// CPU time (user + system) of process `pid`, in seconds, from `/proc/PID/stat`.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|t| t.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    ticks / 100.0
}

/// `redis-cli -p PORT ARGS...`: what it printed (empty if it failed or took over 5 s).
pub fn cli(port: u16, args: &[&str]) -> String {
    Command::new("timeout")
        .args(["5", "redis-cli", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// A Redis Cluster of three masters (no replicas), each in its own folder under `dir`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start(dir: &Path) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|i| RedisServer::start_on(&dir.join(format!("node{i}")), cluster_port(), true))
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let output = Command::new("timeout")
            .arg("60")
            .arg("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            output.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_ok();
        cluster
    }

    /// Waits until every node says `cluster_state:ok` (30 s at most).
    pub fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for node in &self.nodes {
            while !cli(node.port, &["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                assert!(Instant::now() < deadline, "the cluster never became ok");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// The seed URLs of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// CPU seconds of every node together.
    pub fn cpu_seconds(&self) -> f64 {
        self.nodes.iter().map(RedisServer::cpu_seconds).sum()
    }
}
