//! Every byte reaches the session it was sent to: many sessions answered in one turn while the
//! submission queue fills, clients that connect while the server starts, and sends, broadcasts,
//! closes and slot reuse racing from other threads.

mod support;

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iocp_server::{BackendChoice, Config, Context, Handler, SessionId};
use iocp_wire::{Decoder, encode};
use support::*;

/// A session's id as 8 bytes: the hello each client gets first, and the tag of every message.
fn id_bytes(session: SessionId) -> [u8; 8] {
    let mut b = [0; 8];
    b[..4].copy_from_slice(&session.index.to_le_bytes());
    b[4..].copy_from_slice(&session.generation.to_le_bytes());
    b
}

/// Message `seq` for `owner`: its id, `seq`, a length, and that many bytes that depend on all
/// three, so a message sent to the wrong session or cut anywhere is told apart.
fn tagged(owner: [u8; 8], seq: u32) -> Vec<u8> {
    let index = u32::from_le_bytes(owner[..4].try_into().unwrap());
    let len = 1 + (index.wrapping_mul(7) + seq.wrapping_mul(13)) as usize % 300;
    let mut m = Vec::with_capacity(16 + len);
    m.extend_from_slice(&owner);
    m.extend_from_slice(&seq.to_le_bytes());
    m.extend_from_slice(&(len as u32).to_le_bytes());
    m.extend((0..len).map(|i| (index as usize ^ seq as usize ^ i) as u8));
    m
}

/// Greets each session with its id; on `go` from any session, queues `messages(i)` messages for
/// the `i`-th session — all in one callback, so that the next submission holds a send for every
/// session, a gathering one for each session with more than one message.
struct Fanout {
    sessions: Mutex<Vec<SessionId>>,
    messages: fn(usize) -> u32,
}

impl Handler for Fanout {
    type Session = ();

    fn on_connect(&self, ctx: &mut Context<'_>, session: SessionId, _: SocketAddr) {
        self.sessions.lock().unwrap().push(session);
        ctx.send(session, &id_bytes(session)).unwrap();
    }

    fn on_receive(&self, ctx: &mut Context<'_>, _: SessionId, data: &[u8]) {
        assert_eq!(data, b"go");
        let sessions = self.sessions.lock().unwrap().clone();
        for (i, &session) in sessions.iter().enumerate() {
            for seq in 0..(self.messages)(i) {
                ctx.send(session, &tagged(id_bytes(session), seq)).unwrap();
            }
        }
    }
}

/// `clients` sessions on one worker with `ring_entries` submission entries all get their own
/// messages, and nothing else.
fn fan_out(backend: BackendChoice, ring_entries: u32, clients: usize, messages: fn(usize) -> u32) {
    let mut config = config(backend);
    config.workers = 1;
    config.ring_entries = ring_entries;
    // Room in the descriptor limit (raised to fit the sessions) for the clients' ends too.
    config.max_sessions = 2 * clients as u32 + 64;
    let server = start(
        config,
        Fanout {
            sessions: Mutex::default(),
            messages,
        },
    );
    let addr = server.local_addr();
    let mut streams = Vec::with_capacity(clients);
    let mut ids = Vec::with_capacity(clients);
    for _ in 0..clients {
        let mut s = connect(addr);
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut id = [0; 8];
        s.read_exact(&mut id).expect("the hello");
        streams.push(s);
        ids.push(id);
    }
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        clients,
        "ids are unique"
    );
    streams[0].write_all(b"go").unwrap();
    for (i, (stream, id)) in streams.iter_mut().zip(&ids).enumerate() {
        for seq in 0..messages(i) {
            let want = tagged(*id, seq);
            let mut got = vec![0; want.len()];
            if let Err(e) = stream.read_exact(&mut got) {
                panic!("client {i}: message {seq} did not arrive: {e}");
            }
            if got != want {
                let from = u32::from_le_bytes(got[..4].try_into().unwrap());
                panic!(
                    "client {i} (slot {}): message {seq} is not its own (tagged for slot {from})",
                    u32::from_le_bytes(id[..4].try_into().unwrap())
                );
            }
        }
    }
    // Nothing more for anyone.
    std::thread::sleep(Duration::from_millis(100));
    for (i, stream) in streams.iter_mut().enumerate() {
        stream.set_nonblocking(true).unwrap();
        match stream.read(&mut [0; 64]) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            other => panic!("client {i}: unexpected {other:?}"),
        }
    }
    drop(streams);
    stop_within(server, Duration::from_secs(10));
}

/// A submission queue of 8 entries fills many times over while 17, then 300 sessions are
/// answered with gathering sends in one turn.
fn gathered_sends_with_a_tiny_ring_reach_their_owners(backend: BackendChoice) {
    let first_one_others_two = |i| if i == 0 { 1 } else { 2 };
    fan_out(backend, 8, 17, first_one_others_two);
    fan_out(backend, 8, 300, first_one_others_two);
}

