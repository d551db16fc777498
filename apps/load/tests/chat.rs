//! `iocp-load chat` against the real chat server (in-process, on loopback): users created in the
//! server's account file by the tool, rooms entered, every notify checked at every member.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use iocp_accounts::{AccountStore, Accounts, RedbStore};
use iocp_server::Config;
use iocp_server_app::chat::{ChatConfig, ChatServer};

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
