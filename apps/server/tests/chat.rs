//! The chat server on loopback, started in-process: login, rooms, chat, clean-up, bad input.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use iocp_chat_protocol::{
    LoginRequest, Packet, ResultCode, RoomChatNotify, RoomLeaveUserNotify, RoomNewUserNotify,
    RoomUser, TypedPacket,
};
use iocp_server::CloseReason;
use support::{Client, PASSWORD, config, eventually, names, start, stop_within};

const STOP: Duration = Duration::from_secs(10);

#[test]
fn login_right_wrong_unknown_duplicate() {
    let server = start(config(2, 4), &["alice", "bob"]);
    let addr = server.local_addr();

    let mut c = Client::connect(addr);
    assert_eq!(c.login("alice", "wrong"), ResultCode::LOGIN_USER_INVALID_PW);
    assert_eq!(
        c.login("nobody", PASSWORD),
        ResultCode::LOGIN_USER_INVALID_PW,
        "an unknown user is not told apart from a wrong password"
    );
    assert_eq!(
        c.login("bad id!", PASSWORD),
        ResultCode::LOGIN_USER_INVALID_ID
    );
    assert_eq!(c.login("", PASSWORD), ResultCode::LOGIN_USER_INVALID_ID);
    assert_eq!(c.login("alice", PASSWORD), ResultCode::NONE);
    assert_eq!(
        c.login("bob", PASSWORD),
        ResultCode::LOGIN_USER_ALREADY,
        "this session is logged in already"
    );

    // Another connection logs in as alice: once the password checks out it replaces the first
    // session, which is closed (the newest login wins).
    let mut other = Client::connect(addr);
    assert_eq!(
        other.login("alice", "wrong"),
        ResultCode::LOGIN_USER_INVALID_PW
    );
    assert_eq!(
        other.login("alice", PASSWORD),
        ResultCode::NONE,
        "a login of a logged-in user replaces its session"
    );
    c.expect_closed();
    other.name = "alice".into();
    assert_eq!(
        other.login("bob", PASSWORD),
        ResultCode::LOGIN_USER_ALREADY,
        "this session is logged in already"
    );
    let (r, _) = other.enter(0);
    assert_eq!(r.result, ResultCode::NONE);
    assert_eq!(other.chat("it is me"), ResultCode::NONE);

    eventually("the replaced session logged out", || {
        server.stats().online == 1
    });
    let stats = server.stats();
    assert_eq!(stats.logins, 2);
    assert_eq!(stats.logins_replaced, 1);
    assert_eq!(stats.logins_refused, 7);
    stop_within(server, STOP);
}

#[test]
fn too_many_failed_logins_close_the_connection() {
    let server = start(config(1, 4), &["alice"]);
    let mut c = Client::connect(server.local_addr());
    for _ in 0..5 {
        assert_eq!(c.login("alice", "guess"), ResultCode::LOGIN_USER_INVALID_PW);
    }
    c.expect_closed();
    // Five failures of the account: it backs off for a second, from any connection, without
    // a password check; then the right password gets in.
    let mut again = Client::connect(server.local_addr());
    assert_eq!(
        again.login("alice", PASSWORD),
        ResultCode::LOGIN_TOO_MANY_ATTEMPTS
    );
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(again.login("alice", PASSWORD), ResultCode::NONE);
    assert_eq!(server.stats().logins_throttled, 1);
    stop_within(server, STOP);
}

/// A flood of 1,000 bad logins from other addresses — each connects, sends a login for an
/// unknown user with a wrong password, and goes — does not hold up a real user's login: it is
/// answered within a second, because each flooding address may have only a few checks waiting
/// (the rest are answered at once, unchecked) and the checks of connections already gone are
/// dropped unchecked.
#[cfg(target_os = "linux")]
#[test]
fn a_real_login_gets_through_a_login_flood() {
    let server = start(config(1, 4), &["alice"]);
    let addr = server.local_addr();
    let flood = |t: u8| {
        std::thread::spawn(move || {
            let source: std::net::SocketAddr = format!("127.0.0.{}:0", 2 + t).parse().unwrap();
            let mut answered = 0;
            for i in 0..125 {
                let socket =
                    socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                        .unwrap();
                socket.bind(&source.into()).unwrap();
                socket
                    .connect_timeout(&addr.into(), support::IO_TIMEOUT)
                    .unwrap();
                let mut c = Client::wrap(socket.into(), "flood");
                c.send(&LoginRequest {
                    user_id: format!("nobody{t}x{i}"),
                    password: "guess".into(),
                });
                // Every tenth waits for its answer (so that some checks are made); the rest
                // go at once.
                if i % 10 == 0 {
                    assert!(matches!(c.recv(), Packet::LoginResponse(_)));
                    answered += 1;
                }
            }
            answered
        })
    };
    let flooders: Vec<_> = (0..8).map(flood).collect();
    std::thread::sleep(Duration::from_millis(100));
    let mut alice = Client::connect(addr);
    let asked = std::time::Instant::now();
    assert_eq!(alice.login("alice", PASSWORD), ResultCode::NONE);
    let took = asked.elapsed();
    let answered: usize = flooders.into_iter().map(|f| f.join().unwrap()).sum();
    assert_eq!(answered, 8 * 13);
    assert!(
        took < Duration::from_secs(1),
        "the real login took {took:?} under the flood"
    );
    eventually("every flood check settled", || {
        let s = server.stats();
        s.logins_refused >= 8 * 13
    });
    let stats = server.stats();
    assert!(
        stats.logins_throttled + stats.login_checks_dropped > 500,
        "most of the flood was never hashed: {stats:?}"
    );
    stop_within(server, STOP);
}

