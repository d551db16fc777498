//! `iocp-load chat`: many users log in to the chat server, enter rooms and chat; every member
//! must receive every message of its room, in each sender's order.
//!
//! Phases:
//!
//! 1. **Accounts** (with `--db`): the missing load-test accounts (`load0`, `load1`, ...) are
//!    created in the server's account file through the store of `iocp-packet`, with light
//!    Argon2id hashes — the running server shares the file (see `RedbStore`).
//! 2. **Login storm**: every user connects (`--connect-rate` per second) and logs in at once;
//!    `LOGIN_SERVER_BUSY` is retried after 50 ms. Reported: logins per second.
//! 3. **Rooms**: user *i* enters room *i* mod `--rooms`, so membership is known in advance and
//!    fixed while the chat runs.
//! 4. **Chat** for `--duration`: each user sends `--rate` messages per second (open loop, evenly
//!    spaced, starting at a random offset). A message's text carries the sender's sequence
//!    number and its send time, so a receiver checks each sender's order (no gap, no repeat)
//!    and measures the delivery latency.
//! 5. **Drain**: the senders publish how many they sent; every receiver must then reach exactly
//!    that count for every member of its room (itself included), within `--drain-timeout`.
//! 6. **One order**: each receiver folds the (sender, sequence) pairs it got, in the order it
//!    got them, into a hash; every member of a room must end with the same hash — the room had
//!    one order for all, the senders included.
//!
//! With several `--addr` (instances of `iocp-server chat --engine redis` sharing one Redis),
//! user *i* connects to instance (*i* / rooms) mod instances, so every room has members on
//! every instance and every message crosses instances.
//!
//! The client side is plain `mio`: `--threads` threads, each polling its share of the users'
//! sockets. The exit status is 1 if any login, room entry or chat request failed, a message was
//! lost, repeated or reordered, or the server closed a connection.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::cli::parse_duration;
use iocp_chat_protocol::{
    LoginRequest, MAX_CHAT_MSG_LEN, Packet, ResultCode, RoomChatRequest, RoomEnterRequest,
    TypedPacket,
};
use iocp_wire::{Decoder, Frame, MAX_FRAME_LEN};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

