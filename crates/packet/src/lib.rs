//! The tutorial's packet manager for `iocp-server`: frames each session's bytes with
//! [`iocp_wire`], calls a handler registered for each packet id, and runs those handlers either
//! on the I/O workers or on **one logic thread** fed by a bounded queue. Handlers take frames
//! ([`LogicPackets::on`]) or typed packets ([`LogicPackets::on_packet`], for any [`TypedPacket`]:
//! the frame is decoded before the call). A protocol lives in a crate of its own that needs only
//! `iocp-wire` (the tutorial's chat protocol is `iocp-chat-protocol`), so that its clients do not
//! pull in the server.
//!
//! | the tutorial (C++) | here |
//! |---|---|
//! | `PacketManager::mRecvFuntionDictionary[PACKET_ID] = &PacketManager::ProcessLogin` | [`WorkerPackets::on`], [`LogicPackets::on`] |
//! | receive buffer + "is a whole packet in yet?" | one [`iocp_wire::Decoder`] per session, its state on the I/O worker ([`PacketSession`]) |
//! | `PacketManager` thread, `ProcessPacket()`, `mInComingPacketUserIndex` queue | the logic thread ([`logic`]): one bounded queue, [`Logic`] owns the state |
//! | `SYS_USER_CONNECT`, `SYS_USER_DISCONNECT` system packets | [`Logic::on_connect`], [`Logic::on_disconnect`], queued in order with the data |
//! | request/response queues to the Redis thread | a [`LogicSender`]: other threads post results back as messages ([`Logic::on_message`]) |
//! | a packet struct cast from the receive buffer | a [`TypedPacket`], decoded and length-checked |
//!
//! Two modes:
//!
//! - **On the worker** ([`WorkerPackets`] → [`WorkerHandler`]): the handler runs on the I/O
//!   worker that owns the session, with the frame borrowed in place — nothing queued or copied.
//!   Shared state must guard itself (`Sync`).
//! - **On the logic thread** ([`LogicPackets`] → [`LogicServer`]): the workers decode and queue;
//!   one thread runs every handler with `&mut` state — the tutorial's design, game logic without
//!   locks. Back-pressure is defined by [`WhenFull`]: by default the workers wait for room, so
//!   nothing is ever dropped.
//!
//! Either way, bad input costs only its session: a bad length ([`PacketError::Frame`]) closes
//! it; an unknown id or a packet its handler refuses closes it too, or is skipped
//! ([`BadPacket`]). Every close carries [`iocp_server::CloseReason::Protocol`] with the error's
//! text and is logged.
//!
//! ```no_run
//! use iocp_packet::{Logic, LogicContext, LogicPackets, PacketResult, QueueOptions};
//! use iocp_server::{CloseReason, Config, SessionId};
//! use iocp_wire::Frame;
//!
//! #[derive(Default)]
//! struct Counter {
//!     hits: u64, // no lock: only the logic thread touches it
//! }
//!
//! impl Logic for Counter {
//!     type Message = ();
//!     fn on_disconnect(&mut self, _: &mut LogicContext<'_>, session: SessionId, why: CloseReason) {
//!         println!("{session} left ({why}) after {} hits in all", self.hits);
//!     }
//! }
//!
//! impl Counter {
//!     fn hit(&mut self, ctx: &mut LogicContext<'_>, session: SessionId, _: Frame<'_>) -> PacketResult {
//!         self.hits += 1;
//!         let reply = iocp_wire::encode(2, 0, &self.hits.to_le_bytes()).expect("small");
//!         let _ = ctx.send_bytes(session, reply);
//!         Ok(())
//!     }
//! }
//!
//! let mut packets = LogicPackets::new();
//! packets.on(1, Counter::hit);
//! let server = packets.start(Config::default(), QueueOptions::default(), |_| Counter::default())?;
//! let counter = server.shutdown()?; // server first, then the logic thread; the state comes back
//! # Ok::<(), iocp_server::Error>(())
//! ```

#![forbid(unsafe_code)]

mod error;
pub mod logic;
pub mod on_worker;
mod options;
mod ratelog;
mod slots;
mod table;

pub use error::{BadPacket, PacketError, PacketResult};
pub use iocp_wire::TypedPacket;
pub use logic::{
    Logic, LogicBack, LogicContext, LogicFront, LogicPackets, LogicSender, LogicServer, LogicStats,
    LogicThread, QueueOptions, WhenFull,
};
pub use on_worker::{WorkerHandler, WorkerLogic, WorkerPackets};
pub use options::PacketOptions;
pub use slots::PacketSession;