#[test]
fn requests_before_login_are_refused() {
    let server = start(config(2, 4), &["alice"]);
    let mut c = Client::connect(server.local_addr());
    let (r, members) = c.enter(0);
    assert_eq!(r.result, ResultCode::USER_MGR_NOT_LOGGED_IN);
    assert!(members.is_empty());
    assert_eq!(c.leave(), ResultCode::USER_MGR_NOT_LOGGED_IN);
    assert_eq!(c.chat("hello?"), ResultCode::USER_MGR_NOT_LOGGED_IN);
    // The session is still served: it can log in now.
    assert_eq!(c.login("alice", PASSWORD), ResultCode::NONE);
    assert_eq!(c.enter(1).0.result, ResultCode::NONE);
    stop_within(server, STOP);
}

#[test]
fn room_rules() {
    let server = start(config(2, 2), &["alice", "bob", "carol"]);
    let addr = server.local_addr();
    let mut alice = Client::login_as(addr, "alice");
    let mut bob = Client::login_as(addr, "bob");
    let mut carol = Client::login_as(addr, "carol");

    assert_eq!(
        alice.chat("nobody hears"),
        ResultCode::CHAT_ROOM_INVALID_ROOM_NUMBER
    );
    assert_eq!(alice.leave(), ResultCode::LEAVE_ROOM_INVALID_ROOM_INDEX);
    assert_eq!(alice.enter(2).0.result, ResultCode::ROOM_INVALID_INDEX);
    assert_eq!(alice.enter(-1).0.result, ResultCode::ROOM_INVALID_INDEX);

    let (r, members) = alice.enter(1);
    assert_eq!(r.result, ResultCode::NONE);
    assert_eq!(
        names(&members),
        ["alice"],
        "the newcomer is in the list, last"
    );
    assert_eq!(
        alice.enter(0).0.result,
        ResultCode::ENTER_ROOM_INVALID_USER_STATUS,
        "already in a room"
    );

    let (r, members) = bob.enter(1);
    assert_eq!(r.result, ResultCode::NONE);
    assert_eq!(names(&members), ["alice", "bob"]);
    assert_eq!(Some(members[0].unique_id), alice.unique_id);
    let bob_id = bob.unique_id.expect("bob's unique id");
    assert_ne!(Some(bob_id), alice.unique_id);
    assert_eq!(
        alice.recv(),
        Packet::RoomNewUserNotify(RoomNewUserNotify {
            user: RoomUser {
                unique_id: bob_id,
                user_id: "bob".into()
            }
        })
    );

    // Room full.
    let (r, _) = carol.enter(1);
    assert_eq!(r.result, ResultCode::ENTER_ROOM_FULL_USER);

    // Bob leaves: alice is told, and there is room for carol.
    assert_eq!(bob.leave(), ResultCode::NONE);
    assert_eq!(
        alice.recv(),
        Packet::RoomLeaveUserNotify(RoomLeaveUserNotify { unique_id: bob_id })
    );
    assert_eq!(bob.leave(), ResultCode::LEAVE_ROOM_INVALID_ROOM_INDEX);
    let (r, members) = carol.enter(1);
    assert_eq!(r.result, ResultCode::NONE);
    assert_eq!(names(&members), ["alice", "carol"]);
    stop_within(server, STOP);
}

