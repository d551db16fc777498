//! `--config FILE`: every flag of `echo` and `chat` settable from the file, flags over the file,
//! unknown keys and bad values refused with their line, `config print`, and the example file
//! in `docs/examples/`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use iocp_server_app::cli::{Command as Sub, ServerCommand};
use iocp_server_app::config_file::{self, Parsed, parse_args};
use support::process::{BIN, ServerProcess};
use support::scrape::metrics_addr;

/// The example configuration in the repository.
fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples/iocp-server.toml")
}

/// Writes `text` to a file in `dir`.
fn file(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("iocp-server.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn parse(args: &[&str]) -> Result<Parsed, String> {
    let mut all = vec!["iocp-server"];
    all.extend_from_slice(args);
    parse_args(all).map_err(|e| e.to_string())
}

/// `config print` of what `args` give.
fn printed(args: &[&str]) -> String {
    let parsed = parse(args).expect("parses");
    config_file::print(&parsed, |_| None)
}

/// A value other than the default for every setting (a setting added to the command line must
/// be added here: the test checks that none is missing).
const SETTINGS: &[(&str, &str)] = &[
    ("log-format", "\"json\""),
    ("metrics", "\"127.0.0.1:9191\""),
    ("addr", "\"127.0.0.1:12345\""),
    ("workers", "3"),
    ("pin-workers", "true"),
    ("max-sessions", "123"),
    ("send-queue-limit", "65536"),
    ("stats-interval", "7"),
    ("backend", "\"poll\""),
    ("linger", "2"),
    ("idle-timeout", "30"),
    ("tcp-keepalive", "45"),
    ("log-each", "true"),
    ("rooms", "4"),
    ("room-capacity", "3"),
    ("db", "\"/tmp/elsewhere.redb\""),
    ("login-threads", "3"),
    ("login-queue", "99"),
    ("logic-queue", "128"),
    ("when-full", "\"disconnect\""),
    ("bad-packet", "\"ignore\""),
    ("login-timeout", "11"),
    ("login-account-failures", "6"),
    ("login-addr-failures", "21"),
    ("login-addr-pending", "5"),
    ("login-backoff-max", "61"),
    ("account-check", "3"),
    ("engine", "\"redis\""),
    (
        "redis",
        "[\"redis://127.0.0.1:7000\", \"redis://127.0.0.1:7001\"]",
    ),
    ("presence-ttl", "12"),
];

#[test]
fn every_flag_is_settable_from_the_file() {
    let (top, echo, chat) = config_file::keys();
    for key in top.iter().chain(&echo).chain(&chat) {
        assert!(
            SETTINGS.iter().any(|(k, _)| k == key),
            "no test value for `{key}`"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    for (server, keys) in [("echo", &echo), ("chat", &chat)] {
        // Server-wide settings at the top, the rest in the server's table.
        let mut text = String::new();
        let in_table = |k: &str| keys.iter().any(|key| key == k) && !top.iter().any(|t| t == k);
        for (k, v) in SETTINGS.iter().filter(|(k, _)| top.iter().any(|t| t == k)) {
            text += &format!("{k} = {v}\n");
        }
        text += &format!("[{server}]\n");
        for (k, v) in SETTINGS.iter().filter(|(k, _)| in_table(k)) {
            text += &format!("{k} = {v}\n");
        }
        let path = file(dir.path(), &text);
        let out = printed(&[
            "config",
            "print",
            server,
            "--config",
            path.to_str().unwrap(),
        ]);
        for (k, v) in SETTINGS
            .iter()
            .filter(|(k, _)| *k == "log-format" || keys.iter().any(|key| key == k))
        {
            assert!(
                out.lines().any(|l| l == format!("{k} = {v}")),
                "{server}: `{k} = {v}` not in\n{out}"
            );
        }
    }

    // Through to the typed settings.
    let path = file(
        dir.path(),
        "workers = 3\npin-workers = true\n[chat]\nrooms = 4\nwhen-full = \"disconnect\"\n",
    );
    let parsed = parse(&["chat", "--config", path.to_str().unwrap()]).unwrap();
    let Some(Sub::Chat(args)) = parsed.cli.command else {
        panic!("chat");
    };
    assert_eq!(args.server.workers, Some(3));
    assert!(args.server.pin_workers);
    assert_eq!(args.rooms, 4);
    assert_eq!(args.room_capacity, 10, "the default, where neither sets it");
}

#[test]
fn flags_override_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(
        dir.path(),
        "log-format = \"json\"\npin-workers = true\nlinger = 9\n[chat]\nrooms = 7\nroom-capacity = 8\n",
    );
    let path = path.to_str().unwrap();
    let parsed = parse(&[
        "--log-format",
        "text",
        "chat",
        "--rooms",
        "3",
        "--config",
        path,
        "--pin-workers=false",
    ])
    .unwrap();
    assert_eq!(parsed.cli.log_format, iocp_server_app::cli::LogFormat::Text);
    let Some(Sub::Chat(args)) = parsed.cli.command else {
        panic!("chat");
    };
    assert_eq!(args.rooms, 3, "the flag");
    assert!(!args.server.pin_workers, "the flag");
    assert_eq!(args.room_capacity, 8, "the file");
    assert_eq!(args.server.linger, 9, "the file");
    // `--pin-workers` alone still means true.
    let parsed = parse(&["echo", "--pin-workers"]).unwrap();
    let Some(Sub::Echo(args)) = parsed.cli.command else {
        panic!("echo");
    };
    assert!(args.server.pin_workers);
}

#[test]
fn an_unknown_key_fails_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(
        dir.path(),
        "# a comment\naddr = \"127.0.0.1:0\"\n\nromos = 3\n",
    );
    let err = parse(&["chat", "--config", path.to_str().unwrap()])
        .err()
        .expect("an error");
    assert!(err.contains("line 4") && err.contains("`romos`"), "{err}");

    let path = file(dir.path(), "[chat]\nrooms = 3\nmax_sessions = 5\n");
    let err = parse(&["echo", "--config", path.to_str().unwrap()])
        .err()
        .expect("an error");
    assert!(
        err.contains("line 3") && err.contains("`max_sessions`") && err.contains("max-sessions"),
        "{err}"
    );

    // A value its flag refuses names its line too.
    let path = file(dir.path(), "addr = \"127.0.0.1:0\"\n[chat]\nrooms = 0\n");
    let err = parse(&["chat", "--config", path.to_str().unwrap()])
        .err()
        .expect("an error");
    assert!(err.contains("line 3") && err.contains("`rooms`"), "{err}");

    // And the binary says so and exits with status 2, before it binds anything.
    let path = file(dir.path(), "addr = \"127.0.0.1:0\"\nwokers = 2\n");
    let out = Command::new(BIN)
        .args(["echo", "--config", path.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 2: unknown key `wokers`"), "{stderr}");
}

#[test]
fn config_print_gives_a_file_that_configures_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let first = printed(&["config", "print", "chat", "--rooms", "5", "--pin-workers"]);
    let path = file(dir.path(), &first);
    let again = printed(&[
        "config",
        "print",
        "chat",
        "--config",
        path.to_str().unwrap(),
    ]);
    assert_eq!(first, again);
    assert!(first.contains("\nrooms = 5\n") && first.contains("\npin-workers = true\n"));

    // The binary prints the same.
    let out = Command::new(BIN)
        .args([
            "config",
            "print",
            "chat",
            "--config",
            path.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("\nrooms = 5\n"), "{text}");
    assert!(text.contains("# workers: not set ("), "{text}");
}

/// The example file in `docs/examples/` is read by both servers, and the chat server runs on it
/// (with the address, account file and metrics port overridden by flags).
#[test]
fn the_example_file_configures_both_servers() {
    let example = example();
    let example = example.to_str().unwrap();
    for server in ["echo", "chat"] {
        let parsed = parse(&[server, "--config", example]).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            (server, &parsed.cli.command),
            ("echo", Some(Sub::Echo(_))) | ("chat", Some(Sub::Chat(_)))
        ));
    }
    let parsed = parse(&["config", "print", "chat", "--config", example]).unwrap();
    let Some(Sub::Config(config)) = &parsed.cli.command else {
        panic!("config");
    };
    let iocp_server_app::cli::ConfigCommand::Print {
        server: Some(ServerCommand::Chat(chat)),
    } = &config.command
    else {
        panic!("config print chat");
    };
    assert_eq!((chat.rooms, chat.room_capacity), (100, 50));

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.redb");
    let mut server = ServerProcess::start(&[
        "--log-format",
        "text",
        "chat",
        "--config",
        example,
        "--addr",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
        "--db",
        db.to_str().unwrap(),
    ]);
    server.wait_for("chat: 100 rooms of 50");
    let metrics = metrics_addr(&mut server);
    assert!(metrics.ip().is_loopback() && metrics.port() != 9100);
    server.stop();
}
