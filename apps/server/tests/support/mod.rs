//! What the chat server's tests share: a server on `127.0.0.1:0` with accounts made for the
//! test, and a client that speaks the protocol with time limits on every read.

#![allow(dead_code)]

pub mod process;
pub mod redis;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iocp_accounts::{AccountStore, Accounts, HashCost, MemoryStore};
use iocp_chat_protocol::{
    LoginRequest, LoginResponse, MAX_USER_LIST, Packet, ResultCode, RoomChatRequest,
    RoomChatResponse, RoomEnterRequest, RoomEnterResponse, RoomLeaveRequest, RoomLeaveResponse,
    RoomUser, RoomUserListNotify, TypedPacket,
};
use iocp_server::{BackendChoice, Config};
use iocp_server_app::chat::{ChatConfig, ChatServer};
use iocp_wire::{Decoder, Frame};

/// No single socket operation of a test waits longer than this.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The password of every test account.
pub const PASSWORD: &str = "pw-1234";

/// A chat configuration for tests: loopback, port 0, two workers, `rooms` rooms of `capacity`.
pub fn config(rooms: u32, capacity: u32) -> ChatConfig {
    ChatConfig {
        server: Config {
            addr: "127.0.0.1:0".parse().unwrap(),
            workers: 2,
            max_sessions: 256,
            backend: BackendChoice::Auto,
            linger: Duration::from_secs(2),
            ..Config::default()
        },
        rooms,
        room_capacity: capacity,
        ..ChatConfig::default()
    }
}

/// Accounts in memory for `users`, all with [`PASSWORD`] (cheap hashes).
pub fn accounts(users: &[&str]) -> Accounts {
    let store = Arc::new(MemoryStore::new());
    let accounts = Accounts::new(store.clone() as Arc<dyn AccountStore>);
    for user in users {
        assert!(
            accounts
                .add(user, PASSWORD, HashCost::LIGHT, false)
                .unwrap()
        );
    }
    accounts
}

/// Starts a chat server with accounts for `users`.
pub fn start(config: ChatConfig, users: &[&str]) -> ChatServer {
    ChatServer::start(config, accounts(users)).expect("chat server starts")
}

/// Shuts the server down and fails the test if that takes longer than `limit`.
pub fn stop_within(server: ChatServer, limit: Duration) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(server.shutdown());
    });
    match rx.recv_timeout(limit) {
        Ok(result) => result.expect("server stopped cleanly"),
        Err(_) => panic!("shutdown took longer than {limit:?}"),
    }
}

