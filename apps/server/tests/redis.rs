//! Several chat instances sharing accounts, logins and rooms over a real Redis (and a real
//! 3-master Redis Cluster, and real HAProxy in front): each test starts its own processes on
//! free loopback ports in a temporary folder and stops them by PID.
#![cfg(unix)]

mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use iocp_chat_protocol::{
    Packet, ResultCode, RoomChatNotify, RoomLeaveUserNotify, RoomNewUserNotify,
};
use support::process::{BIN, ServerProcess};
use support::redis::{RedisCluster, RedisServer, free_port, require};
use support::scrape::{http_get, metrics_addr, value};
use support::{Client, PASSWORD, names};

/// The presence expiry of the test instances: an instance that dies frees its users within it.
const TTL_SECS: u64 = 2;

/// Adds `users` (light hashes) to the accounts in Redis, through the binary.
fn add_users(urls: &[String], users: &[&str]) {
    for user in users {
        let mut command = Command::new(BIN);
        command.args(["users", "add", user, "--hash-cost", "light"]);
        for url in urls {
            command.args(["--redis", url]);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        writeln!(child.stdin.take().unwrap(), "{PASSWORD}").unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "users add {user}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// A chat instance on the Redis at `urls`.
fn instance(urls: &[String], extra: &[&str]) -> ServerProcess {
    let ttl = TTL_SECS.to_string();
    let mut args = vec![
        "chat",
        "--engine",
        "redis",
        "--addr",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--presence-ttl",
        &ttl,
    ];
    for url in urls {
        args.extend(["--redis", url.as_str()]);
    }
    args.extend(extra);
    ServerProcess::start(&args)
}

/// What a member saw, in order: `+user` (entered), `-id` (left), `user: message` (chat).
fn event(packet: &Packet) -> Option<String> {
    match packet {
        Packet::RoomNewUserNotify(RoomNewUserNotify { user }) => Some(format!("+{}", user.user_id)),
        Packet::RoomLeaveUserNotify(RoomLeaveUserNotify { unique_id }) => {
            Some(format!("-{unique_id}"))
        }
        Packet::RoomChatNotify(n @ RoomChatNotify { user_id, .. }) => {
            Some(format!("{user_id}: {}", n.message_text()))
        }
        Packet::RoomChatResponse(r) => {
            assert_eq!(r.result, ResultCode::NONE);
            None
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// Reads `client`'s room events until `last` has come; returns them all.
fn events_until(client: &mut Client, last: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let packet = client.recv();
        if let Some(e) = event(&packet) {
            let done = e == last;
            seen.push(e);
            if done {
                return seen;
            }
        }
    }
}

/// Reads `client`'s room events until `n` have come.
fn events_count(client: &mut Client, n: usize) -> Vec<String> {
    let mut seen = Vec::new();
    while seen.len() < n {
        if let Some(e) = event(&client.recv()) {
            seen.push(e);
        }
    }
    seen
}

/// Logs `user` in on `addr`, trying again for up to 5 s while its presence is still held (by a
/// session of another instance that is closing).
fn login_within(addr: SocketAddr, user: &str) -> Client {
    let mut client = None;
    within(Duration::from_secs(5), "the login succeeds", || {
        let mut c = Client::connect(addr);
        c.name = user.to_owned();
        let ok = c.login(user, PASSWORD) == ResultCode::NONE;
        client = ok.then_some(c);
        ok
    });
    client.unwrap()
}

/// Waits until `f` holds, for at most `limit`.
fn within(limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// Users on `addrs` (user i on `addrs[i % n]`) log in, enter room 0 one after the other, then
/// each says three things at once; every member must see every entry after its own, and every
/// chat, in one order.
fn meet_and_chat(addrs: &[SocketAddr], users: &[&str]) -> Vec<Client> {
    let mut clients: Vec<Client> = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let mut c = Client::login_as(addrs[i % addrs.len()], user);
        let (response, members) = c.enter(0);
        assert_eq!(response.result, ResultCode::NONE, "{user} enters");
        assert_eq!(names(&members), users[..=i], "{user}'s member list");
        for earlier in &mut clients {
            assert_eq!(
                events_until(earlier, &format!("+{user}")),
                [format!("+{user}")]
            );
        }
        clients.push(c);
    }
    for round in 0..3 {
        for c in &mut clients {
            c.say(&format!("{} says {round}", c.name));
        }
    }
    let seen: Vec<Vec<String>> = clients
        .iter_mut()
        .map(|c| events_count(c, users.len() * 3))
        .collect();
    assert_eq!(seen[0].len(), users.len() * 3, "{:?}", seen[0]);
    for (c, s) in clients.iter().zip(&seen) {
        assert_eq!(s, &seen[0], "{} saw another order", c.name);
    }
    // Each message once: nothing more comes.
    for c in &mut clients {
        if let Some(extra) = c.try_recv(Duration::from_millis(300)) {
            panic!("{}: one more event: {extra:?}", c.name);
        }
    }
    clients
}

#[test]
fn two_instances_on_one_redis_share_logins_and_rooms() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let urls = vec![redis.url()];
    let users: Vec<String> = (0..11).map(|i| format!("user{i:02}")).collect();
    let users: Vec<&str> = users.iter().map(String::as_str).collect();
    add_users(&urls, &users);
    let a = instance(&urls, &[]);
    let b = instance(&urls, &[]);
    let addrs = [a.addr, b.addr];

    // Ten members spread over both instances meet, chat, see one order.
    let mut clients = meet_and_chat(&addrs, &users[..10]);

    // Capacity holds across instances: the 11th is refused, on either. Its presence is given
    // back when it disconnects: it then logs in on the other instance.
    for (addr, other) in [(a.addr, b.addr), (b.addr, a.addr)] {
        let mut late = login_within(addr, users[10]);
        assert_eq!(late.enter(0).0.result, ResultCode::ENTER_ROOM_FULL_USER);
        drop(late);
        drop(login_within(other, users[10]));
    }

    // A user logged in on one instance is refused on the other.
    let mut dup = Client::connect(b.addr);
    assert_eq!(
        dup.login(users[0], PASSWORD),
        ResultCode::LOGIN_USER_ALREADY
    );
    // ... and still replaces its own session on the same instance.
    let old = clients.remove(0);
    let old_id = format!("-{}", old.unique_id.expect("its id"));
    let mut again = Client::login_as(a.addr, users[0]);
    drop(old);
    // Everyone else sees user00 leave (its replaced session left the room).
    for c in &mut clients {
        assert_eq!(
            events_until(c, &old_id),
            std::slice::from_ref(&old_id),
            "{}",
            c.name
        );
    }
    assert_eq!(again.enter(0).0.result, ResultCode::NONE);
    a.stop();
    b.stop();
}

#[test]
fn killed_instance_frees_its_users_and_the_others_are_told() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let urls = vec![redis.url()];
    add_users(&urls, &["alice", "bob"]);
    let a = instance(&urls, &[]);
    let mut b = instance(&urls, &[]);
    let mut alice = Client::login_as(a.addr, "alice");
    assert_eq!(alice.enter(0).0.result, ResultCode::NONE);
    let mut bob = Client::login_as(b.addr, "bob");
    let (_, members) = bob.enter(0);
    assert_eq!(names(&members), ["alice", "bob"]);
    let bob_id = bob.unique_id.unwrap();
    assert_eq!(events_until(&mut alice, "+bob"), ["+bob"]);

    b.child.kill().unwrap();
    let killed = Instant::now();
    let _ = b.child.wait();
    let seen = events_until(&mut alice, &format!("-{bob_id}"));
    let told = killed.elapsed();
    assert_eq!(seen, [format!("-{bob_id}")]);
    // Within the expiry (plus what a loaded test machine may add to the instances' timers).
    assert!(
        told < Duration::from_millis(TTL_SECS * 1000 + 500),
        "alice learned of bob's end after {told:?}"
    );
    // bob may log in again on the surviving instance once his presence expired.
    let freed = within(
        Duration::from_secs(TTL_SECS * 2 + 2),
        "bob's presence expires",
        || {
            let mut c = Client::connect(a.addr);
            c.login("bob", PASSWORD) == ResultCode::NONE
        },
    );
    eprintln!(
        "kill -9: members told after {told:?}; bob could log in again {:?} after the kill",
        killed.elapsed().min(told + freed)
    );
    a.stop();
}

#[test]
fn a_redis_restart_loses_no_session_and_service_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = RedisServer::start(dir.path());
    let urls = vec![redis.url()];
    add_users(&urls, &["alice", "bob", "carol", "dave"]);
    let mut a = instance(&urls, &["--metrics", "127.0.0.1:0"]);
    let mut b = instance(&urls, &[]);
    let metrics = metrics_addr(&mut a);
    let mut alice = Client::login_as(a.addr, "alice");
    assert_eq!(alice.enter(0).0.result, ResultCode::NONE);
    let mut carol = Client::login_as(a.addr, "carol");
    assert_eq!(carol.enter(0).0.result, ResultCode::NONE);
    assert_eq!(events_until(&mut alice, "+carol"), ["+carol"]);
    let mut bob = Client::login_as(b.addr, "bob");
    assert_eq!(bob.enter(0).0.result, ResultCode::NONE);
    assert_eq!(events_until(&mut alice, "+bob"), ["+bob"]);
    assert_eq!(events_until(&mut carol, "+bob"), ["+bob"]);

    redis.kill();
    let down = Instant::now();
    // Logins answer busy at once; local members keep chatting among themselves.
    within(Duration::from_secs(5), "a login is answered busy", || {
        let mut c = Client::connect(a.addr);
        let started = Instant::now();
        let result = c.login("dave", PASSWORD);
        assert!(started.elapsed() < Duration::from_secs(3), "a login waited");
        result == ResultCode::LOGIN_SERVER_BUSY
    });
    alice.say("only here");
    assert_eq!(
        events_until(&mut carol, "alice: only here"),
        ["alice: only here"]
    );
    assert_eq!(
        events_until(&mut alice, "alice: only here"),
        ["alice: only here"]
    );
    // Leaving is a room change too: answered busy (the member stays in the room).
    assert_eq!(carol.leave(), ResultCode::LOGIN_SERVER_BUSY);

    redis.restart();
    let up = Instant::now();
    eprintln!("Redis was away for {:?}", up - down);
    // Service resumes: a new login works, and the three members chat across instances again.
    let mut dave = None;
    let resumed = within(Duration::from_secs(10), "a login succeeds again", || {
        let mut c = Client::connect(b.addr);
        c.name = "dave".into();
        let ok = c.login("dave", PASSWORD) == ResultCode::NONE;
        dave = ok.then_some(c);
        ok
    });
    let mut attempt = 0;
    within(
        Duration::from_secs(10),
        "chat crosses instances again",
        || {
            attempt += 1;
            bob.say(&format!("back {attempt}"));
            let want = format!("bob: back {attempt}");
            while let Some(packet) = alice.try_recv(Duration::from_millis(300)) {
                if event(&packet).as_deref() == Some(want.as_str()) {
                    return true;
                }
            }
            false
        },
    );
    // Carol, on alice's instance, sees the same.
    let want = format!("bob: back {attempt}");
    events_until(&mut carol, &want);
    eprintln!("Redis restart: logins again {resumed:?} after it was back");
    // Both instances registered their members anew: a newcomer finds all three in the room.
    a.wait_for("Redis: service resumed");
    b.wait_for("Redis: service resumed");
    let mut dave = dave.unwrap();
    let (response, members) = dave.enter(0);
    assert_eq!(response.result, ResultCode::NONE);
    let mut found = names(&members);
    found.sort_unstable();
    assert_eq!(found, ["alice", "bob", "carol", "dave"]);
    // The outage as the metrics tell it.
    let (status, _, text) = http_get(metrics, "/metrics", None);
    assert_eq!(status, 200);
    assert_eq!(value(&text, "iocp_redis_up"), Some(1.0), "{text}");
    assert_eq!(
        value(&text, "iocp_redis_reconnects_total"),
        Some(1.0),
        "{text}"
    );
    assert!(value(&text, "iocp_redis_command_seconds_count").unwrap_or(0.0) >= 4.0);
    a.stop();
    b.stop();
}

#[test]
fn an_instance_started_before_redis_serves_once_it_is_up() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let urls = vec![format!("redis://127.0.0.1:{port}")];
    // Started with nothing on the port: it says so and answers logins busy, at once.
    let a = instance(&urls, &[]);
    assert!(
        a.seen
            .iter()
            .any(|l| l.contains("retrying in the background")),
        "{:?}",
        a.seen
    );
    let mut early = Client::connect(a.addr);
    let asked = Instant::now();
    assert_eq!(
        early.login("alice", PASSWORD),
        ResultCode::LOGIN_SERVER_BUSY
    );
    assert!(asked.elapsed() < Duration::from_secs(1));
    let redis = RedisServer::start_on(dir.path(), port, false);
    add_users(&[redis.url()], &["alice"]);
    let waited = within(Duration::from_secs(10), "a login succeeds", || {
        let mut c = Client::connect(a.addr);
        c.login("alice", PASSWORD) == ResultCode::NONE
    });
    eprintln!("Redis started late: logins served {waited:?} after it was up");
    a.stop();
}

#[test]
fn three_instances_on_a_three_master_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = RedisCluster::start(dir.path());
    let urls = cluster.urls();
    let users: Vec<String> = (0..11).map(|i| format!("member{i:02}")).collect();
    let users: Vec<&str> = users.iter().map(String::as_str).collect();
    add_users(&urls, &users);
    let mut instances: Vec<ServerProcess> = (0..3).map(|_| instance(&urls, &[])).collect();
    let addrs: Vec<SocketAddr> = instances.iter().map(|i| i.addr).collect();
    let mut clients = meet_and_chat(&addrs, &users[..10]);
    let mut late = Client::login_as(addrs[1], users[10]);
    assert_eq!(late.enter(0).0.result, ResultCode::ENTER_ROOM_FULL_USER);
    drop(late);
    let mut dup = Client::connect(addrs[2]);
    assert_eq!(
        dup.login(users[0], PASSWORD),
        ResultCode::LOGIN_USER_ALREADY
    );
    drop(dup);

    // kill -9 of the third instance (members 2, 5 and 8): the others are told within the TTL.
    let mut third = instances.pop().unwrap();
    third.child.kill().unwrap();
    let killed = Instant::now();
    let _ = third.child.wait();
    let (mut lost, mut kept): (Vec<Client>, Vec<Client>) = (Vec::new(), Vec::new());
    for (i, c) in clients.drain(..).enumerate() {
        if i % 3 == 2 {
            lost.push(c)
        } else {
            kept.push(c)
        }
    }
    let gone: Vec<String> = lost
        .iter()
        .map(|c| format!("-{}", c.unique_id.unwrap()))
        .collect();
    for c in &mut kept {
        let mut seen = Vec::new();
        while seen.len() < gone.len() {
            seen.extend(event(&c.recv()));
        }
        seen.sort();
        let mut want = gone.clone();
        want.sort();
        assert_eq!(seen, want, "{}", c.name);
    }
    let told = killed.elapsed();
    assert!(
        told < Duration::from_millis(TTL_SECS * 1000 + 500),
        "{told:?}"
    );

    // Every node of the cluster crashes and comes back (AOF and nodes.conf kept): the members
    // stay connected, and service resumes across the two instances left.
    for node in &mut cluster.nodes {
        node.kill();
    }
    for node in &mut cluster.nodes {
        node.restart();
    }
    cluster.wait_ok();
    for i in &mut instances {
        i.wait_for("Redis: service resumed");
    }
    let mut attempt = 0;
    let (first, rest) = kept.split_first_mut().unwrap();
    within(
        Duration::from_secs(15),
        "chat crosses instances again",
        || {
            attempt += 1;
            first.say(&format!("back {attempt}"));
            let want = format!("{}: back {attempt}", first.name);
            // member01, on the other instance left.
            let other = rest.iter_mut().find(|c| c.name == users[1]).unwrap();
            while let Some(packet) = other.try_recv(Duration::from_millis(300)) {
                if event(&packet).as_deref() == Some(want.as_str()) {
                    return true;
                }
            }
            false
        },
    );
    let relogin = within(
        Duration::from_secs(10),
        "a lost member logs in again",
        || {
            let mut c = Client::connect(addrs[0]);
            c.login(users[2], PASSWORD) == ResultCode::NONE
        },
    );
    eprintln!(
        "cluster: kill -9 told after {told:?}; after the cluster's restart, logins again after {relogin:?}"
    );
    for i in instances {
        i.stop();
    }
}

