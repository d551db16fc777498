//! The logic-thread mode on loopback: system packets in order with the data, the bounded
//! queue's back-pressure (both policies), bad input, and stopping.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};

use iocp_packet::{
    BadPacket, Logic, LogicContext, LogicPackets, LogicServer, PacketError, PacketOptions,
    PacketResult, QueueOptions, WhenFull,
};
use iocp_server::{CloseReason, SessionId};
use iocp_wire::Frame;
use support::{Client, config, eventually};

const PING: u16 = 1;
const PONG: u16 = 2;
const REFUSE: u16 = 3;
const PANIC: u16 = 4;

/// A gate the test opens; the logic thread waits at it before each packet while it is shut.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    fn shut() -> Gate {
        Gate::default()
    }
    fn opened() -> Gate {
        let gate = Gate::default();
        gate.open();
        gate
    }
    fn open(&self) {
        *self.0.0.lock().unwrap() = true;
        self.0.1.notify_all();
    }
    fn pass(&self) {
        let mut open = self.0.0.lock().unwrap();
        while !*open {
            open = self.0.1.wait(open).unwrap();
        }
    }
}

/// What the logic saw, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    Connect(SessionId),
    Ping(SessionId, u32),
    Disconnect(SessionId, CloseReason),
    Message(u32),
}

/// Logic that answers each `PING seq` with `PONG seq`, recording everything.
struct Recorder {
    gate: Gate,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Logic for Recorder {
    type Message = u32;
    fn on_connect(&mut self, _: &mut LogicContext<'_>, session: SessionId, _: SocketAddr) {
        self.seen.lock().unwrap().push(Seen::Connect(session));
    }
    fn on_disconnect(&mut self, _: &mut LogicContext<'_>, session: SessionId, reason: CloseReason) {
        self.seen
            .lock()
            .unwrap()
            .push(Seen::Disconnect(session, reason));
    }
    fn on_message(&mut self, _: &mut LogicContext<'_>, message: u32) {
        self.seen.lock().unwrap().push(Seen::Message(message));
    }
}

impl Recorder {
    fn ping(
        &mut self,
        ctx: &mut LogicContext<'_>,
        session: SessionId,
        frame: Frame<'_>,
    ) -> PacketResult {
        self.gate.pass();
        let seq: [u8; 4] = frame
            .body()
            .try_into()
            .map_err(|_| PacketError::BodyLength {
                id: PING,
                expected: 4,
                got: frame.body().len(),
            })?;
        self.seen
            .lock()
            .unwrap()
            .push(Seen::Ping(session, u32::from_le_bytes(seq)));
        let _ = ctx.send_bytes(session, iocp_wire::encode(PONG, 0, &seq).unwrap());
        Ok(())
    }

    fn refuse(&mut self, _: &mut LogicContext<'_>, _: SessionId, frame: Frame<'_>) -> PacketResult {
        Err(PacketError::Invalid {
            id: frame.id(),
            why: "refused by the handler".into(),
        })
    }
}

fn start(
    gate: Gate,
    queue: QueueOptions,
    bad_packet: BadPacket,
) -> (LogicServer<Recorder>, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut packets = LogicPackets::new();
    packets
        .on(PING, Recorder::ping)
        .on(REFUSE, Recorder::refuse)
        .on(PANIC, |_: &mut Recorder, _: &mut LogicContext<'_>, _, _| {
            panic!("a bug in a handler")
        });
    let config = config();
    let options = PacketOptions {
        bad_packet,
        ..PacketOptions::default()
    };
    let logic = Recorder {
        gate,
        seen: seen.clone(),
    };
    let server = packets
        .start_with(config, options, queue, |_| logic)
        .expect("server starts");
    (server, seen)
}

/// The events of one session, in the order the logic saw them.
fn of(seen: &[Seen], session: SessionId) -> Vec<Seen> {
    seen.iter()
        .filter(|s| match s {
            Seen::Connect(id) | Seen::Ping(id, _) | Seen::Disconnect(id, _) => *id == session,
            Seen::Message(_) => false,
        })
        .cloned()
        .collect()
}

fn session_of(seen: &[Seen], nth_connect: usize) -> SessionId {
    seen.iter()
        .filter_map(|s| match s {
            Seen::Connect(id) => Some(*id),
            _ => None,
        })
        .nth(nth_connect)
        .expect("connected")
}