/// Waits until `f` holds, for up to [`IO_TIMEOUT`].
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + IO_TIMEOUT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A client of the chat protocol, with time limits.
pub struct Client {
    pub stream: TcpStream,
    decoder: Decoder,
    /// Whole frames read but not yet taken.
    pending: std::collections::VecDeque<Vec<u8>>,
    pub name: String,
    /// The unique id the server gave this client in its room (from the member list).
    pub unique_id: Option<i64>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
        Client::wrap(stream, "")
    }

    /// A client on a connected stream (time limits are set here).
    pub fn wrap(stream: TcpStream, name: &str) -> Client {
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            decoder: Decoder::with_max_frame_len(iocp_wire::MAX_FRAME_LEN),
            pending: Default::default(),
            name: name.to_owned(),
            unique_id: None,
        }
    }

    /// Connects and logs in as `user` with [`PASSWORD`], expecting success.
    pub fn login_as(addr: SocketAddr, user: &str) -> Client {
        let mut c = Client::connect(addr);
        assert_eq!(c.login(user, PASSWORD), ResultCode::NONE, "login of {user}");
        c.name = user.to_owned();
        c
    }

    pub fn send(&mut self, packet: &impl TypedPacket) {
        self.stream.write_all(&packet.encode()).expect("send");
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// The next packet's raw frame (header included).
    pub fn recv_frame(&mut self) -> Vec<u8> {
        self.recv_frame_within(None).expect("a frame")
    }

    /// The next packet, if one comes within `wait`.
    pub fn try_recv(&mut self, wait: Duration) -> Option<Packet> {
        let frame = self.recv_frame_within(Some(wait))?;
        let (frame, _) = Frame::parse(&frame, iocp_wire::MAX_FRAME_LEN)
            .unwrap()
            .unwrap();
        Some(Packet::decode(&frame).expect("the server sends good packets"))
    }

    fn recv_frame_within(&mut self, wait: Option<Duration>) -> Option<Vec<u8>> {
        let mut buf = [0u8; 16 * 1024];
        loop {
            if let Some(frame) = self.pending.pop_front() {
                return Some(frame);
            }
            self.stream
                .set_read_timeout(Some(wait.unwrap_or(IO_TIMEOUT)))
                .unwrap();
            let n = match self.stream.read(&mut buf) {
                Ok(0) => panic!("{}: the server closed the connection", self.name),
                Ok(n) => n,
                Err(e)
                    if wait.is_some()
                        && matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                {
                    return None;
                }
                Err(e) => panic!("{}: read: {e}", self.name),
            };
            let pending = &mut self.pending;
            self.decoder
                .decode(&buf[..n], |f| pending.push_back(f.as_bytes().to_vec()))
                .expect("the server sends good frames");
        }
    }

    /// The next packet.
    pub fn recv(&mut self) -> Packet {
        let frame = self.recv_frame();
        let (frame, _) = Frame::parse(&frame, iocp_wire::MAX_FRAME_LEN)
            .unwrap()
            .unwrap();
        Packet::decode(&frame).expect("the server sends good packets")
    }

    pub fn login(&mut self, user: &str, password: &str) -> ResultCode {
        self.send(&LoginRequest {
            user_id: user.into(),
            password: password.into(),
        });
        match self.recv() {
            Packet::LoginResponse(LoginResponse { result }) => result,
            other => panic!("expected LOGIN_RESPONSE, got {other:?}"),
        }
    }

    /// Enters `room`; on success also reads the member list (this client last), returned with
    /// the response, and keeps this client's unique id.
    pub fn enter(&mut self, room: i32) -> (RoomEnterResponse, Vec<RoomUser>) {
        self.send(&RoomEnterRequest { room_number: room });
        let response = match self.recv() {
            Packet::RoomEnterResponse(r) => r,
            other => panic!("expected ROOM_ENTER_RESPONSE, got {other:?}"),
        };
        let mut members = Vec::new();
        if response.result.is_ok() {
            loop {
                match self.recv() {
                    Packet::RoomUserListNotify(RoomUserListNotify { users }) => {
                        let n = users.len();
                        let me = users.last().filter(|u| u.user_id == self.name).cloned();
                        members.extend(users);
                        if let Some(me) = me {
                            self.unique_id = Some(me.unique_id);
                            break;
                        }
                        if n < MAX_USER_LIST {
                            break;
                        }
                    }
                    other => panic!("expected ROOM_USER_LIST_NOTIFY, got {other:?}"),
                }
            }
        }
        (response, members)
    }

    pub fn leave(&mut self) -> ResultCode {
        self.send(&RoomLeaveRequest);
        match self.recv() {
            Packet::RoomLeaveResponse(RoomLeaveResponse { result }) => result,
            other => panic!("expected ROOM_LEAVE_RESPONSE, got {other:?}"),
        }
    }

    /// Sends a chat message (its response comes with the notifications: see `chat_result`).
    pub fn say(&mut self, message: &str) {
        self.send(&RoomChatRequest::text(message));
    }

    /// Says `message` and reads its response (for a refused chat: no notification follows).
    pub fn chat(&mut self, message: &str) -> ResultCode {
        self.say(message);
        match self.recv() {
            Packet::RoomChatResponse(RoomChatResponse { result }) => result,
            other => panic!("expected ROOM_CHAT_RESPONSE, got {other:?}"),
        }
    }

    /// Reads until the server closes the connection (end of stream or reset), ignoring what
    /// comes before.
    pub fn expect_closed(&mut self) {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return,
                Err(e) => panic!("{}: expected the server to close, got {e}", self.name),
            }
        }
    }
}

/// The user ids of `members`, in order.
pub fn names(members: &[RoomUser]) -> Vec<&str> {
    members.iter().map(|m| m.user_id.as_str()).collect()
}

/// Alice and bob logged in (with [`PASSWORD`]) and in room 0, alice told that bob came.
pub fn alice_and_bob_in_room_0(addr: SocketAddr) -> (Client, Client) {
    let mut alice = Client::login_as(addr, "alice");
    let mut bob = Client::login_as(addr, "bob");
    assert_eq!(alice.enter(0).0.result, ResultCode::NONE);
    assert_eq!(bob.enter(0).0.result, ResultCode::NONE);
    assert!(matches!(alice.recv(), Packet::RoomNewUserNotify(_)));
    (alice, bob)
}

pub mod scrape;
