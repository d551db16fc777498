//! `iocp-chat` as people use it, against a chat server started in-process: two clients log in,
//! join a room, talk, leave, quit.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use iocp_accounts::{AccountStore, Accounts, HashCost, MemoryStore};
use iocp_server_app::chat::{ChatConfig, ChatServer};

const TIMEOUT: Duration = Duration::from_secs(10);

fn server() -> ChatServer {
    let accounts = Accounts::new(Arc::new(MemoryStore::new()) as Arc<dyn AccountStore>);
    for user in ["alice", "bob"] {
        accounts
            .add(user, &format!("{user}-pw"), HashCost::LIGHT, false)
            .unwrap();
    }
    let mut config = ChatConfig::default();
    config.server.addr = "127.0.0.1:0".parse().unwrap();
    config.server.workers = 1;
    config.server.max_sessions = 16;
    ChatServer::start(config, accounts).unwrap()
}

/// A running `iocp-chat`, its stdin, and its stdout lines.
struct Chat {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Chat {
    fn start(addr: std::net::SocketAddr, user: &str, password: &str) -> Chat {
        let mut child = Command::new(env!("CARGO_BIN_EXE_iocp-chat"))
            .args([
                "--addr",
                &addr.to_string(),
                "--user",
                user,
                "--password-stdin",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx2.send(format!("stderr: {line}"));
            }
        });
        let mut chat = Chat {
            stdin: child.stdin.take(),
            child,
            lines,
        };
        chat.type_line(password);
        chat
    }

    fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for a line containing `what`; returns it.
    fn expect(&mut self, what: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        let mut seen = Vec::new();
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) if line.contains(what) => return line,
                Ok(line) => seen.push(line),
                Err(_) => {
                    let _ = self.child.kill();
                    panic!("never saw {what:?}; saw {seen:?}");
                }
            }
        }
    }

    /// Closes stdin and waits for the exit; returns whether it succeeded.
    fn finish(mut self) -> bool {
        drop(self.stdin.take());
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("iocp-chat did not exit");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[test]
fn two_people_chat() {
    let server = server();
    let addr = server.local_addr();

    let mut alice = Chat::start(addr, "alice", "alice-pw");
    alice.expect("* logged in as alice");
    alice.type_line("/join 3");
    alice.expect("* entered room 3");
    alice.expect("* in the room: alice");
    alice.type_line("/echo 에코 test");
    alice.expect("* echo: 에코 test");

    let mut bob = Chat::start(addr, "bob", "bob-pw");
    bob.expect("* logged in as bob");
    bob.type_line("hello?");
    bob.expect(
        "! chat refused: not in a room (/join N first) (CHAT_ROOM_INVALID_ROOM_NUMBER (81))",
    );
    bob.type_line("/join 3");
    bob.expect("* entered room 3");
    bob.expect("* in the room: alice, bob");
    alice.expect("* bob entered the room");

    bob.type_line("hi alice, 안녕");
    alice.expect("[bob] hi alice, 안녕");
    bob.expect("[bob] hi alice, 안녕");
    alice.type_line("hi bob");
    bob.expect("[alice] hi bob");

    alice.type_line("/leave");
    alice.expect("* you left the room");
    bob.expect("* alice left the room");
    alice.type_line("/quit");
    assert!(alice.finish());

    // End of input quits too.
    assert!(bob.finish());
    let stats = server.stats();
    assert_eq!(stats.chats, 2);
    server.shutdown().unwrap();
}

#[test]
fn a_wrong_password_fails_the_login() {
    let server = server();
    let mut mallory = Chat::start(server.local_addr(), "alice", "guess");
    mallory.expect("login failed: unknown user or wrong password");
    assert!(!mallory.finish());
    server.shutdown().unwrap();
}
