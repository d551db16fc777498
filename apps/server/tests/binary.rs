//! The `iocp-server` binary itself: `users add|list|remove` with the password on stdin, and the
//! `chat` and `echo` servers started as processes.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use iocp_accounts::{AccountStore, RedbStore};
use iocp_chat_protocol::ResultCode;
use support::process::{ServerProcess, wait_status};
use support::{Client, IO_TIMEOUT};

const BIN: &str = env!("CARGO_BIN_EXE_iocp-server");

/// Runs `iocp-server args...` with `stdin` as standard input, within [`IO_TIMEOUT`].
fn run(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn iocp-server");
    // A command that does not read its input may exit before this write: a broken pipe is fine.
    let written = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    if let Err(e) = written {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    wait_within(child, IO_TIMEOUT)
}

/// Waits for `child` to exit, killing it and failing the test after `limit`.
fn wait_within(mut child: Child, limit: Duration) -> Output {
    wait_status(&mut child, limit);
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn users(db: &Path, args: &[&str], stdin: &str) -> Output {
    let mut all = vec!["users"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--db", db.to_str().unwrap()]);
    run(&all, stdin)
}

#[test]
fn users_add_list_remove_with_the_password_on_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("accounts.redb");

    let out = users(&db, &["add", "alice", "--hash-cost", "light"], "alice-pw\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "added alice\n");

    let out = users(&db, &["add", "alice", "--hash-cost", "light"], "other\n");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("alice exists"),
        "{}",
        text(&out.stderr)
    );

    // The real cost, once; and a password line ending in CRLF.
    let out = users(&db, &["add", "bob"], "bob-pw\r\n");
    assert!(out.status.success(), "{}", text(&out.stderr));

    for (args, stdin, why) in [
        (&["add", "bad id"][..], "pw\n", "invalid user id"),
        (&["add", "carol"][..], "\n", "it is empty"),
        (&["add", "carol"][..], "", "it is empty"),
        (
            &["add", "carol"][..],
            "123456789012345678901234567890123\n",
            "longer than 32 bytes",
        ),
        (&["remove", "nobody"][..], "", "no user nobody"),
    ] {
        let out = users(&db, args, stdin);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            text(&out.stderr).contains(why),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }

    let out = users(&db, &["list"], "");
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), "alice\nbob\n");

    // What is stored: Argon2id hashes with a salt, never the password.
    {
        let store = RedbStore::open(&db).unwrap();
        let bob = store.password_hash("bob").unwrap().unwrap();
        assert!(bob.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{bob}");
        assert!(!bob.contains("bob-pw"));
        let alice = store.password_hash("alice").unwrap().unwrap();
        assert!(alice.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{alice}");
    }
    let raw = std::fs::read(&db).unwrap();
    assert!(!raw.windows(8).any(|w| w == b"alice-pw"));

    let out = users(
        &db,
        &["add", "alice", "--replace", "--hash-cost", "light"],
        "new-pw\n",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "set alice\n");

    let out = users(&db, &["remove", "alice"], "");
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), "removed alice\n");
    let out = users(&db, &["list"], "");
    assert_eq!(text(&out.stdout), "bob\n");
}