#[test]
fn two_instances_behind_haproxy() {
    require("haproxy", "haproxy");
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let urls = vec![redis.url()];
    let users: Vec<String> = (0..11).map(|i| format!("guest{i:02}")).collect();
    let users: Vec<&str> = users.iter().map(String::as_str).collect();
    add_users(&urls, &users);
    let a = instance(&urls, &[]);
    let mut b = instance(&urls, &[]);
    let front = free_port();
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/haproxy.cfg");
    let mut haproxy = Command::new("haproxy")
        .args(["-f", config, "-db"])
        .env("IOCP_FRONT", format!("127.0.0.1:{front}"))
        .env("IOCP_CHAT_1", a.addr.to_string())
        .env("IOCP_CHAT_2", b.addr.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start haproxy");
    let addr: SocketAddr = ([127, 0, 0, 1], front).into();
    within(Duration::from_secs(10), "haproxy listens", || {
        std::net::TcpStream::connect(addr).is_ok()
    });
    let mut clients = meet_and_chat(&[addr], &users[..10]);
    // Capacity holds whichever instance the balancer picks.
    let mut late = Client::login_as(addr, users[10]);
    assert_eq!(late.enter(0).0.result, ResultCode::ENTER_ROOM_FULL_USER);
    drop(late);

    // One instance dies: its players are cut off, the others are told within the TTL, and the
    // cut-off players come back through the balancer (to the survivor) once their logins expire.
    b.child.kill().unwrap();
    let killed = Instant::now();
    let _ = b.child.wait();
    std::thread::sleep(Duration::from_millis(300));
    let (lost, kept): (Vec<Client>, Vec<Client>) = clients.drain(..).partition(is_closed);
    assert!(
        !lost.is_empty() && !kept.is_empty(),
        "leastconn spread the players"
    );
    for mut c in kept {
        let gone: Vec<String> = lost
            .iter()
            .map(|l| format!("-{}", l.unique_id.unwrap()))
            .collect();
        let mut seen = Vec::new();
        while seen.len() < gone.len() {
            seen.extend(event(&c.recv()));
        }
        seen.sort();
        let mut want = gone.clone();
        want.sort();
        assert_eq!(seen, want, "{} was told of every lost player", c.name);
    }
    let told = killed.elapsed();
    assert!(
        told < Duration::from_millis(TTL_SECS * 1000 + 500),
        "{told:?}"
    );
    for l in &lost {
        within(
            Duration::from_secs(TTL_SECS + 5),
            "a lost player is back",
            || {
                let mut c = Client::connect(addr);
                c.name = l.name.clone();
                if c.login(&l.name, PASSWORD) != ResultCode::NONE {
                    return false;
                }
                assert_eq!(c.enter(0).0.result, ResultCode::NONE);
                true
            },
        );
    }
    eprintln!(
        "behind HAProxy: {} of 10 players lost with their instance; the others told after {told:?}; \
         all back {:?} after the kill",
        lost.len(),
        killed.elapsed()
    );
    let _ = haproxy.kill();
    let _ = haproxy.wait();
    a.stop();
}

/// Whether the server closed `client`'s connection (end of stream or reset), looking without
/// waiting long.
fn is_closed(client: &Client) -> bool {
    let mut byte = [0u8; 1];
    client
        .stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    match client.stream.peek(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}