/// `iocp-load chat`.
#[derive(clap::Args, Debug, Clone)]
pub struct ChatArgs {
    /// Chat server address; give it several times for several instances sharing one Redis
    /// (the users are spread so that every room has members on each).
    #[arg(long = "addr", default_value = "127.0.0.1:11021", num_args = 1)]
    pub addr: Vec<SocketAddr>,
    /// Users to log in (ids `<prefix>0`, `<prefix>1`, ...).
    #[arg(long, default_value_t = 1000)]
    pub users: u32,
    /// Rooms to spread them over (user i enters room i mod rooms; the server needs at least
    /// this many rooms, each holding users/rooms members).
    #[arg(long, default_value_t = 100)]
    pub rooms: u32,
    /// How long to chat.
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Messages per second each user sends.
    #[arg(long, short = 'r', default_value_t = 2.0)]
    pub rate: f64,
    /// Bytes of text per message (at most 256; at least what the sequence and time take).
    #[arg(long, default_value_t = 64)]
    pub message_size: usize,
    /// User ids are this prefix followed by the user's number.
    #[arg(long, default_value = "load")]
    pub user_prefix: String,
    /// Password of every load-test account.
    #[arg(long, default_value = "load-pw")]
    pub password: String,
    /// The chat server's account file: create the missing load-test accounts in it first
    /// (light hashes). Without it, the accounts must exist.
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// Client threads.
    #[arg(long, short = 't', default_value_t = 2)]
    pub threads: u32,
    /// Connections opened per second (all threads together).
    #[arg(long, default_value_t = 5000.0)]
    pub connect_rate: f64,
    /// Give up on logging everyone in and entering the rooms after this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub setup_timeout: Duration,
    /// How long to wait after the chat for the last messages to arrive.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}

/// Runs the chat workload and prints the results; failure if anything was lost or refused.
pub fn run(args: &ChatArgs) -> ExitCode {
    match run_checked(args) {
        Ok(report) => {
            print!("{report}");
            if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("iocp-load chat: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Set-up

fn user_id(args: &ChatArgs, idx: u32) -> String {
    format!("{}{idx}", args.user_prefix)
}

fn check_args(args: &ChatArgs) -> Result<(), String> {
    if args.users == 0 || args.rooms == 0 || args.threads == 0 || args.addr.is_empty() {
        return Err("--users, --rooms, --threads and --addr must be at least 1".into());
    }
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        return Err("--rate must be a positive number".into());
    }
    if !(args.connect_rate > 0.0 && args.connect_rate.is_finite()) {
        return Err("--connect-rate must be a positive number".into());
    }
    if args.message_size < MIN_MESSAGE || args.message_size > MAX_CHAT_MSG_LEN {
        return Err(format!(
            "--message-size must be within {MIN_MESSAGE}..={MAX_CHAT_MSG_LEN}"
        ));
    }
    let longest = user_id(args, args.users - 1);
    if !iocp_chat_protocol::valid_user_id(&longest) {
        return Err(format!(
            "user ids like {longest:?} are not valid: shorten --user-prefix"
        ));
    }
    Ok(())
}

/// Creates the missing accounts in the account file.
fn create_accounts(args: &ChatArgs, db: &std::path::Path) -> Result<u32, String> {
    use iocp_accounts::{AccountStore, HashCost, RedbStore, hash_password};
    let store = RedbStore::open(db).map_err(|e| format!("{}: {e}", db.display()))?;
    let existing: std::collections::HashSet<String> = store
        .user_ids()
        .map_err(|e| e.to_string())?
        .into_iter()
        .collect();
    let mut new = Vec::new();
    for idx in 0..args.users {
        let id = user_id(args, idx);
        if !existing.contains(&id) {
            let hash = hash_password(&args.password, HashCost::LIGHT).map_err(|e| e.to_string())?;
            new.push((id, hash));
        }
    }
    for chunk in new.chunks(10_000) {
        store.insert_many(chunk, false).map_err(|e| e.to_string())?;
    }
    Ok(new.len() as u32)
}

// ---------------------------------------------------------------------------------------------
// The message text: "<seq> <send time in ns since the run's epoch> xxxx…"

/// The shortest message: two u64 in decimal and a space.
const MIN_MESSAGE: usize = 41;

fn message_text(seq: u64, sent_ns: u64, size: usize) -> String {
    let mut text = format!("{seq} {sent_ns} ");
    while text.len() < size {
        text.push('x');
    }
    text.truncate(size);
    text
}

fn parse_message(text: &str) -> Option<(u64, u64)> {
    let mut parts = text.split(' ');
    let seq = parts.next()?.parse().ok()?;
    let sent_ns = parts.next()?.parse().ok()?;
    Some((seq, sent_ns))
}

// ---------------------------------------------------------------------------------------------
// Shared state between the client threads and the main thread

const SETUP: u8 = 0;
const CHAT: u8 = 1;
const DRAIN: u8 = 2;

struct Shared {
    epoch: Instant,
    phase: AtomicU8,
    failed: AtomicBool,
    logged_in: AtomicU32,
    ready: AtomicU32,
    busy_retries: AtomicU64,
    /// Nanoseconds since the epoch of the last login response.
    last_login_ns: AtomicU64,
    /// When the chat started, in nanoseconds since the epoch.
    chat_start_ns: AtomicU64,
    /// Messages each user sent, final once `stopped` equals the thread count.
    sent: Vec<AtomicU64>,
    stopped: AtomicU32,
    errors: Mutex<Vec<String>>,
    error_count: AtomicU64,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn error(&self, fatal: bool, message: String) {
        if self.error_count.fetch_add(1, Ordering::Relaxed) < 20 {
            self.errors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(message);
        }
        if fatal {
            self.failed.store(true, Ordering::Relaxed);
        }
    }
}

/// What one thread measured.
struct ThreadResult {
    latency: Histogram<u64>,
    delivered: u64,
    responses: u64,
    /// Messages never received (a receiver short of a sender's count at the end).
    missing: u64,
    /// Each user's room and order hash (see `User::order`).
    orders: Vec<(u32, u32, u64)>,
    last_delivery_ns: u64,
}

// ---------------------------------------------------------------------------------------------
// One user's connection

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    NotConnected,
    Connecting,
    LoggingIn,
    Entering,
    Ready,
    Closed,
}

struct User {
    idx: u32,
    room: u32,
    stream: Option<TcpStream>,
    decoder: Decoder,
    out: Vec<u8>,
    state: State,
    retry_login_at: Option<Instant>,
    sent: u64,
    /// Next expected sequence number per sender (user index).
    expect: HashMap<u32, u64>,
    /// The (sender, sequence) pairs received, in order, folded into one hash (FNV-1a).
    order: u64,
}

/// Folds one received message into a receiver's order hash.
fn fold_order(hash: u64, sender: u32, seq: u64) -> u64 {
    let mut h = hash;
    for byte in u64::from(sender)
        .to_le_bytes()
        .into_iter()
        .chain(seq.to_le_bytes())
    {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl User {
    fn queue(&mut self, packet: &impl TypedPacket) {
        self.out.extend_from_slice(&packet.encode());
    }

    /// Writes what is queued; returns false if the connection failed.
    fn flush(&mut self) -> bool {
        let Some(stream) = self.stream.as_mut() else {
            return false;
        };
        while !self.out.is_empty() {
            match stream.write(&self.out) {
                Ok(0) => return false,
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }
}

// ---------------------------------------------------------------------------------------------
// The client thread

struct Client<'a> {
    args: &'a ChatArgs,
    shared: &'a Shared,
    users: Vec<User>,
    /// When each user sends next: (due, local index).
    schedule: BinaryHeap<Reverse<(Instant, usize)>>,
    result: ThreadResult,
    password: String,
}

impl Client<'_> {
    fn user_idx(&self, name: &str) -> Option<u32> {
        name.strip_prefix(&self.args.user_prefix)?.parse().ok()
    }

    fn handle(&mut self, i: usize, packet: Packet) {
        let shared = self.shared;
        let user = &mut self.users[i];
        match packet {
            Packet::LoginResponse(r) if r.result.is_ok() && user.state == State::LoggingIn => {
                shared.logged_in.fetch_add(1, Ordering::Relaxed);
                shared
                    .last_login_ns
                    .fetch_max(shared.now_ns(), Ordering::Relaxed);
                user.state = State::Entering;
                let room = user.room as i32;
                user.queue(&RoomEnterRequest { room_number: room });
            }
            // The server is busy, or throttles the load generator's address (all its users
            // log in from one): try again a little later.
            Packet::LoginResponse(r)
                if r.result == ResultCode::LOGIN_SERVER_BUSY
                    || r.result == ResultCode::LOGIN_TOO_MANY_ATTEMPTS =>
            {
                shared.busy_retries.fetch_add(1, Ordering::Relaxed);
                user.retry_login_at = Some(Instant::now() + Duration::from_millis(50));
            }
            Packet::LoginResponse(r) => {
                let hint = if r.result == ResultCode::LOGIN_USER_INVALID_PW {
                    " (create the accounts with --db PATH, or check --password)"
                } else {
                    ""
                };
                shared.error(
                    true,
                    format!("login of user {}: {}{hint}", user.idx, r.result),
                );
            }
            Packet::RoomEnterResponse(r) if r.result.is_ok() && user.state == State::Entering => {
                user.state = State::Ready;
                shared.ready.fetch_add(1, Ordering::Relaxed);
            }
            Packet::RoomEnterResponse(r) => {
                let hint = if r.result == ResultCode::ENTER_ROOM_FULL_USER {
                    " (the server's --room-capacity is below users/rooms)"
                } else if r.result == ResultCode::ROOM_INVALID_INDEX {
                    " (the server has fewer rooms than --rooms)"
                } else {
                    ""
                };
                shared.error(
                    true,
                    format!(
                        "user {} entering room {}: {}{hint}",
                        user.idx, user.room, r.result
                    ),
                );
            }
            Packet::RoomChatResponse(r) if r.result.is_ok() => self.result.responses += 1,
            Packet::RoomChatResponse(r) => {
                shared.error(true, format!("chat of user {}: {}", user.idx, r.result));
            }
            Packet::RoomChatNotify(n) => {
                let now = shared.now_ns();
                let Some(sender) = self.user_idx(&n.user_id) else {
                    shared.error(true, format!("notify from a stranger: {:?}", n.user_id));
                    return;
                };
                let user = &mut self.users[i];
                let text = n.message_text();
                let Some((seq, sent_ns)) = parse_message(&text) else {
                    shared.error(true, format!("user {}: garbled message {text:?}", user.idx));
                    return;
                };
                if sender % self.args.rooms != user.room {
                    shared.error(
                        true,
                        format!(
                            "user {} (room {}) got a message of room {}",
                            user.idx,
                            user.room,
                            sender % self.args.rooms
                        ),
                    );
                }
                let expected = user.expect.entry(sender).or_insert(0);
                if seq != *expected {
                    shared.error(
                        true,
                        format!(
                            "user {} got message {seq} of user {sender}, expected {}",
                            user.idx, *expected
                        ),
                    );
                }
                *expected = seq + 1;
                user.order = fold_order(user.order, sender, seq);
                self.result.delivered += 1;
                self.result.last_delivery_ns = now;
                self.result
                    .latency
                    .saturating_record(now.saturating_sub(sent_ns).max(1));
            }
            // Arrivals, departures and member lists of the set-up phase.
            Packet::RoomUserListNotify(_)
            | Packet::RoomNewUserNotify(_)
            | Packet::RoomLeaveUserNotify(_) => {}
            other => shared.error(true, format!("user {}: unexpected {other:?}", user.idx)),
        }
    }

    /// Reads what arrived for user `i` and handles every whole packet.
    fn read(&mut self, i: usize, buf: &mut [u8]) {
        loop {
            let user = &mut self.users[i];
            let Some(stream) = user.stream.as_mut() else {
                return;
            };
            let n = match stream.read(buf) {
                Ok(0) => {
                    self.closed(i, "the server closed the connection".into());
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.closed(i, e.to_string());
                    return;
                }
            };
            let mut frames = Vec::new();
            if let Err(e) = user
                .decoder
                .decode(&buf[..n], |f| frames.push(f.as_bytes().to_vec()))
            {
                self.closed(i, format!("bad frame from the server: {e}"));
                return;
            }
            for bytes in frames {
                let Ok(Some((frame, _))) = Frame::parse(&bytes, MAX_FRAME_LEN) else {
                    continue;
                };
                match Packet::decode(&frame) {
                    Ok(packet) => self.handle(i, packet),
                    Err(e) => self
                        .shared
                        .error(true, format!("bad packet from the server: {e}")),
                }
            }
            // What the packets asked to send (a room entry after the login).
            if !self.users[i].flush() {
                self.closed(i, "write failed".into());
                return;
            }
        }
    }

    fn closed(&mut self, i: usize, why: String) {
        let user = &mut self.users[i];
        if user.state != State::Closed {
            user.state = State::Closed;
            user.stream = None;
            self.shared
                .error(true, format!("user {}: connection lost: {why}", user.idx));
        }
    }

    fn send_login(&mut self, i: usize) {
        let user = &mut self.users[i];
        user.state = State::LoggingIn;
        user.queue(&LoginRequest {
            user_id: format!("{}{}", self.args.user_prefix, user.idx),
            password: self.password.clone(),
        });
        if !user.flush() {
            self.closed(i, "write failed".into());
        }
    }

    /// Whether every member of every local user's room has been heard to its last message.
    fn complete(&self) -> bool {
        let shared = self.shared;
        self.users.iter().all(|u| {
            members(u.room, self.args.users, self.args.rooms).all(|s| {
                let sent = shared.sent[s as usize].load(Ordering::Relaxed);
                u.expect.get(&s).copied().unwrap_or(0) >= sent
            })
        })
    }

    fn missing(&self) -> u64 {
        let shared = self.shared;
        self.users
            .iter()
            .map(|u| {
                members(u.room, self.args.users, self.args.rooms)
                    .map(|s| {
                        let sent = shared.sent[s as usize].load(Ordering::Relaxed);
                        sent.saturating_sub(u.expect.get(&s).copied().unwrap_or(0))
                    })
                    .sum::<u64>()
            })
            .sum()
    }
}

/// The users in `room`.
fn members(room: u32, users: u32, rooms: u32) -> impl Iterator<Item = u32> {
    (room..users).step_by(rooms as usize)
}

/// A small deterministic generator (xorshift64*), for the send offsets.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

fn client_thread(args: &ChatArgs, shared: &Shared, thread: u32) -> io::Result<ThreadResult> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let users: Vec<User> = (thread..args.users)
        .step_by(args.threads as usize)
        .map(|idx| User {
            idx,
            room: idx % args.rooms,
            stream: None,
            decoder: Decoder::with_max_frame_len(MAX_FRAME_LEN),
            out: Vec::new(),
            state: State::NotConnected,
            retry_login_at: None,
            sent: 0,
            expect: HashMap::new(),
            order: 0xcbf2_9ce4_8422_2325,
        })
        .collect();
    let mut client = Client {
        args,
        shared,
        users,
        schedule: BinaryHeap::new(),
        result: ThreadResult {
            latency: Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds"),
            delivered: 0,
            responses: 0,
            missing: 0,
            orders: Vec::new(),
            last_delivery_ns: 0,
        },
        password: args.password.clone(),
    };
    let connect_interval = Duration::from_secs_f64(1.0 / args.connect_rate);
    let send_interval = Duration::from_secs_f64(1.0 / args.rate);
    let start = Instant::now();
    let mut next_connect = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(thread + 1);
    let mut chat_started = false;
    let mut stopped_sending = false;
    let mut drain_deadline = None;

    loop {
        if shared.failed.load(Ordering::Relaxed) {
            break;
        }
        let now = Instant::now();
        // Connect the next users whose time has come (global rate, spread over threads).
        while next_connect < client.users.len() {
            let global = next_connect as u32 * args.threads + thread;
            let due = start + connect_interval * global;
            if due > now {
                break;
            }
            let i = next_connect;
            next_connect += 1;
            let idx = client.users[i].idx;
            let addr = args.addr[((idx / args.rooms) as usize) % args.addr.len()];
            let mut stream = TcpStream::connect(addr)?;
            poll.registry().register(
                &mut stream,
                Token(i),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            let user = &mut client.users[i];
            user.stream = Some(stream);
            user.state = State::Connecting;
        }
        // Logins to retry.
        for i in 0..client.users.len() {
            if client.users[i].retry_login_at.is_some_and(|t| t <= now) {
                client.users[i].retry_login_at = None;
                client.send_login(i);
            }
        }
        let phase = shared.phase.load(Ordering::Acquire);
        if phase == CHAT && !chat_started {
            chat_started = true;
            for i in 0..client.users.len() {
                let offset = send_interval.mul_f64((next_random(&mut rng) % 1000) as f64 / 1000.0);
                client.schedule.push(Reverse((now + offset, i)));
            }
        }
        if phase == CHAT {
            while let Some(&Reverse((due, i))) = client.schedule.peek() {
                if due > now {
                    break;
                }
                client.schedule.pop();
                let user = &mut client.users[i];
                let text = message_text(user.sent, shared.now_ns(), args.message_size);
                user.queue(&RoomChatRequest::text(&text));
                user.sent += 1;
                if !user.flush() {
                    client.closed(i, "write failed".into());
                }
                // Open loop: the next one is due one interval after this one was due.
                let next = (due + send_interval).max(now - send_interval * 10);
                client.schedule.push(Reverse((next, i)));
            }
        }
        if phase == DRAIN && !stopped_sending {
            stopped_sending = true;
            client.schedule.clear();
            for u in &client.users {
                shared.sent[u.idx as usize].store(u.sent, Ordering::Relaxed);
            }
            shared.stopped.fetch_add(1, Ordering::AcqRel);
            drain_deadline = Some(now + args.drain_timeout);
        }
        if stopped_sending && shared.stopped.load(Ordering::Acquire) == args.threads {
            if client.complete() {
                break;
            }
            if drain_deadline.is_some_and(|d| now >= d) {
                break;
            }
        }

        let mut timeout = Duration::from_millis(5);
        if let Some(Reverse((due, _))) = client.schedule.peek() {
            timeout = timeout.min(due.saturating_duration_since(now));
        }
        poll.poll(&mut events, Some(timeout))?;
        for event in &events {
            let i = event.token().0;
            if event.is_writable() {
                let user = &mut client.users[i];
                if user.state == State::Connecting {
                    let connected = user.stream.as_ref().is_some_and(|s| {
                        s.take_error().ok().flatten().is_none() && s.peer_addr().is_ok()
                    });
                    if connected {
                        if let Some(s) = user.stream.as_ref() {
                            let _ = s.set_nodelay(true);
                        }
                        client.send_login(i);
                    } else if event.is_error() || event.is_write_closed() {
                        client.closed(i, "connect failed".into());
                    }
                } else if !user.flush() {
                    client.closed(i, "write failed".into());
                }
            }
            if event.is_readable() || event.is_read_closed() {
                client.read(i, &mut buf);
            }
        }
    }
    if !stopped_sending {
        // Failed before the drain: publish what was sent anyway.
        for u in &client.users {
            shared.sent[u.idx as usize].store(u.sent, Ordering::Relaxed);
        }
        shared.stopped.fetch_add(1, Ordering::AcqRel);
    }
    client.result.missing = client.missing();
    client.result.orders = client
        .users
        .iter()
        .map(|u| (u.room, u.idx, u.order))
        .collect();
    Ok(client.result)
}

// ---------------------------------------------------------------------------------------------
// The run

/// The results of a run.
struct Report {
    instances: usize,
    users: u32,
    logged_in: u32,
    rooms: u32,
    connect_rate: f64,
    created: u32,
    login_secs: f64,
    busy_retries: u64,
    chat_secs: f64,
    sent: u64,
    responses: u64,
    delivered: u64,
    expected: u64,
    missing: u64,
    deliver_secs: f64,
    latency: Histogram<u64>,
    errors: Vec<String>,
    error_count: u64,
}

impl Report {
    fn ok(&self) -> bool {
        self.error_count == 0 && self.missing == 0 && self.delivered == self.expected
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |ns: u64| ns as f64 / 1e6;
        if self.created > 0 {
            writeln!(f, "accounts: {} created", self.created)?;
        }
        if self.logged_in < self.users {
            writeln!(
                f,
                "logins:   {} of {} users logged in ({} busy retries)",
                self.logged_in, self.users, self.busy_retries
            )?;
        } else {
            writeln!(
                f,
                "logins:   {} users in {:.2} s = {:.0} logins/s (connects paced at {:.0}/s; {} busy retries), in {} rooms",
                self.users,
                self.login_secs,
                self.users as f64 / self.login_secs.max(1e-9),
                self.connect_rate,
                self.busy_retries,
                self.rooms
            )?;
        }
        writeln!(
            f,
            "chat:     {} messages sent in {:.2} s ({} answered), {} of {} notifies delivered = {:.0} delivered/s",
            self.sent,
            self.chat_secs,
            self.responses,
            self.delivered,
            self.expected,
            self.delivered as f64 / self.deliver_secs.max(1e-9)
        )?;
        if !self.latency.is_empty() {
            writeln!(
                f,
                "latency:  p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms (send to delivery)",
                ms(self.latency.value_at_quantile(0.5)),
                ms(self.latency.value_at_quantile(0.99)),
                ms(self.latency.value_at_quantile(0.999)),
                ms(self.latency.max())
            )?;
        }
        if self.ok() {
            writeln!(
                f,
                "verified: every member got every message of its room, in one order for the whole room ({} instance{})",
                self.instances,
                if self.instances == 1 { "" } else { "s" }
            )
        } else {
            writeln!(
                f,
                "FAILED:   {} errors, {} notifies missing",
                self.error_count, self.missing
            )?;
            for e in &self.errors {
                writeln!(f, "  {e}")?;
            }
            Ok(())
        }
    }
}

fn run_checked(args: &ChatArgs) -> Result<Report, String> {
    check_args(args)?;
    let created = match &args.db {
        Some(db) => create_accounts(args, db)?,
        None => 0,
    };
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        phase: AtomicU8::new(SETUP),
        failed: AtomicBool::new(false),
        logged_in: AtomicU32::new(0),
        ready: AtomicU32::new(0),
        busy_retries: AtomicU64::new(0),
        last_login_ns: AtomicU64::new(0),
        chat_start_ns: AtomicU64::new(0),
        sent: (0..args.users).map(|_| AtomicU64::new(0)).collect(),
        stopped: AtomicU32::new(0),
        errors: Mutex::new(Vec::new()),
        error_count: AtomicU64::new(0),
    });
    let threads = args.threads.min(args.users);
    let args = Arc::new(ChatArgs {
        threads,
        ..args.clone()
    });
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (args, shared) = (args.clone(), shared.clone());
            std::thread::Builder::new()
                .name(format!("chat-load-{t}"))
                .spawn(move || client_thread(&args, &shared, t))
                .map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;

    // Set-up: everyone logged in and in their room.
    let deadline = Instant::now() + args.setup_timeout;
    while shared.ready.load(Ordering::Relaxed) < args.users
        && !shared.failed.load(Ordering::Relaxed)
    {
        if Instant::now() > deadline {
            shared.error(
                true,
                format!(
                    "set-up timed out: {} of {} logged in, {} in their room",
                    shared.logged_in.load(Ordering::Relaxed),
                    args.users,
                    shared.ready.load(Ordering::Relaxed)
                ),
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let login_secs = shared.last_login_ns.load(Ordering::Relaxed) as f64 / 1e9;
    // The chat.
    if !shared.failed.load(Ordering::Relaxed) {
        // Let the last room notifications land first.
        std::thread::sleep(Duration::from_millis(100));
        shared
            .chat_start_ns
            .store(shared.now_ns(), Ordering::Relaxed);
        shared.phase.store(CHAT, Ordering::Release);
        // One line for whoever measures the chat phase alone (bench/scaling.py).
        eprintln!(
            "iocp-load chat: {} users in their rooms: chatting for {:?}",
            args.users, args.duration
        );
        let end = Instant::now() + args.duration;
        while Instant::now() < end && !shared.failed.load(Ordering::Relaxed) {
            std::thread::sleep(
                Duration::from_millis(10).min(end.saturating_duration_since(Instant::now())),
            );
        }
    }
    let chat_end_ns = shared.now_ns();
    shared.phase.store(DRAIN, Ordering::Release);

    let mut latency = Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds");
    let (mut delivered, mut responses, mut missing, mut last_delivery) = (0, 0, 0, 0);
    let mut orders = Vec::new();
    for h in handles {
        match h.join() {
            Ok(Ok(r)) => {
                latency.add(&r.latency).expect("same bounds");
                delivered += r.delivered;
                responses += r.responses;
                missing += r.missing;
                orders.extend(r.orders);
                last_delivery = last_delivery.max(r.last_delivery_ns);
            }
            Ok(Err(e)) => shared.error(true, format!("client thread: {e}")),
            Err(_) => shared.error(true, "a client thread panicked".into()),
        }
    }
    // One order per room: every member folded the same sequence.
    let mut first: HashMap<u32, (u32, u64)> = HashMap::new();
    let mut disagree = 0u32;
    for (room, idx, order) in orders {
        let (first_idx, first_order) = *first.entry(room).or_insert((idx, order));
        if order != first_order {
            disagree += 1;
            if disagree <= 3 {
                shared.error(
                    true,
                    format!(
                        "room {room}: user {idx} got its messages in another order than user {first_idx}"
                    ),
                );
            }
        }
    }
    let chat_start_ns = shared.chat_start_ns.load(Ordering::Relaxed);
    let sent: u64 = shared.sent.iter().map(|s| s.load(Ordering::Relaxed)).sum();
    // Every message goes to every member of its sender's room.
    let expected: u64 = (0..args.users)
        .map(|s| {
            let room_size = members(s % args.rooms, args.users, args.rooms).count() as u64;
            shared.sent[s as usize].load(Ordering::Relaxed) * room_size
        })
        .sum();
    let errors = shared
        .errors
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Ok(Report {
        instances: args.addr.len(),
        users: args.users,
        logged_in: shared.logged_in.load(Ordering::Relaxed),
        rooms: args.rooms,
        connect_rate: args.connect_rate,
        created,
        login_secs,
        busy_retries: shared.busy_retries.load(Ordering::Relaxed),
        chat_secs: chat_end_ns.saturating_sub(chat_start_ns) as f64 / 1e9,
        sent,
        responses,
        delivered,
        expected,
        missing,
        deliver_secs: last_delivery.saturating_sub(chat_start_ns) as f64 / 1e9,
        latency,
        errors,
        error_count: shared.error_count.load(Ordering::Relaxed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_order_hash_tells_orders_apart() {
        let start = 0xcbf2_9ce4_8422_2325;
        let ab = fold_order(fold_order(start, 1, 0), 2, 0);
        let ba = fold_order(fold_order(start, 2, 0), 1, 0);
        assert_ne!(ab, ba);
        assert_eq!(ab, fold_order(fold_order(start, 1, 0), 2, 0));
        assert_ne!(fold_order(start, 1, 1), fold_order(start, 1, 2));
    }

    #[test]
    fn message_text_roundtrips() {
        let text = message_text(12, 3_456_789, 64);
        assert_eq!(text.len(), 64);
        assert_eq!(parse_message(&text), Some((12, 3_456_789)));
        let longest = message_text(u64::MAX, u64::MAX, MIN_MESSAGE);
        assert_eq!(parse_message(&longest), Some((u64::MAX, u64::MAX)));
        assert_eq!(parse_message("garbage"), None);
    }

    #[test]
    fn rooms_are_fixed_by_index() {
        assert_eq!(members(1, 10, 4).collect::<Vec<_>>(), [1, 5, 9]);
        assert_eq!(members(3, 10, 4).collect::<Vec<_>>(), [3, 7]);
        let total: usize = (0..4).map(|r| members(r, 10, 4).count()).sum();
        assert_eq!(total, 10);
    }

    #[test]
    fn args_are_checked() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            chat: ChatArgs,
        }
        let cli = Cli::parse_from(["x", "--users", "10", "--rooms", "3", "--duration", "1s"]);
        assert!(check_args(&cli.chat).is_ok());
        let cli = Cli::parse_from(["x", "--message-size", "300"]);
        assert!(check_args(&cli.chat).is_err());
        let cli = Cli::parse_from(["x", "--user-prefix", "a-prefix-longer-than-thirty-bytes"]);
        assert!(check_args(&cli.chat).is_err());
    }
}