/// A server process whose stderr is read line by line.
/// The chat server as a process, with an account added while it runs (the account file is
/// shared between the two processes).
#[test]
fn chat_binary_with_users_added_while_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.redb");
    let db_arg = db.to_str().unwrap();
    let mut server = ServerProcess::start(&[
        "chat",
        "--addr",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--db",
        db_arg,
        "--rooms",
        "3",
        "--room-capacity",
        "2",
    ]);
    server.wait_for("chat: 3 rooms of 2");

    let mut c = Client::connect(server.addr);
    assert_eq!(
        c.login("dave", "dave-pw"),
        ResultCode::LOGIN_USER_INVALID_PW
    );

    let out = users(&db, &["add", "dave", "--hash-cost", "light"], "dave-pw\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = users(&db, &["add", "erin", "--hash-cost", "light"], "erin-pw\n");
    assert!(out.status.success(), "{}", text(&out.stderr));

    assert_eq!(c.login("dave", "wrong"), ResultCode::LOGIN_USER_INVALID_PW);
    assert_eq!(c.login("dave", "dave-pw"), ResultCode::NONE);
    c.name = "dave".into();
    let mut erin = Client::connect(server.addr);
    assert_eq!(erin.login("erin", "erin-pw"), ResultCode::NONE);
    erin.name = "erin".into();
    assert_eq!(c.enter(2).0.result, ResultCode::NONE);
    let (r, members) = erin.enter(2);
    assert_eq!(
        (r.result, support::names(&members)),
        (ResultCode::NONE, vec!["dave", "erin"])
    );
    assert_eq!(erin.chat("hi dave"), ResultCode::NONE);

    // Removing a user while the server runs: its session ends within the account check's
    // interval (2 s), and new logins are refused.
    let out = users(&db, &["remove", "erin"], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let removed = Instant::now();
    erin.expect_closed();
    assert!(
        removed.elapsed() < Duration::from_secs(5),
        "erin's session ended {:?} after the removal",
        removed.elapsed()
    );
    let mut again = Client::connect(server.addr);
    assert_eq!(
        again.login("erin", "erin-pw"),
        ResultCode::LOGIN_USER_INVALID_PW
    );

    drop(c);
    server.stop();
}

/// `iocp-server echo` with its flags still works as a process.
#[test]
fn echo_binary_still_echoes() {
    let server = ServerProcess::start(&[
        "echo",
        "--addr",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--max-sessions",
        "8",
        "--send-queue-limit",
        "65536",
        "--linger",
        "1",
        "--backend",
        "auto",
    ]);
    let mut stream = std::net::TcpStream::connect_timeout(&server.addr, IO_TIMEOUT).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.write_all(b"hello, seed").unwrap();
    let mut back = [0u8; 11];
    stream.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hello, seed");
    drop(stream);
    server.stop();
}

/// A damaged (truncated) or garbage account file is refused at start with a clear error, by
/// `chat` and by `users list`, and left as it was; `users list` of a missing file creates
/// nothing; a read-only file is listed, and `chat` starts on it.
#[test]
fn damaged_missing_and_read_only_account_files() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.redb");
    let out = users(
        &good,
        &["add", "alice", "--hash-cost", "light"],
        "pw-alice\n",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    let truncated = dir.path().join("truncated.redb");
    let mut bytes = std::fs::read(&good).unwrap();
    bytes.truncate(4096);
    std::fs::write(&truncated, &bytes).unwrap();
    let garbage = dir.path().join("garbage.redb");
    std::fs::write(&garbage, vec![0x42; 8192]).unwrap();
    for file in [&truncated, &garbage] {
        let before = std::fs::read(file).unwrap();
        let out = users(file, &["list"], "");
        assert!(!out.status.success());
        let err = text(&out.stderr);
        assert!(err.contains(file.to_str().unwrap()), "{err}");
        assert_eq!(
            out.status.code(),
            Some(1),
            "a clean error, not a panic: {err}"
        );
        let out = run(
            &[
                "chat",
                "--addr",
                "127.0.0.1:0",
                "--db",
                file.to_str().unwrap(),
            ],
            "",
        );
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        assert_eq!(std::fs::read(file).unwrap(), before, "left untouched");
    }

    let typo = dir.path().join("typo.redb");
    let out = users(&typo, &["list"], "");
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("no such account file"));
    assert!(!typo.exists(), "listing a missing file created it");

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o444)).unwrap();
        let before = std::fs::read(&good).unwrap();
        let out = users(&good, &["list"], "");
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "alice\n");
        // Root may write a read-only file: only check that the listing did not.
        assert_eq!(std::fs::read(&good).unwrap(), before);
    }
}

/// `chat` binds its port before it makes its account file: on a busy port it fails and leaves
/// no file behind.
#[test]
fn chat_on_a_busy_port_creates_no_account_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("new.redb");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let out = run(&["chat", "--addr", &addr, "--db", db.to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        !db.exists(),
        "the account file was created before the bind failed"
    );
}