/// Connect, then every packet in order, then disconnect — for several sessions at once, with
/// packets split across reads and several in one read.
#[test]
fn system_packets_in_order_with_the_data() {
    let (server, seen) = start(Gate::opened(), QueueOptions::default(), BadPacket::Close);
    let addr = server.local_addr();
    const N: u32 = 200;
    let threads: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                // All pings in one write, then byte by byte for a few.
                let mut wire = Vec::new();
                for seq in 0..N - 3 {
                    wire.extend_from_slice(
                        &iocp_wire::encode(PING, 0, &seq.to_le_bytes()).unwrap(),
                    );
                }
                std::io::Write::write_all(&mut c.stream, &wire).unwrap();
                for seq in N - 3..N {
                    for b in iocp_wire::encode(PING, 0, &seq.to_le_bytes())
                        .unwrap()
                        .iter()
                    {
                        std::io::Write::write_all(&mut c.stream, &[*b]).unwrap();
                    }
                }
                for seq in 0..N {
                    assert_eq!(c.recv(), (PONG, seq.to_le_bytes().to_vec()));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stats = server.logic_stats();
    server.shutdown().unwrap();
    let seen = seen.lock().unwrap().clone();
    for i in 0..4 {
        let session = session_of(&seen, i);
        let events = of(&seen, session);
        assert_eq!(events.len(), N as usize + 2);
        assert_eq!(events[0], Seen::Connect(session));
        for (seq, e) in events[1..=N as usize].iter().enumerate() {
            assert_eq!(*e, Seen::Ping(session, seq as u32));
        }
        assert!(matches!(events.last(), Some(Seen::Disconnect(s, _)) if *s == session));
    }
    assert_eq!(stats.packets, 4 * u64::from(N));
    assert_eq!(stats.closed_queue_full, 0);
    assert_eq!(stats.dropped_after_close, 0);
}

/// `WhenFull::Wait`: with the logic stalled and a queue of 4, the I/O worker waits for room
/// instead of dropping: every packet arrives, in order, once the logic goes on.
#[test]
fn full_queue_waits_and_drops_nothing() {
    let gate = Gate::shut();
    let queue = QueueOptions {
        capacity: 4,
        when_full: WhenFull::Wait,
        max_wait: std::time::Duration::from_secs(30),
        ..QueueOptions::default()
    };
    let (server, seen) = start(gate.clone(), queue, BadPacket::Close);
    let mut c = Client::connect(server.local_addr());
    const N: u32 = 500;
    for seq in 0..N {
        c.send(PING, &seq.to_le_bytes());
    }
    eventually("the worker to find the queue full", || {
        server.logic_stats().queue_full_waits > 0
    });
    // Stalled: nothing has been answered.
    assert!(
        !seen
            .lock()
            .unwrap()
            .iter()
            .any(|s| matches!(s, Seen::Ping(..)))
    );
    gate.open();
    for seq in 0..N {
        assert_eq!(c.recv(), (PONG, seq.to_le_bytes().to_vec()));
    }
    let stats = server.logic_stats();
    assert_eq!(stats.packets, u64::from(N));
    assert_eq!(stats.closed_queue_full, 0);
    assert_eq!(server.handle().stats().closed_total(), 0);
    drop(c);
    server.shutdown().unwrap();
    let seen = seen.lock().unwrap().clone();
    let events = of(&seen, session_of(&seen, 0));
    assert_eq!(
        events.len(),
        N as usize + 2,
        "connect, every ping, disconnect"
    );
}

/// `WhenFull::Disconnect`: the session whose packet does not fit is closed with a reason; the
/// logic still sees its connect, the packets that fit, in order, and its disconnect; other
/// sessions go on.
#[test]
fn full_queue_disconnects_the_sender() {
    let gate = Gate::shut();
    let queue = QueueOptions {
        capacity: 4,
        when_full: WhenFull::Disconnect,
        ..QueueOptions::default()
    };
    let (server, seen) = start(gate.clone(), queue, BadPacket::Close);
    let addr = server.local_addr();
    let mut flooder = Client::connect(addr);
    let mut wire = Vec::new();
    for seq in 0..100u32 {
        wire.extend_from_slice(&iocp_wire::encode(PING, 0, &seq.to_le_bytes()).unwrap());
    }
    std::io::Write::write_all(&mut flooder.stream, &wire).unwrap();
    eventually("the flooder to be closed", || {
        server.logic_stats().closed_queue_full == 1
    });
    gate.open();
    let answered = flooder.expect_closed();
    assert!(answered.len() < 100, "{} answered", answered.len());
    // Once the logic has caught up (the flooder's disconnect is handled), others are served.
    eventually("the flooder's disconnect", || {
        seen.lock()
            .unwrap()
            .iter()
            .any(|s| matches!(s, Seen::Disconnect(..)))
    });

    let mut other = Client::connect(addr);
    other.send(PING, &7u32.to_le_bytes());
    assert_eq!(other.recv(), (PONG, 7u32.to_le_bytes().to_vec()));
    drop(other);
    server.shutdown().unwrap();

    let seen = seen.lock().unwrap().clone();
    let session = session_of(&seen, 0);
    let events = of(&seen, session);
    assert_eq!(events[0], Seen::Connect(session));
    let pings = events.len() - 2;
    assert!(pings <= 5, "at most the queue's 4 and one in hand: {pings}");
    for (seq, e) in events[1..=pings].iter().enumerate() {
        assert_eq!(*e, Seen::Ping(session, seq as u32));
    }
    match events.last() {
        Some(Seen::Disconnect(_, CloseReason::Overloaded(why))) => {
            assert!(why.contains("logic queue full"), "{why}")
        }
        other => panic!("expected the disconnect last, got {other:?}"),
    }
}

/// Unknown ids are refused on the I/O worker, handler errors on the logic thread; both close
/// only their session with the error as the reason, and later packets of that session are not
/// handled.
#[test]
fn bad_packets_close_their_session() {
    let (server, seen) = start(Gate::opened(), QueueOptions::default(), BadPacket::Close);
    let addr = server.local_addr();

    let mut unknown = Client::connect(addr);
    unknown.send(PING, &0u32.to_le_bytes());
    unknown.send(999, b"?");
    unknown.send(PING, &1u32.to_le_bytes());
    assert_eq!(
        unknown.expect_closed(),
        [(PONG, 0u32.to_le_bytes().to_vec())]
    );

    let mut refused = Client::connect(addr);
    let mut wire = iocp_wire::encode(REFUSE, 0, b"").unwrap().to_vec();
    wire.extend_from_slice(&iocp_wire::encode(PING, 0, &5u32.to_le_bytes()).unwrap());
    std::io::Write::write_all(&mut refused.stream, &wire).unwrap();
    assert!(
        refused.expect_closed().is_empty(),
        "the ping after it is dropped"
    );

    let mut short = Client::connect(addr);
    short.send(PING, &[1, 2]);
    assert!(short.expect_closed().is_empty());

    let mut good = Client::connect(addr);
    good.send(PING, &9u32.to_le_bytes());
    assert_eq!(good.recv(), (PONG, 9u32.to_le_bytes().to_vec()));

    eventually("three disconnects", || {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|s| matches!(s, Seen::Disconnect(..)))
            .count()
            == 3
    });
    let stats = server.logic_stats();
    assert_eq!(stats.bad_packets, 3);
    drop(good);
    server.shutdown().unwrap();
    let seen = seen.lock().unwrap().clone();
    let mut reasons: Vec<String> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::Disconnect(_, CloseReason::Protocol(why)) => Some(why.clone()),
            _ => None,
        })
        .collect();
    // Sessions of different workers: their disconnects may come in any order.
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "packet 1: body of 2 bytes, expected 4",
            "packet 3: refused by the handler",
            "unknown packet id 999",
        ]
    );
}