/// The default queue (1,024 entries) fills in the middle of a turn that answers 1,200 sessions:
/// the 1,025th entry is a gathering send (the 129th), and more than 128 follow it.
fn gathered_sends_with_the_default_ring_reach_their_owners(backend: BackendChoice) {
    fan_out(backend, Config::default().ring_entries, 1200, |i| {
        if i % 8 == 0 || i > 1024 { 2 } else { 1 }
    });
}

/// A free port on loopback, for a server that must be reached while it starts.
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Clients that connect in a loop while `Server::start` runs — some of them before the last
/// worker exists — all get their echo, and shutdown ends within a second.
fn clients_connecting_during_start_are_served(backend: BackendChoice) {
    let addr = free_port();
    let stop = Arc::new(AtomicBool::new(false));
    let connected = Arc::new(AtomicUsize::new(0));
    let dialers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, connected) = (stop.clone(), connected.clone());
            std::thread::spawn(move || {
                let mut streams = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(20);
                // Fewer than the pool's 1,024 slots, so that none is refused.
                while !stop.load(Ordering::Relaxed)
                    && Instant::now() < deadline
                    && connected.load(Ordering::Relaxed) < 600
                {
                    match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                        Ok(s) => {
                            connected.fetch_add(1, Ordering::Relaxed);
                            streams.push(s);
                        }
                        Err(_) => std::thread::sleep(Duration::from_micros(200)),
                    }
                }
                streams
            })
        })
        .collect();
    let mut config = config(backend);
    config.addr = addr;
    config.workers = 8;
    let server = start(config, RecordingEcho(Arc::default()));
    // Keep dialling a little after the start, then check every connection made.
    let started = connected.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(50));
    stop.store(true, Ordering::Relaxed);
    let mut streams: Vec<TcpStream> = dialers
        .into_iter()
        .flat_map(|d| d.join().unwrap())
        .collect();
    assert!(!streams.is_empty(), "no client connected");
    for (i, s) in streams.iter_mut().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let msg = format!("client {i}");
        s.write_all(msg.as_bytes()).unwrap();
        let mut back = vec![0; msg.len()];
        if let Err(e) = s.read_exact(&mut back) {
            panic!(
                "client {i} of {} ({started} connected before start returned): no echo: {e}",
                streams.len()
            );
        }
        assert_eq!(back, msg.as_bytes());
    }
    drop(streams);
    stop_within(server, Duration::from_secs(1));
}

const ECHO: u16 = 1;
const PUSH: u16 = 2;
const BROADCAST: u16 = 3;
const HELLO: u16 = 4;

/// Greets each session with its id, echoes whole frames, and keeps the open sessions for the
/// test's foreign threads.
struct Tagger {
    decoders: Mutex<std::collections::HashMap<SessionId, Decoder>>,
}

impl Handler for Tagger {
    type Session = ();

    fn on_connect(&self, ctx: &mut Context<'_>, session: SessionId, _: SocketAddr) {
        let _ = ctx.send_bytes(session, encode(HELLO, 0, &id_bytes(session)).unwrap());
    }

    fn on_receive(&self, ctx: &mut Context<'_>, session: SessionId, data: &[u8]) {
        let mut frames = Vec::new();
        let mut decoders = self.decoders.lock().unwrap();
        decoders
            .entry(session)
            .or_default()
            .decode(data, |f| frames.push(f.as_bytes().to_vec()))
            .expect("well-formed frames");
        drop(decoders);
        for frame in frames {
            let _ = ctx.send(session, &frame);
        }
    }

    fn on_close(&self, _: &mut Context<'_>, session: SessionId, _: iocp_server::CloseReason) {
        self.decoders.lock().unwrap().remove(&session);
    }
}

/// The broadcast body of round `seq`.
fn broadcast_body(seq: u64) -> Vec<u8> {
    let mut b = seq.to_le_bytes().to_vec();
    b.extend((0..(seq % 97) as usize).map(|i| (seq as usize + i) as u8));
    b
}