/// Sends `signal` (a `kill` name) to the server process.
#[cfg(unix)]
fn signal(server: &ServerProcess, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// SIGHUP shuts down gracefully, as SIGTERM does; a second signal during a shutdown that is
/// still flushing ends the process at once with the shell's status for that signal.
#[cfg(unix)]
#[test]
fn signals_shut_down_gracefully_and_a_second_one_exits_with_its_status() {
    let mut server = ServerProcess::start(&["echo", "--addr", "127.0.0.1:0", "--workers", "1"]);
    let mut c = Client::connect(server.addr);
    c.send_raw(b"hi");
    signal(&server, "HUP");
    server.wait_for("SIGHUP: shutting down");
    server.wait_for("stopped");
    let status = wait_status(&mut server.child, IO_TIMEOUT);
    assert_eq!(status.code(), Some(0), "SIGHUP: a clean exit");

    for (second, code) in [("INT", 130), ("TERM", 143)] {
        let mut server = ServerProcess::start(&[
            "echo",
            "--addr",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--linger",
            "30",
            "--send-queue-limit",
            "67108864",
        ]);
        // A client that sends without reading: its echo stays queued, so the shutdown's
        // flush waits for the linger time.
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket
            .connect_timeout(&server.addr.into(), IO_TIMEOUT)
            .unwrap();
        let mut stream: std::net::TcpStream = socket.into();
        // More than the kernel's buffers hold (the peer's window is closed).
        stream.write_all(&vec![7u8; 12 << 20]).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        signal(&server, "TERM");
        server.wait_for("SIGTERM: shutting down");
        std::thread::sleep(Duration::from_millis(200));
        let started = Instant::now();
        signal(&server, second);
        let status = wait_status(&mut server.child, IO_TIMEOUT);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(status.code(), Some(code), "second signal SIG{second}");
        drop(stream);
    }
}

/// Absurd numbers are refused with a message that names the flag and its range, before anything
/// starts; a session table that would not fit in memory is refused with its size.
#[test]
fn absurd_flag_values_are_refused() {
    for (args, flag) in [
        (
            &["echo", "--linger", "10000000000000000000"][..],
            "--linger",
        ),
        (
            &["echo", "--max-sessions", "4294967295"][..],
            "--max-sessions",
        ),
        (&["echo", "--max-sessions", "0"][..], "--max-sessions"),
        (
            &["echo", "--send-queue-limit", "0"][..],
            "--send-queue-limit",
        ),
        (&["echo", "--workers", "0"][..], "--workers"),
        (
            &["echo", "--idle-timeout", "99999999999"][..],
            "--idle-timeout",
        ),
        (&["echo", "--tcp-keepalive", "40000"][..], "--tcp-keepalive"),
        (&["chat", "--logic-queue", "0"][..], "--logic-queue"),
        (&["chat", "--login-queue", "0"][..], "--login-queue"),
        (
            &["chat", "--login-timeout", "999999999"][..],
            "--login-timeout",
        ),
    ] {
        let out = run(args, "");
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        let err = text(&out.stderr);
        assert!(err.contains(flag), "{args:?}: {err}");
        assert!(err.contains("is not in"), "{args:?} says the range: {err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("x.redb");
    let out = run(
        &[
            "chat",
            "--addr",
            "127.0.0.1:0",
            "--logic-queue",
            "1",
            "--when-full",
            "disconnect",
            "--db",
            db.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("at least 64"),
        "{}",
        text(&out.stderr)
    );
    // 100 million sessions need tens of GiB: refused at start, with the size (on a machine
    // with less than 60 GiB available).
    let available_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m
                .lines()
                .find(|l| l.starts_with("MemAvailable:"))?
                .to_owned();
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map(|kib| kib >> 20);
    if available_gib.is_none_or(|g| g >= 60) {
        return;
    }
    let out = run(
        &[
            "echo",
            "--addr",
            "127.0.0.1:0",
            "--max-sessions",
            "100000000",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("MiB at start"), "{err}");
}

/// 600 connections that send garbage are each closed, but the log gets at most one warning a
/// second for them (the next one says how many were not logged).
#[cfg(unix)]
#[test]
fn closes_for_bad_input_are_logged_once_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.redb");
    let mut server = ServerProcess::start(&[
        "chat",
        "--addr",
        "127.0.0.1:0",
        "--db",
        db.to_str().unwrap(),
    ]);
    let started = Instant::now();
    for _ in 0..600 {
        let mut c = Client::connect(server.addr);
        c.send_raw(b"GET / HTTP/1.1\r\n\r\n");
        c.expect_closed();
    }
    let seconds = started.elapsed().as_secs() + 1;
    signal(&server, "TERM");
    let mut warnings = 0;
    loop {
        let line = server
            .lines
            .recv_timeout(IO_TIMEOUT)
            .expect("the log goes on to the end");
        if line.contains("closing it") {
            warnings += 1;
        }
        if line.contains("stopped:") {
            break;
        }
    }
    assert!(
        (1..=seconds + 1).contains(&warnings),
        "{warnings} warnings for 600 bad connections in {seconds} s"
    );
    let _ = wait_status(&mut server.child, IO_TIMEOUT);
}

/// User ids are kept in NFKC form and must not look like another account's: `Alice`, `аlice`
/// (Cyrillic а) are refused beside `alice`; `ａｌｉｃｅ` is `alice` itself.
#[test]
fn look_alike_user_ids_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ids.redb");
    let out = users(&db, &["add", "alice", "--hash-cost", "light"], "pw\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
    for other in ["Alice", "\u{430}lice"] {
        let out = users(&db, &["add", other, "--hash-cost", "light"], "pw\n");
        assert!(!out.status.success(), "{other} was added");
        assert!(
            text(&out.stderr).contains("would be confused with the existing account \"alice\""),
            "{}",
            text(&out.stderr)
        );
    }
    let out = users(
        &db,
        &[
            "add",
            "\u{ff41}\u{ff4c}\u{ff49}\u{ff43}\u{ff45}",
            "--hash-cost",
            "light",
        ],
        "pw\n",
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("alice exists"),
        "{}",
        text(&out.stderr)
    );
    let out = users(&db, &["list"], "");
    assert_eq!(text(&out.stdout), "alice\n");
}

/// The first line the server logs on stderr, as it is (no colour stripped).
fn first_log_line(args: &[&str]) -> String {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn iocp-server");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let line = lines
        .find(|l| l.as_ref().is_ok_and(|l| l.contains("listening on")))
        .expect("a listening line")
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    line
}

/// Logs written to a pipe have no colour escapes (a terminal gets colour unless NO_COLOR is
/// set); `--log-format json` writes one JSON object per line.
#[test]
fn logs_fit_their_destination() {
    let text = first_log_line(&["echo", "--addr", "127.0.0.1:0"]);
    assert!(
        !text.contains('\u{1b}'),
        "colour escapes in a pipe: {text:?}"
    );
    let json = first_log_line(&["--log-format", "json", "echo", "--addr", "127.0.0.1:0"]);
    let value: serde_json::Value = serde_json::from_str(&json).expect("a JSON line");
    assert_eq!(value["level"], "INFO");
    assert!(
        value["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("listening on 127.0.0.1:")),
        "{json}"
    );
}

/// `chat` on an account file its user cannot write starts, says that `users add` cannot change
/// the file while it is so, serves logins from it, and leaves it as it was. (Run as root, the
/// server is started as user 65534, for whom a file of mode 0444 is read-only; otherwise the
/// test's own user is used.)
#[cfg(unix)]
#[test]
fn chat_serves_a_read_only_account_file() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let db = dir.path().join("ro.redb");
    let out = users(&db, &["add", "alice", "--hash-cost", "light"], "pw-alice\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o444)).unwrap();
    let before = std::fs::read(&db).unwrap();
    let mut command = Command::new(BIN);
    command.args([
        "chat",
        "--addr",
        "127.0.0.1:0",
        "--db",
        db.to_str().unwrap(),
    ]);
    // Root can run the child as another user.
    if std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
    {
        command.uid(65534).gid(65534);
    }
    let server = ServerProcess::spawn(&mut command);
    let warning = server
        .seen
        .iter()
        .find(|l| l.contains("read-only"))
        .unwrap_or_else(|| panic!("no read-only warning in {:?}", server.seen));
    assert!(warning.contains("users add"), "{warning}");
    let mut c = Client::connect(server.addr);
    assert_eq!(c.login("alice", "pw-alice"), ResultCode::NONE);
    drop(c);
    server.stop();
    assert_eq!(std::fs::read(&db).unwrap(), before, "the file was written");
}