/// `BadPacket::Ignore` skips unknown ids and refused packets; a bad length still closes.
#[test]
fn bad_packets_can_be_ignored() {
    let (server, _seen) = start(Gate::opened(), QueueOptions::default(), BadPacket::Ignore);
    let mut c = Client::connect(server.local_addr());
    c.send(999, b"?");
    c.send(REFUSE, b"");
    c.send(PING, &3u32.to_le_bytes());
    assert_eq!(c.recv(), (PONG, 3u32.to_le_bytes().to_vec()));
    // A length below the header: the stream cannot be framed any more.
    std::io::Write::write_all(&mut c.stream, &[2, 0, 1, 0, 0]).unwrap();
    c.expect_closed();
    assert_eq!(server.logic_stats().bad_packets, 2);
    server.shutdown().unwrap();
}

/// Messages from other threads arrive through the same queue, and stopping hands the logic's
/// state back after everything queued before the stop.
#[test]
fn messages_and_stop() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let logic = Recorder {
        gate: Gate::opened(),
        seen: seen.clone(),
    };
    let mut packets = LogicPackets::new();
    packets.on(PING, Recorder::ping);
    let mut sender = None;
    let server = packets
        .start(config(), QueueOptions::default(), |s| {
            sender = Some(s);
            logic
        })
        .unwrap();
    let sender = sender.unwrap();
    let posters: Vec<_> = (0..4)
        .map(|t| {
            let sender = sender.clone();
            std::thread::spawn(move || {
                for i in 0..100 {
                    sender.send(t * 1000 + i).unwrap();
                }
            })
        })
        .collect();
    for p in posters {
        p.join().unwrap();
    }
    let logic = server.shutdown().unwrap();
    let messages: Vec<u32> = logic
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter_map(|s| match s {
            Seen::Message(m) => Some(*m),
            _ => None,
        })
        .collect();
    assert_eq!(
        messages.len(),
        400,
        "every message before the stop was handled"
    );
    for t in 0..4 {
        let mine: Vec<u32> = messages.iter().copied().filter(|m| m / 1000 == t).collect();
        assert_eq!(mine, (t * 1000..t * 1000 + 100).collect::<Vec<_>>());
    }
    assert_eq!(sender.send(1), Err(1), "the logic thread has ended");
}