/// Every member receives every message of its room, in each sender's order, exactly once; the
/// sender gets its response before its own notification; other rooms hear nothing.
#[test]
fn notify_fan_out_in_order() {
    const MEMBERS: usize = 4;
    const MESSAGES: usize = 50;
    let names: Vec<String> = (0..MEMBERS + 1).map(|i| format!("user{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let server = start(config(2, 8), &refs);
    let addr = server.local_addr();

    let mut clients: Vec<Client> = names[..MEMBERS]
        .iter()
        .map(|n| Client::login_as(addr, n))
        .collect();
    for i in 0..MEMBERS {
        let (r, members) = clients[i].enter(0);
        assert_eq!(r.result, ResultCode::NONE);
        assert_eq!(members.len(), i + 1);
        for earlier in &mut clients[..i] {
            assert!(matches!(earlier.recv(), Packet::RoomNewUserNotify(_)));
        }
    }
    // Someone in the other room must hear nothing.
    let mut outsider = Client::login_as(addr, &names[MEMBERS]);
    assert_eq!(outsider.enter(1).0.result, ResultCode::NONE);

    // Everyone writes all their messages at once (interleaved), then reads.
    for seq in 0..MESSAGES {
        for c in &mut clients {
            let text = format!("{} {seq}", c.name);
            c.say(&text);
        }
    }
    for c in &mut clients {
        let mut next: HashMap<String, usize> = HashMap::new();
        let mut responses = 0;
        let mut notifies = 0;
        while notifies < MEMBERS * MESSAGES {
            match c.recv() {
                Packet::RoomChatResponse(r) => {
                    assert_eq!(r.result, ResultCode::NONE);
                    responses += 1;
                }
                Packet::RoomChatNotify(RoomChatNotify { user_id, message }) => {
                    let message = String::from_utf8(message).unwrap();
                    let (sender, seq) = message.split_once(' ').unwrap();
                    assert_eq!(sender, user_id, "the notify names its sender");
                    let seq: usize = seq.parse().unwrap();
                    let expected = next.entry(user_id.clone()).or_default();
                    assert_eq!(seq, *expected, "{}: {user_id}'s messages in order", c.name);
                    *expected += 1;
                    if user_id == c.name {
                        assert!(
                            responses > seq,
                            "the response comes before the sender's own notify"
                        );
                    }
                    notifies += 1;
                }
                other => panic!("{}: unexpected {other:?}", c.name),
            }
        }
        assert_eq!(responses, MESSAGES);
        assert!(next.values().all(|&n| n == MESSAGES), "{next:?}");
    }
    // The outsider still gets only what is meant for it.
    assert_eq!(outsider.chat("anyone?"), ResultCode::NONE);
    assert!(matches!(outsider.recv(), Packet::RoomChatNotify(n) if n.message == b"anyone?"));
    // The logic thread counts a chat after sending its notifies, so the counters may trail the
    // last notify received by a moment.
    let (chats, notifies) = (
        (MEMBERS * MESSAGES + 1) as u64,
        (MEMBERS * MEMBERS * MESSAGES + 1) as u64,
    );
    eventually("every chat and notify counted", || {
        let stats = server.stats();
        stats.chats == chats && stats.notifies == notifies
    });
    let stats = server.stats();
    assert_eq!((stats.chats, stats.notifies), (chats, notifies));
    stop_within(server, STOP);
}

/// A member who disconnects leaves the room (the others are told), is logged out, and can
/// log in again and take its seat back.
#[test]
fn disconnect_leaves_the_room_and_logs_out() {
    let server = start(config(1, 2), &["alice", "bob", "carol"]);
    let addr = server.local_addr();
    let (mut alice, bob) = support::alice_and_bob_in_room_0(addr);

    let old_bob = bob.unique_id.unwrap();
    drop(bob);
    assert_eq!(
        alice.recv(),
        Packet::RoomLeaveUserNotify(RoomLeaveUserNotify { unique_id: old_bob })
    );
    eventually("bob logged out", || server.stats().online == 1);

    let mut bob = Client::login_as(addr, "bob");
    let (r, members) = bob.enter(0);
    assert_eq!(r.result, ResultCode::NONE, "the seat was freed");
    assert_eq!(names(&members), ["alice", "bob"]);
    assert_ne!(
        bob.unique_id,
        Some(old_bob),
        "a new login has a new unique id"
    );
    assert!(matches!(alice.recv(), Packet::RoomNewUserNotify(_)));
    assert_eq!(bob.chat("back"), ResultCode::NONE);
    assert!(matches!(alice.recv(), Packet::RoomChatNotify(n) if n.user_id == "bob"));

    // A disconnect while the password is being checked leaves nothing behind either.
    let closed_before = server.handle().stats().closed_total();
    let mut carol = Client::connect(addr);
    carol.send(&LoginRequest {
        user_id: "carol".into(),
        password: PASSWORD.into(),
    });
    drop(carol);
    // Waiting for the count of open sessions would pass before the server even accepted carol;
    // a session is counted closed only after its on_close queued the disconnect for the logic.
    eventually("carol gone", || {
        server.handle().stats().closed_total() > closed_before
    });
    eventually("carol logged out", || server.stats().online == 2);
    Client::login_as(addr, "carol");
    stop_within(server, STOP);
}

/// Bad input closes only the session that sent it; the room goes on chatting.
#[test]
fn malformed_and_oversized_frames_close_only_their_session() {
    let server = start(config(1, 4), &["alice", "bob", "mallory"]);
    let addr = server.local_addr();
    let (mut alice, mut bob) = support::alice_and_bob_in_room_0(addr);

    let login = LoginRequest {
        user_id: "mallory".into(),
        password: PASSWORD.into(),
    }
    .encode();
    let mut short_login = login[..35].to_vec(); // body of 30 bytes instead of 66
    short_login[0] = 35;
    let bad_inputs: Vec<(&str, Vec<u8>)> = vec![
        ("short body", short_login),
        ("long body", {
            let mut v = login.to_vec();
            v.push(0);
            v[0] += 1;
            v
        }),
        ("oversized frame", {
            let mut v = vec![0xff, 0xff, 201, 0, 0];
            v.extend_from_slice(&[0; 100]);
            v
        }),
        ("length below the header", vec![3, 0, 201, 0, 0]),
        ("unknown id", vec![5, 0, 0x39, 0x30, 0]),
        ("a server-to-client id", vec![7, 0, 202, 0, 0, 0, 0]),
        ("not this protocol", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
    ];
    let before = server
        .handle()
        .stats()
        .closed_for(&CloseReason::Protocol(String::new()));
    for (what, bytes) in &bad_inputs {
        let mut bad = Client::connect(addr);
        bad.name = (*what).to_owned();
        bad.send_raw(bytes);
        bad.expect_closed();
    }
    // A logged-in member who goes bad is closed and leaves the room.
    let mut mallory = Client::login_as(addr, "mallory");
    assert_eq!(mallory.enter(0).0.result, ResultCode::NONE);
    assert!(matches!(alice.recv(), Packet::RoomNewUserNotify(_)));
    assert!(matches!(bob.recv(), Packet::RoomNewUserNotify(_)));
    // A ROOM_CHAT_REQUEST of 4 bytes instead of 257.
    mallory.send_raw(&[9, 0, 221, 0, 0, 1, 2, 3, 4]);
    mallory.expect_closed();
    let mallory_id = mallory.unique_id.unwrap();
    for c in [&mut alice, &mut bob] {
        assert_eq!(
            c.recv(),
            Packet::RoomLeaveUserNotify(RoomLeaveUserNotify {
                unique_id: mallory_id
            })
        );
    }

    let expected = before + bad_inputs.len() as u64 + 1;
    eventually("every bad session counted", || {
        server
            .handle()
            .stats()
            .closed_for(&CloseReason::Protocol(String::new()))
            == expected
    });
    // Alice and bob never noticed.
    assert_eq!(alice.chat("still here"), ResultCode::NONE);
    assert!(matches!(alice.recv(), Packet::RoomChatNotify(n) if n.message == b"still here"));
    assert!(matches!(bob.recv(), Packet::RoomChatNotify(n) if n.message == b"still here"));
    stop_within(server, STOP);
}

/// With `--bad-packet ignore`, an unknown id or a malformed body is skipped and the session
/// goes on; a bad length still closes it.
#[test]
fn bad_packets_can_be_ignored() {
    let mut config = config(1, 4);
    config.bad_packet = iocp_packet::BadPacket::Ignore;
    let server = start(config, &["alice"]);
    let mut c = Client::connect(server.local_addr());
    c.send_raw(&[5, 0, 0x39, 0x30, 0]); // unknown id
    c.send_raw(&[6, 0, 201, 0, 0, 1]); // LOGIN_REQUEST with a 1-byte body
    assert_eq!(c.login("alice", PASSWORD), ResultCode::NONE);
    c.send_raw(&[0xff, 0xff]);
    c.expect_closed();
    stop_within(server, STOP);
}

/// A member that stops reading is disconnected at its send-queue limit and leaves the room;
/// the others get every message, in order.
#[test]
fn a_member_that_stops_reading_is_evicted() {
    let mut config = config(1, 4);
    config.server.send_queue_limit = 32 * 1024;
    let server = start(config, &["alice", "bob", "sloth"]);
    let addr = server.local_addr();

    // The slow member: a small receive buffer, and it never reads.
    let sloth = {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket
            .connect_timeout(&addr.into(), support::IO_TIMEOUT)
            .unwrap();
        let stream: std::net::TcpStream = socket.into();
        stream.set_read_timeout(Some(support::IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(support::IO_TIMEOUT)).unwrap();
        stream
    };
    let mut sloth = Client::wrap(sloth, "sloth");
    assert_eq!(sloth.login("sloth", PASSWORD), ResultCode::NONE);
    assert_eq!(sloth.enter(0).0.result, ResultCode::NONE);
    let sloth_id = sloth.unique_id.unwrap();

    let (mut alice, mut bob) = support::alice_and_bob_in_room_0(addr);

    // Alice talks; bob and alice read everything as it comes; sloth reads nothing.
    let mut sent = 0;
    let mut seen = [0usize; 2];
    let mut saw_leave = [false; 2];
    while saw_leave != [true, true] {
        if !saw_leave.contains(&true) {
            assert!(sent < 100_000, "sloth was never evicted");
            alice.say(&format!("{sent}"));
            sent += 1;
        }
        for (i, c) in [&mut alice, &mut bob].into_iter().enumerate() {
            while seen[i] < sent || (saw_leave.contains(&true) && !saw_leave[i]) {
                match c.recv() {
                    Packet::RoomChatResponse(r) => assert_eq!(r.result, ResultCode::NONE),
                    Packet::RoomChatNotify(n) => {
                        assert_eq!(
                            n.message,
                            seen[i].to_string().as_bytes(),
                            "{}: in order",
                            c.name
                        );
                        seen[i] += 1;
                    }
                    Packet::RoomLeaveUserNotify(n) => {
                        assert_eq!(n.unique_id, sloth_id);
                        saw_leave[i] = true;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
    }
    assert_eq!(seen, [sent, sent], "nothing lost for the members who read");
    assert_eq!(
        server
            .handle()
            .stats()
            .closed_for(&CloseReason::SendQueueFull),
        1
    );
    drop(sloth);
    assert_eq!(bob.chat("after"), ResultCode::NONE);
    stop_within(server, STOP);
}

/// A store that takes `delay` to answer, like a slow hash or a remote database.
struct SlowStore {
    inner: iocp_accounts::MemoryStore,
    delay: Duration,
}

impl iocp_accounts::AccountStore for SlowStore {
    fn password_hash(&self, user_id: &str) -> Result<Option<String>, iocp_accounts::StoreError> {
        std::thread::sleep(self.delay);
        self.inner.password_hash(user_id)
    }
    fn insert(
        &self,
        user_id: &str,
        hash: &str,
        replace: bool,
    ) -> Result<bool, iocp_accounts::StoreError> {
        self.inner.insert(user_id, hash, replace)
    }
    fn remove(&self, user_id: &str) -> Result<bool, iocp_accounts::StoreError> {
        self.inner.remove(user_id)
    }
    fn user_ids(&self) -> Result<Vec<String>, iocp_accounts::StoreError> {
        self.inner.user_ids()
    }
}

fn slow_accounts(users: &[String], delay: Duration) -> iocp_accounts::Accounts {
    use iocp_accounts::{AccountStore, Accounts, HashCost, MemoryStore};
    let inner = MemoryStore::new();
    for user in users {
        let hash = iocp_accounts::hash_password(PASSWORD, HashCost::LIGHT).unwrap();
        inner.insert(user, &hash, false).unwrap();
    }
    Accounts::new(
        std::sync::Arc::new(SlowStore { inner, delay }) as std::sync::Arc<dyn AccountStore>
    )
}

/// Password checks run off the logic thread: while a storm of slow logins is being checked,
/// a room keeps chatting at full speed.
#[test]
fn a_login_storm_does_not_stall_chat() {
    const STORM: usize = 40;
    const CHECK: Duration = Duration::from_millis(50);
    let mut names: Vec<String> = (0..STORM).map(|i| format!("storm{i}")).collect();
    names.extend(["alice".to_owned(), "bob".to_owned()]);
    let mut config = config(1, 4);
    config.login_threads = 2;
    // All from one address: let them all wait for their check.
    config.throttle.addr_pending = 1000;
    let server =
        iocp_server_app::chat::ChatServer::start(config, slow_accounts(&names, CHECK)).unwrap();
    let addr = server.local_addr();
    let (mut alice, mut bob) = support::alice_and_bob_in_room_0(addr);

    // The storm: 40 logins at 50 ms each on 2 threads keep the pool busy for about a second.
    let mut storm: Vec<Client> = (0..STORM)
        .map(|i| {
            let mut c = Client::connect(addr);
            c.send(&LoginRequest {
                user_id: format!("storm{i}"),
                password: PASSWORD.into(),
            });
            c
        })
        .collect();
    let storm_started = std::time::Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let t = std::time::Instant::now();
        assert_eq!(
            alice.chat(&format!("during the storm {i}")),
            ResultCode::NONE
        );
        assert!(matches!(alice.recv(), Packet::RoomChatNotify(_)));
        assert!(matches!(bob.recv(), Packet::RoomChatNotify(_)));
        slowest = slowest.max(t.elapsed());
    }
    let chat_time = storm_started.elapsed();
    for c in &mut storm {
        match c.recv() {
            Packet::LoginResponse(r) => assert_eq!(r.result, ResultCode::NONE),
            other => panic!("{other:?}"),
        }
    }
    let storm_time = storm_started.elapsed();
    assert!(
        chat_time < storm_time / 2,
        "the chat ({chat_time:?}) was not held up by the logins ({storm_time:?})"
    );
    // Were the checks on the logic thread, the first chat would wait for all 40 of them.
    assert!(
        slowest < storm_time / 2,
        "one chat round trip took {slowest:?} of the storm's {storm_time:?}"
    );
    assert_eq!(server.stats().online, STORM as u64 + 2);
    stop_within(server, STOP);
}

/// More logins waiting than the pool's queue holds: the surplus is answered
/// `LOGIN_SERVER_BUSY` at once, and a retry later succeeds.
#[test]
fn a_full_login_queue_answers_busy() {
    let names: Vec<String> = (0..20).map(|i| format!("u{i}")).collect();
    let mut config = config(1, 4);
    config.login_threads = 1;
    config.login_queue = 2;
    config.throttle.addr_pending = 1000;
    let server = iocp_server_app::chat::ChatServer::start(
        config,
        slow_accounts(&names, Duration::from_millis(100)),
    )
    .unwrap();
    let addr = server.local_addr();
    let mut clients: Vec<Client> = names
        .iter()
        .map(|n| {
            let mut c = Client::connect(addr);
            c.name = n.clone();
            c.send(&LoginRequest {
                user_id: n.clone(),
                password: PASSWORD.into(),
            });
            c
        })
        .collect();
    let mut busy = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        match c.recv() {
            Packet::LoginResponse(r) if r.result == ResultCode::LOGIN_SERVER_BUSY => busy.push(i),
            Packet::LoginResponse(r) => assert_eq!(r.result, ResultCode::NONE),
            other => panic!("{other:?}"),
        }
    }
    assert!(!busy.is_empty(), "a queue of 2 cannot hold 20 logins");
    assert!(busy.len() <= 20 - 2, "at least the first ones got in");
    let i = busy[0];
    assert_eq!(clients[i].login(&names[i], PASSWORD), ResultCode::NONE);
    stop_within(server, STOP);
}

/// The tutorial's C# client's conversation, as its packets go: two users log in, enter one
/// room, see each other in the user list (209) and as a new user (208), exchange Korean UTF-8
/// messages that both receive (the sender included), a 256-byte message and a 257-byte one that
/// fills its field arrive whole, bytes that are not UTF-8 are relayed as they are, `DEV_ECHO`
/// echoes, and one leaves (the other gets 217). No connection is closed.
#[test]
fn the_tutorial_clients_conversation() {
    use iocp_chat_protocol::{DevEcho, RoomChatRequest, RoomLeaveRequest, RoomLeaveResponse};

    let server = start(config(4, 10), &["alice", "김철수"]);
    let addr = server.local_addr();

    // The echo button works before logging in, with the body as the client builds it.
    let mut alice = Client::connect(addr);
    let body = "에코 echo".as_bytes();
    let mut raw = ((5 + body.len()) as u16).to_le_bytes().to_vec();
    raw.extend_from_slice(&1u16.to_le_bytes());
    raw.push(0);
    raw.extend_from_slice(body);
    alice.send_raw(&raw);
    assert_eq!(alice.recv_frame(), raw, "DEV_ECHO comes back byte for byte");
    assert_eq!(alice.login("alice", PASSWORD), ResultCode::NONE);
    alice.name = "alice".into();
    let mut chulsoo = Client::login_as(addr, "김철수");

    let (r, members) = alice.enter(3);
    assert_eq!(r.result, ResultCode::NONE);
    assert_eq!(names(&members), ["alice"]);
    let (r, members) = chulsoo.enter(3);
    assert_eq!(r.result, ResultCode::NONE);
    let (alice_id, chulsoo_id) = (alice.unique_id.unwrap(), chulsoo.unique_id.unwrap());
    assert_eq!(
        members,
        [
            RoomUser {
                unique_id: alice_id,
                user_id: "alice".into()
            },
            RoomUser {
                unique_id: chulsoo_id,
                user_id: "김철수".into()
            }
        ],
        "the newcomer sees who is there (itself last)"
    );
    assert_eq!(
        alice.recv(),
        Packet::RoomNewUserNotify(RoomNewUserNotify {
            user: RoomUser {
                unique_id: chulsoo_id,
                user_id: "김철수".into()
            }
        }),
        "the member who was there sees the newcomer"
    );

    let exchange = |from: &mut Client, to: &mut Client, message: &[u8]| {
        from.send(&RoomChatRequest {
            message: message.to_vec(),
        });
        match from.recv() {
            Packet::RoomChatResponse(r) => assert_eq!(r.result, ResultCode::NONE),
            other => panic!("expected ROOM_CHAT_RESPONSE, got {other:?}"),
        }
        let sender = from.name.clone();
        for c in [from, to] {
            match c.recv() {
                Packet::RoomChatNotify(n) => {
                    assert_eq!(n.user_id, sender);
                    assert_eq!(n.message, message, "{}: the message arrives whole", c.name);
                }
                other => panic!("{}: expected ROOM_CHAT_NOTIFY, got {other:?}", c.name),
            }
        }
    };
    exchange(&mut alice, &mut chulsoo, "안녕하세요, 철수 씨!".as_bytes());
    exchange(&mut chulsoo, &mut alice, "반갑습니다 😀".as_bytes());
    let full = format!("{}a", "가".repeat(85)); // 255 + 1 bytes: the longest with its NUL
    assert_eq!(full.len(), 256);
    exchange(&mut alice, &mut chulsoo, full.as_bytes());
    exchange(&mut chulsoo, &mut alice, &[b'z'; 257]); // fills the field: no NUL at all
    exchange(&mut alice, &mut chulsoo, &[0xff, 0xfe, b'x', 0xc3]); // not UTF-8: relayed as is

    // The echo also works logged in, in a room.
    chulsoo.send(&DevEcho {
        data: "에코".as_bytes().to_vec(),
    });
    assert_eq!(
        chulsoo.recv(),
        Packet::DevEcho(DevEcho {
            data: "에코".as_bytes().to_vec()
        })
    );

    chulsoo.send(&RoomLeaveRequest);
    assert_eq!(
        chulsoo.recv(),
        Packet::RoomLeaveResponse(RoomLeaveResponse {
            result: ResultCode::NONE
        })
    );
    assert_eq!(
        alice.recv(),
        Packet::RoomLeaveUserNotify(RoomLeaveUserNotify {
            unique_id: chulsoo_id
        })
    );
    // Entering again: a list of two, alice first.
    let (_, members) = chulsoo.enter(3);
    assert_eq!(names(&members), ["alice", "김철수"]);
    assert!(matches!(alice.recv(), Packet::RoomNewUserNotify(_)));

    assert_eq!(
        server.handle().stats().closed_total(),
        0,
        "no connection closed"
    );
    assert_eq!(server.handle().stats().open(), 2, "both still connected");
    stop_within(server, STOP);
}

/// Connections that never log in are closed at the login timeout — also one that only echoes —
/// while a logged-in user stays.
#[test]
fn connections_that_never_log_in_are_closed_at_the_login_timeout() {
    let mut config = config(1, 4);
    config.login_timeout = Some(Duration::from_millis(400));
    let server = start(config, &["alice"]);
    let addr = server.local_addr();
    let started = std::time::Instant::now();
    let mut idle: Vec<Client> = (0..40).map(|_| Client::connect(addr)).collect();
    let mut echoing = Client::connect(addr);
    let mut alice = Client::login_as(addr, "alice");
    for _ in 0..3 {
        echoing.send(&iocp_chat_protocol::DevEcho { data: vec![1] });
        assert!(matches!(echoing.recv(), Packet::DevEcho(_)));
    }
    for c in idle.iter_mut().chain([&mut echoing]) {
        c.expect_closed();
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(5),
        "closed after {took:?}"
    );
    eventually("the timeouts counted", || {
        server.stats().login_timeouts == 41
    });
    eventually("the closes counted", || {
        server
            .handle()
            .stats()
            .closed_for(&CloseReason::Timeout(String::new()))
            == 41
    });
    assert_eq!(
        alice.enter(0).0.result,
        ResultCode::NONE,
        "alice is still served"
    );
    stop_within(server, STOP);
}

/// With an idle timeout, a member who sends nothing is closed and the room is told; a member
/// who keeps sending (any packet counts, DEV_ECHO included) stays.
#[test]
fn an_idle_member_is_closed_and_the_room_notified() {
    let mut config = config(1, 4);
    config.server.idle_timeout = Some(Duration::from_millis(500));
    let server = start(config, &["alice", "bob"]);
    let addr = server.local_addr();
    let (mut alice, mut bob) = support::alice_and_bob_in_room_0(addr);
    let bob_id = bob.unique_id.unwrap();
    // Alice echoes every 100 ms for 1.5 s; bob reads but sends nothing.
    let mut left = None;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        alice.send(&iocp_chat_protocol::DevEcho { data: vec![7] });
        loop {
            match alice.recv() {
                Packet::DevEcho(_) => break,
                Packet::RoomLeaveUserNotify(n) => left = Some((n.unique_id, started.elapsed())),
                other => panic!("unexpected {other:?}"),
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (who, when) = left.expect("alice was told that bob left");
    assert_eq!(who, bob_id);
    assert!(
        when >= Duration::from_millis(500),
        "bob closed after {when:?}"
    );
    bob.expect_closed();
    eventually("bob's close counted", || {
        server
            .handle()
            .stats()
            .closed_for(&CloseReason::IdleTimeout)
            == 1
    });
    assert_eq!(alice.chat("still here"), ResultCode::NONE);
    stop_within(server, STOP);
}

/// A user whose connection just closed logs in again at once, every time: a disconnect the
/// server has not seen yet cannot hold the login (the new session replaces the old one).
#[test]
fn login_again_right_after_closing_succeeds_every_time() {
    let server = start(config(1, 4), &["alice"]);
    let addr = server.local_addr();
    for i in 0..100 {
        let mut c = Client::connect(addr);
        assert_eq!(c.login("alice", PASSWORD), ResultCode::NONE, "try {i}");
        c.name = "alice".into();
        if i % 2 == 0 {
            assert_eq!(c.enter(0).0.result, ResultCode::NONE, "try {i}");
        }
        drop(c);
    }
    eventually("one alice online", || server.stats().online <= 1);
    stop_within(server, STOP);
}

/// A damaged account file costs the logins that need it a result code (36), never a login
/// thread: after the file is truncated under the running server every login is answered at
/// once, and once it is restored logins succeed again.
#[test]
fn a_damaged_account_file_is_answered_and_survived() {
    use iocp_accounts::{Accounts, HashCost, RedbStore};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("accounts.redb");
    let store = RedbStore::open(&db).unwrap();
    let accounts = Accounts::new(std::sync::Arc::new(store));
    for user in ["alice", "bob", "carol"] {
        accounts
            .add(user, PASSWORD, HashCost::LIGHT, false)
            .unwrap();
    }
    let good = std::fs::read(&db).unwrap();
    let server = iocp_server_app::chat::ChatServer::start(config(1, 4), accounts).unwrap();
    let addr = server.local_addr();
    Client::login_as(addr, "alice");

    std::fs::File::options()
        .write(true)
        .open(&db)
        .unwrap()
        .set_len(4096)
        .unwrap();
    std::thread::sleep(Duration::from_millis(50)); // the store lets go of the file when idle
    // More logins than login threads: each is answered, none hangs.
    for _ in 0..6 {
        let mut c = Client::connect(addr);
        assert_eq!(c.login("bob", PASSWORD), ResultCode::LOGIN_STORE_ERROR);
    }
    std::fs::write(&db, &good).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    Client::login_as(addr, "carol");
    stop_within(server, STOP);
}

/// With a logic queue of one event and clients sending as fast as they can, shutdown still ends
/// within the linger time and a second: no worker stays blocked on the full queue.
#[test]
fn shutdown_with_a_tiny_logic_queue_ends_within_the_linger() {
    let mut config = config(1, 4);
    config.queue.capacity = 1;
    config.server.linger = Duration::from_secs(2);
    let server = start(config, &[]);
    let addr = server.local_addr();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let senders: Vec<_> = (0..16)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let echo = iocp_chat_protocol::DevEcho {
                    data: vec![9; 1000],
                }
                .encode();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if std::io::Write::write_all(&mut c.stream, &echo).is_err() {
                        break;
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let stopping = std::time::Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(server.shutdown());
    });
    let result = rx.recv_timeout(Duration::from_secs(10));
    let took = stopping.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    result.expect("shutdown ended").expect("cleanly");
    for s in senders {
        s.join().unwrap();
    }
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
}

/// A login is by the id's NFKC form: `ａｌｉｃｅ` (full width) is alice, and the room sees
/// `alice`; a look-alike (Cyrillic `а`) is another, unknown user.
#[test]
fn logins_use_the_normalized_user_id() {
    let server = start(config(1, 4), &["alice", "bob"]);
    let addr = server.local_addr();
    let mut bob = Client::login_as(addr, "bob");
    assert_eq!(bob.enter(0).0.result, ResultCode::NONE);
    let mut wide = Client::connect(addr);
    assert_eq!(
        wide.login("\u{ff41}\u{ff4c}\u{ff49}\u{ff43}\u{ff45}", PASSWORD),
        ResultCode::NONE
    );
    wide.name = "alice".into();
    let (_, members) = wide.enter(0);
    assert_eq!(names(&members), ["bob", "alice"]);
    assert!(matches!(bob.recv(), Packet::RoomNewUserNotify(n) if n.user.user_id == "alice"));
    let mut fake = Client::connect(addr);
    assert_eq!(
        fake.login("\u{430}lice", PASSWORD),
        ResultCode::LOGIN_USER_INVALID_PW
    );
    stop_within(server, STOP);
}
