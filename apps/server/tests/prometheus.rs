//! A real Prometheus scrapes the server's `/metrics` and answers a query about it: the
//! endpoint works with the scraper it is for (content negotiation, OpenMetrics included).
//!
//! Prometheus runs on a free loopback port, with its configuration and data in a temporary
//! directory, and is stopped by its process id at the end. Without it (the Debian package
//! `prometheus`, which `.ci/run` installs) the test is skipped with a note, except in CI.

mod support;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::IO_TIMEOUT;
use support::process::ServerProcess;
use support::scrape::{http_get, metrics_addr};

/// Prometheus may take this long to start, scrape and answer.
const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(60);

/// A Prometheus process, stopped (SIGTERM, then SIGKILL) by its id on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts Prometheus in `dir`, scraping `target` every second; `None` if it is not installed.
fn start_prometheus(dir: &std::path::Path, target: SocketAddr) -> Option<Prometheus> {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: iocp-server\n    static_configs:\n      \
             - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let spawned = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match spawned {
        Ok(child) => Some(Prometheus { child, addr }),
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED: prometheus not found ({e}): apt-get install prometheus");
            None
        }
        Err(e) => panic!("prometheus not found ({e}): .ci/run installs the Debian package"),
    }
}

#[test]
fn prometheus_scrapes_the_server_and_answers_a_query() {
    let mut server = ServerProcess::start(&[
        "echo",
        "--addr",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let metrics = metrics_addr(&mut server);
    let dir = tempfile::tempdir().unwrap();
    let Some(mut prometheus) = start_prometheus(dir.path(), metrics) else {
        return;
    };
    // Two sessions, so that the answer is not a default.
    let clients: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect_timeout(&server.addr, IO_TIMEOUT).unwrap())
        .collect();

    let query = "/api/v1/query?query=iocp_sessions_accepted_total";
    let deadline = Instant::now() + PROMETHEUS_TIMEOUT;
    let mut last = String::new();
    let answer = loop {
        if let Ok(Some(status)) = prometheus.child.try_wait() {
            panic!("prometheus exited: {status:?}");
        }
        if TcpStream::connect_timeout(&prometheus.addr, Duration::from_millis(200)).is_ok() {
            let (status, _, body) = http_get(prometheus.addr, query, None);
            if status == 200 {
                let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
                let value = json["data"]["result"][0]["value"][1]
                    .as_str()
                    .map(str::to_owned);
                if value.as_deref() == Some("2") {
                    break json;
                }
            }
            last = body;
        }
        assert!(
            Instant::now() < deadline,
            "no answer 2 from Prometheus within {PROMETHEUS_TIMEOUT:?}; last: {last}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(answer["status"], "success");
    assert_eq!(answer["data"]["result"][0]["metric"]["job"], "iocp-server");
    // The scrape itself was healthy.
    let (status, _, body) = http_get(prometheus.addr, "/api/v1/query?query=up", None);
    assert_eq!(status, 200);
    let up: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(up["data"]["result"][0]["value"][1], "1", "{body}");

    drop(prometheus);
    drop(clients);
    server.stop();
}