/// A handler that panics costs its session only: the logic thread goes on.
#[test]
fn a_panicking_handler_costs_one_session() {
    let (server, seen) = start(Gate::opened(), QueueOptions::default(), BadPacket::Close);
    let addr = server.local_addr();
    let mut bad = Client::connect(addr);
    bad.send(PING, &1u32.to_le_bytes());
    bad.send(PANIC, b"");
    bad.send(PING, &2u32.to_le_bytes());
    assert_eq!(bad.expect_closed(), [(PONG, 1u32.to_le_bytes().to_vec())]);
    let mut good = Client::connect(addr);
    good.send(PING, &3u32.to_le_bytes());
    assert_eq!(good.recv(), (PONG, 3u32.to_le_bytes().to_vec()));
    drop(good);
    server.shutdown().unwrap();
    let seen = seen.lock().unwrap().clone();
    let session = session_of(&seen, 0);
    assert_eq!(
        of(&seen, session).last(),
        Some(&Seen::Disconnect(session, CloseReason::HandlerPanicked))
    );
}

/// `WhenFull::Wait` waits at most `max_wait` for one packet: with the logic stuck, the session
/// whose packet does not fit is closed (`Overloaded`) after that long instead of holding its
/// worker; once the logic goes on it sees that session's disconnect; and shutdown does not wait
/// for a full queue.
#[test]
fn full_queue_wait_is_bounded() {
    let gate = Gate::shut();
    let queue = QueueOptions {
        capacity: 4,
        when_full: WhenFull::Wait,
        max_wait: std::time::Duration::from_millis(300),
        ..QueueOptions::default()
    };
    let (server, seen) = start(gate.clone(), queue, BadPacket::Close);
    let mut c = Client::connect(server.local_addr());
    let started = std::time::Instant::now();
    for seq in 0..50u32 {
        c.send(PING, &seq.to_le_bytes());
    }
    eventually("the session given up on", || {
        server.logic_stats().closed_queue_full == 1
    });
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(300),
        "gave up after {waited:?}"
    );
    // The logic goes on: it sees the packets that fit, then the disconnect, with the reason.
    gate.open();
    eventually("the disconnect", || {
        matches!(
            seen.lock().unwrap().last(),
            Some(Seen::Disconnect(_, CloseReason::Overloaded(_)))
        )
    });
    c.expect_closed();
    let stopping = std::time::Instant::now();
    server.shutdown().unwrap();
    assert!(stopping.elapsed() < std::time::Duration::from_secs(2));
}

/// Logic that counts its ticks.
struct Ticker(Arc<std::sync::atomic::AtomicUsize>);

impl Logic for Ticker {
    type Message = ();
    fn on_tick(&mut self, _: &mut LogicContext<'_>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `Logic::on_tick` runs every `QueueOptions::tick`, with no events at all, and while events
/// keep the queue busy.
#[test]
fn the_logic_ticks() {
    let ticks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut packets = LogicPackets::new();
    packets.on(
        PING,
        |_: &mut Ticker, ctx: &mut LogicContext<'_>, session, frame: Frame<'_>| {
            let _ = ctx.send_bytes(session, iocp_wire::encode(PONG, 0, frame.body()).unwrap());
            Ok(())
        },
    );
    let queue = QueueOptions {
        tick: Some(std::time::Duration::from_millis(20)),
        ..QueueOptions::default()
    };
    let server = packets
        .start(config(), queue, |_| Ticker(ticks.clone()))
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let idle_ticks = ticks.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        (8..=16).contains(&idle_ticks),
        "{idle_ticks} ticks in 300 ms"
    );
    // Busy: pings back to back for 300 ms.
    let mut c = Client::connect(server.local_addr());
    let started = std::time::Instant::now();
    let mut seq = 0u32;
    while started.elapsed() < std::time::Duration::from_millis(300) {
        c.send(PING, &seq.to_le_bytes());
        let (id, body) = c.recv();
        assert_eq!((id, body), (PONG, seq.to_le_bytes().to_vec()));
        seq += 1;
    }
    let busy_ticks = ticks.load(std::sync::atomic::Ordering::Relaxed) - idle_ticks;
    assert!(busy_ticks >= 8, "{busy_ticks} ticks in 300 ms of traffic");
    server.shutdown().unwrap();
}
