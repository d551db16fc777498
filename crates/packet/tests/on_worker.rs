//! The on-worker mode on loopback: handlers by id, connect and close callbacks, bad input.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use iocp_packet::{
    BadPacket, PacketError, PacketOptions, PacketResult, WorkerLogic, WorkerPackets,
};
use iocp_server::{CloseReason, Context, Server, SessionId};
use iocp_wire::Frame;
use support::{Client, config, eventually};

#[derive(Default)]
struct Shared {
    connects: AtomicU64,
    closes: Mutex<Vec<CloseReason>>,
}

impl WorkerLogic for Shared {
    fn on_connect(&self, _: &mut Context<'_>, _: SessionId, _: SocketAddr) {
        self.connects.fetch_add(1, Ordering::Relaxed);
    }
    fn on_close(&self, _: &mut Context<'_>, _: SessionId, reason: CloseReason) {
        self.closes.lock().unwrap().push(reason);
    }
}

fn echo(_: &Shared, ctx: &mut Context<'_>, session: SessionId, frame: Frame<'_>) -> PacketResult {
    let _ = ctx.send_bytes(session, iocp_wire::encode(2, 0, frame.body()).unwrap());
    Ok(())
}

fn start(bad_packet: BadPacket) -> (Server, Arc<Shared>) {
    let shared = Arc::new(Shared::default());
    let mut packets = WorkerPackets::new(shared.clone());
    packets
        .on(
            1,
            |s: &Arc<Shared>, ctx: &mut Context<'_>, session, frame| echo(s, ctx, session, frame),
        )
        .on(
            3,
            |_: &Arc<Shared>, _: &mut Context<'_>, _, frame: Frame<'_>| {
                Err(PacketError::Invalid {
                    id: frame.id(),
                    why: "never".into(),
                })
            },
        );
    let config = config();
    let options = PacketOptions {
        bad_packet,
        ..PacketOptions::default()
    };
    let server = Server::start(config, packets.build(options)).expect("server starts");
    (server, shared)
}

#[test]
fn handlers_by_id_on_the_worker() {
    let (server, shared) = start(BadPacket::Close);
    let mut c = Client::connect(server.local_addr());
    let mut wire = Vec::new();
    for i in 0..100u8 {
        wire.extend_from_slice(&iocp_wire::encode(1, 0, &[i; 3]).unwrap());
    }
    // In pieces that split frames.
    for chunk in wire.chunks(7) {
        std::io::Write::write_all(&mut c.stream, chunk).unwrap();
    }
    for i in 0..100u8 {
        assert_eq!(c.recv(), (2, vec![i; 3]));
    }
    drop(c);
    eventually("the close", || shared.closes.lock().unwrap().len() == 1);
    assert_eq!(shared.connects.load(Ordering::Relaxed), 1);
    server.shutdown().unwrap();
}

#[test]
fn bad_input_closes_only_its_session() {
    let (server, shared) = start(BadPacket::Close);
    let addr = server.local_addr();
    let mut good = Client::connect(addr);

    let mut unknown = Client::connect(addr);
    unknown.send(1, b"a");
    unknown.send(77, b"?");
    unknown.send(1, b"b");
    assert_eq!(unknown.expect_closed(), [(2, b"a".to_vec())]);

    let mut refused = Client::connect(addr);
    refused.send(3, b"");
    assert!(refused.expect_closed().is_empty());

    let mut oversized = Client::connect(addr);
    std::io::Write::write_all(&mut oversized.stream, &[0x00, 0x40, 1, 0, 0]).unwrap();
    assert!(oversized.expect_closed().is_empty());

    good.send(1, b"still");
    assert_eq!(good.recv(), (2, b"still".to_vec()));
    eventually("three closes", || shared.closes.lock().unwrap().len() == 3);
    let mut closes: Vec<String> = shared
        .closes
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.to_string())
        .collect();
    // Sessions of different workers: their closes may come in any order.
    closes.sort();
    assert_eq!(
        closes,
        [
            "protocol error: bad frame: frame of 16384 bytes exceeds the maximum of 8192 bytes",
            "protocol error: packet 3: never",
            "protocol error: unknown packet id 77",
        ]
    );
    server.shutdown().unwrap();
}

#[test]
fn ignore_skips_unknown_and_refused() {
    let (server, _shared) = start(BadPacket::Ignore);
    let mut c = Client::connect(server.local_addr());
    c.send(77, b"?");
    c.send(3, b"");
    c.send(1, b"ok");
    assert_eq!(c.recv(), (2, b"ok".to_vec()));
    std::io::Write::write_all(&mut c.stream, &[0, 0]).unwrap();
    assert!(c.expect_closed().is_empty(), "a bad length still closes");
    server.shutdown().unwrap();
}
