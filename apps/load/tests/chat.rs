//! `iocp-load chat` against the real chat server (in-process, on loopback): users created in the
//! server's account file by the tool, rooms entered, every notify checked at every member.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use iocp_accounts::{AccountStore, Accounts, HashCost, RedbStore};
use iocp_server::Config;
use iocp_server_app::chat::{ChatConfig, ChatServer, EngineConfig};
use iocp_server_app::redis::{Redis, RedisConfig, RedisStore};

/// The chat server's tests' Redis helper (a real `redis-server` on a free port, stopped by PID).
#[cfg(unix)]
#[path = "../../server/tests/support/redis.rs"]
#[allow(dead_code)]
mod redis_support;

#[test]
fn chat_load_verifies_every_delivery() {
    let dir = std::env::temp_dir().join(format!("iocp-load-chat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("chat.redb");
    let store = Arc::new(RedbStore::open(&db).unwrap());
    let config = ChatConfig {
        server: Config {
            addr: "127.0.0.1:0".parse().unwrap(),
            workers: 2,
            max_sessions: 256,
            linger: Duration::from_secs(2),
            ..Config::default()
        },
        rooms: 5,
        room_capacity: 20,
        ..ChatConfig::default()
    };
    let server = ChatServer::start(config, Accounts::new(store as Arc<dyn AccountStore>)).unwrap();
    let output = Command::new("timeout")
        .args(["60", env!("CARGO_BIN_EXE_iocp-load"), "chat"])
        .args(["--addr", &server.local_addr().to_string()])
        .args([
            "--users",
            "50",
            "--rooms",
            "5",
            "--duration",
            "1s",
            "--rate",
            "20",
        ])
        .arg("--db")
        .arg(&db)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    server.shutdown().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        output.status.success(),
        "iocp-load chat failed:\n{stdout}\n{stderr}"
    );
    println!("{stdout}{stderr}");
}

/// Two chat instances on one real Redis: `iocp-load chat` spreads the users so that every room
/// has members on both, and checks that every member got every message of its room in one order.
#[cfg(unix)]
#[test]
fn chat_load_across_two_instances_on_redis() {
    let dir = std::env::temp_dir().join(format!("iocp-load-redis-{}", std::process::id()));
    let redis_server = redis_support::RedisServer::start(&dir);
    let connect = || {
        let config = RedisConfig::new(vec![redis_server.url()]);
        Redis::connect(config, Duration::from_secs(5), true).unwrap()
    };
    let accounts = Accounts::new(Arc::new(RedisStore::new(connect())) as Arc<dyn AccountStore>);
    for i in 0..40 {
        accounts
            .add(&format!("load{i}"), "load-pw", HashCost::LIGHT, false)
            .unwrap();
    }
    let start = || {
        let config = ChatConfig {
            server: Config {
                addr: "127.0.0.1:0".parse().unwrap(),
                workers: 1,
                max_sessions: 128,
                linger: Duration::from_secs(2),
                ..Config::default()
            },
            // Each instance its own connection, as separate processes would have.
            engine: EngineConfig::Redis(connect()),
            rooms: 4,
            room_capacity: 10,
            ..ChatConfig::default()
        };
        ChatServer::start(config, accounts.clone()).unwrap()
    };
    let (a, b) = (start(), start());
    let output = Command::new("timeout")
        .args(["60", env!("CARGO_BIN_EXE_iocp-load"), "chat"])
        .args(["--addr", &a.local_addr().to_string()])
        .args(["--addr", &b.local_addr().to_string()])
        .args([
            "--users",
            "40",
            "--rooms",
            "4",
            "--duration",
            "2s",
            "--rate",
            "20",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    a.shutdown().unwrap();
    b.shutdown().unwrap();
    drop(redis_server);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        output.status.success(),
        "iocp-load chat failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("in one order for the whole room (2 instances)"),
        "{stdout}"
    );
    println!("{stdout}{stderr}");
}