/// Clients connect, echo, get closed by the server or leave, and reconnect into reused slots,
/// while other threads send to every listed session by id, broadcast, and close sessions at
/// random. Each client checks that every frame it receives is whole, its own (tagged with its
/// own id and generation), or a broadcast, or its echo in order.
fn racing_sends_closes_and_reuse_never_cross_sessions(backend: BackendChoice) {
    let mut config = config(backend);
    config.max_sessions = 48;
    config.linger = Duration::from_millis(500);
    // A small submission queue, so that it fills in the middle of a turn again and again.
    config.ring_entries = 16;
    let server = start(
        config,
        Tagger {
            decoders: Mutex::default(),
        },
    );
    let addr = server.local_addr();
    let handle = server.handle();
    let stop = Arc::new(AtomicBool::new(false));
    let pushed = Arc::new(AtomicU64::new(0));
    let closed_by_server = Arc::new(AtomicU64::new(0));
    let foreign: Vec<_> = (0..3)
        .map(|t| {
            let (handle, stop, pushed, closed) = (
                handle.clone(),
                stop.clone(),
                pushed.clone(),
                closed_by_server.clone(),
            );
            std::thread::spawn(move || {
                let mut rng = Rng::new(1000 + t);
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    let sessions = handle.sessions();
                    match t {
                        0 => {
                            for s in sessions {
                                let body = tagged(id_bytes(s), seq as u32);
                                if handle
                                    .send_bytes(s, encode(PUSH, 0, &body).unwrap())
                                    .is_ok()
                                {
                                    pushed.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        1 => handle.broadcast(encode(BROADCAST, 0, &broadcast_body(seq)).unwrap()),
                        _ => {
                            if !sessions.is_empty() && rng.next_u64() % 4 == 0 {
                                let s = sessions[rng.next_u64() as usize % sessions.len()];
                                if handle.close(s).is_ok() {
                                    closed.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_micros(300));
                }
            })
        })
        .collect();

    let deadline = Instant::now() + Duration::from_secs(8);
    let clients: Vec<_> = (0..32u64)
        .map(|c| {
            std::thread::spawn(move || {
                let mut rng = Rng::new(c);
                let mut checked = 0u64;
                while Instant::now() < deadline {
                    checked += client_life(addr, &mut rng, c);
                }
                checked
            })
        })
        .collect();
    let checked: u64 = clients.into_iter().map(|c| c.join().unwrap()).sum();
    stop.store(true, Ordering::Relaxed);
    for f in foreign {
        f.join().unwrap();
    }
    assert!(checked > 0, "no frame was checked");
    assert!(pushed.load(Ordering::Relaxed) > 0, "no send by id went out");
    assert!(
        closed_by_server.load(Ordering::Relaxed) > 0,
        "no close raced the clients"
    );
    let stats = handle.stats();
    assert!(
        stats.accepted > stats.open() + 48,
        "slots were reused: {stats:?}"
    );
    stop_within(server, Duration::from_secs(10));
}

/// One connection of a stress client: hello, some echoes (checking every frame on the way), then
/// either leave or be closed by the server. Returns the frames checked.
fn client_life(addr: SocketAddr, rng: &mut Rng, client: u64) -> u64 {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, IO_TIMEOUT) else {
        return 0;
    };
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut reader = stream.try_clone().unwrap();
    let mut decoder = Decoder::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut me: Option<[u8; 8]> = None;
    let mut sent: std::collections::VecDeque<Vec<u8>> = Default::default();
    let rounds = 1 + rng.next_u64() % 20;
    let mut checked = 0;
    let mut last_broadcast = 0;
    let mut writing = true;
    let mut round = 0;
    loop {
        if writing && me.is_some() && sent.is_empty() {
            if round == rounds {
                let _ = stream.shutdown(std::net::Shutdown::Write);
                writing = false;
            } else {
                round += 1;
                let body = rng.message(3000);
                // The server may have closed this session already: then the write may fail.
                if stream.write_all(&encode(ECHO, 0, &body).unwrap()).is_err() {
                    writing = false;
                }
                sent.push_back(body);
            }
        }
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("client {client}: {e}"),
        };
        decoder
            .decode(&buf[..n], |frame| {
                checked += 1;
                match frame.id() {
                    HELLO => {
                        assert!(me.is_none(), "client {client}: a second hello");
                        me = Some(frame.body().try_into().unwrap());
                    }
                    ECHO => {
                        let want = sent.pop_front().expect("an echo of something sent");
                        assert!(frame.body() == want, "client {client}: echo garbled");
                    }
                    PUSH => {
                        let me = me.expect("the hello comes first");
                        let body = frame.body();
                        assert_eq!(
                            body[..8],
                            me,
                            "client {client}: got a message sent to another session"
                        );
                        let seq = u32::from_le_bytes(body[8..12].try_into().unwrap());
                        assert!(body == tagged(me, seq), "client {client}: push garbled");
                    }
                    BROADCAST => {
                        let body = frame.body();
                        let seq = u64::from_le_bytes(body[..8].try_into().unwrap());
                        assert!(
                            body == broadcast_body(seq),
                            "client {client}: broadcast garbled"
                        );
                        assert!(
                            seq > last_broadcast,
                            "client {client}: broadcasts out of order"
                        );
                        last_broadcast = seq;
                    }
                    other => panic!("client {client}: unknown frame {other}"),
                }
            })
            .unwrap_or_else(|e| panic!("client {client}: bad frame: {e}"));
    }
    // A close may cut the last frame only if the server closed abortively; it closes gracefully.
    assert_eq!(
        decoder.buffered_len(),
        0,
        "client {client}: a frame was cut short"
    );
    checked
}

backend_tests!(
    gathered_sends_with_a_tiny_ring_reach_their_owners,
    gathered_sends_with_the_default_ring_reach_their_owners,
    clients_connecting_during_start_are_served,
    racing_sends_closes_and_reuse_never_cross_sessions,
);
