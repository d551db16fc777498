//! The first mode: handlers run on the I/O worker that owns the session.
//!
//! Nothing is queued or copied: each whole frame is handed to its handler where it lies, in the
//! receive buffer (or in the decoder's buffer, for a frame that straddled two reads). Handlers of
//! different sessions run on several workers at once, so the state they share is `Sync` and
//! guards itself (atomics, locks). Use it for stateless or per-session work — an echo, a
//! gateway, a relay — and the logic thread ([`crate::logic`]) for game state.
//!
//! ```no_run
//! use iocp_packet::{PacketOptions, PacketResult, WorkerLogic, WorkerPackets};
//! use iocp_server::{Config, Context, Server, SessionId};
//! use iocp_wire::Frame;
//!
//! struct Ping;
//! impl WorkerLogic for Ping {}
//!
//! fn ping(_: &Ping, ctx: &mut Context<'_>, session: SessionId, frame: Frame<'_>) -> PacketResult {
//!     let pong = iocp_wire::encode(2, 0, frame.body()).expect("small");
//!     let _ = ctx.send_bytes(session, pong);
//!     Ok(())
//! }
//!
//! let config = Config::default();
//! let mut packets = WorkerPackets::new(Ping);
//! packets.on(1, ping);
//! let server = Server::start(config.clone(), packets.build(PacketOptions::default()))?;
//! # server.shutdown()?;
//! # Ok::<(), iocp_server::Error>(())
//! ```

use std::net::SocketAddr;

use iocp_server::{CloseReason, Context, Handler, SessionId};
use iocp_wire::{Frame, TypedPacket};

use crate::slots::PacketSession;
use crate::table::Table;
use crate::{BadPacket, PacketError, PacketOptions, PacketResult};

/// The state that handlers on the I/O workers share, and its connect and close callbacks (the
/// tutorial's `OnConnect` / `OnClose`). Both default to doing nothing.
pub trait WorkerLogic: Send + Sync + 'static {
    /// A session opened. Runs on its worker, before any of its packets.
    fn on_connect(&self, ctx: &mut Context<'_>, session: SessionId, peer: SocketAddr) {
        let _ = (ctx, session, peer);
    }

    /// A session ended (for `reason`); its id is stale from now on. Runs on its worker, after its
    /// last packet.
    fn on_close(&self, ctx: &mut Context<'_>, session: SessionId, reason: CloseReason) {
        let _ = (ctx, session, reason);
    }
}

/// Keep an `Arc` of the state to reach it from outside the server too.
impl<T: WorkerLogic> WorkerLogic for std::sync::Arc<T> {
    fn on_connect(&self, ctx: &mut Context<'_>, session: SessionId, peer: SocketAddr) {
        (**self).on_connect(ctx, session, peer);
    }

    fn on_close(&self, ctx: &mut Context<'_>, session: SessionId, reason: CloseReason) {
        (**self).on_close(ctx, session, reason);
    }
}

type WorkerFn<S> =
    Box<dyn Fn(&S, &mut Context<'_>, SessionId, Frame<'_>) -> PacketResult + Send + Sync>;

/// Builds a [`WorkerHandler`]: the packet-id → handler table for handlers that run on the I/O
/// workers.
pub struct WorkerPackets<S> {
    state: S,
    table: Table<WorkerFn<S>>,
}

impl<S: WorkerLogic> WorkerPackets<S> {
    /// An empty table over the shared `state`.
    pub fn new(state: S) -> Self {
        WorkerPackets {
            state,
            table: Table::default(),
        }
    }

    /// Registers the handler of packet `id`, replacing an earlier one. The handler gets the whole
    /// frame (header and body); returning `Err` refuses the packet ([`BadPacket`]).
    pub fn on<F>(&mut self, id: u16, handler: F) -> &mut Self
    where
        F: Fn(&S, &mut Context<'_>, SessionId, Frame<'_>) -> PacketResult + Send + Sync + 'static,
    {
        self.table.insert(id, Box::new(handler));
        self
    }

    /// Registers `handler` for packets of type `P` (id [`TypedPacket::ID`]): the frame is decoded
    /// before the call, and a body that does not fit `P` is refused as a handler's error would be
    /// ([`BadPacket`]).
    pub fn on_packet<P, F>(&mut self, handler: F) -> &mut Self
    where
        P: TypedPacket + 'static,
        F: Fn(&S, &mut Context<'_>, SessionId, P) -> PacketResult + Send + Sync + 'static,
    {
        self.on(P::ID, move |state, ctx, session, frame| {
            handler(state, ctx, session, P::decode(&frame)?)
        })
    }

    /// The [`Handler`] to start the server with.
    pub fn build(self, options: PacketOptions) -> WorkerHandler<S> {
        WorkerHandler {
            max_frame_len: options.max_frame_len,
            bad_packet: options.bad_packet,
            state: self.state,
            table: self.table,
        }
    }
}

/// An [`iocp_server::Handler`] that frames each session's bytes and calls the handler registered
/// for each packet's id, on the session's I/O worker.
pub struct WorkerHandler<S> {
    state: S,
    table: Table<WorkerFn<S>>,
    max_frame_len: usize,
    bad_packet: BadPacket,
}

impl<S: WorkerLogic> Handler for WorkerHandler<S> {
    type Session = PacketSession;

    fn on_connect(
        &self,
        ctx: &mut Context<'_, PacketSession>,
        session: SessionId,
        peer: SocketAddr,
    ) {
        if let Some(state) = ctx.state(session) {
            state.open(self.max_frame_len);
        }
        ctx.with_state(PacketSession::user, |ctx| {
            self.state.on_connect(ctx, session, peer)
        });
    }

    fn on_receive(&self, ctx: &mut Context<'_, PacketSession>, session: SessionId, data: &[u8]) {
        // The decoder is taken out of the session's state while the handlers run with the
        // context (they may reach the states), and put back after.
        let mut decoder = match ctx.state(session) {
            Some(state) if !state.closing => std::mem::take(&mut state.decoder),
            _ => return,
        };
        let mut failed = None;
        let mut frames = decoder.feed(data);
        ctx.with_state(PacketSession::user, |ctx| {
            loop {
                let error = match frames.next_frame() {
                    Ok(Some(frame)) => match self.table.get(frame.id()) {
                        Some(handler) => match handler(&self.state, ctx, session, frame) {
                            Ok(()) => continue,
                            Err(e) => e,
                        },
                        None => PacketError::UnknownId { id: frame.id() },
                    },
                    Ok(None) => break,
                    Err(e) => PacketError::Frame(e),
                };
                if self.bad_packet == BadPacket::Ignore && !error.is_framing() {
                    tracing::debug!("session {session}: {error}: packet ignored");
                    continue;
                }
                failed = Some(error);
                break;
            }
        });
        drop(frames);
        if let Some(state) = ctx.state(session) {
            state.decoder = decoder;
            state.closing |= failed.is_some();
        }
        if let Some(error) = failed {
            refuse(ctx, session, &error);
        }
    }

    fn on_close(
        &self,
        ctx: &mut Context<'_, PacketSession>,
        session: SessionId,
        reason: CloseReason,
    ) {
        ctx.with_state(PacketSession::user, |ctx| {
            self.state.on_close(ctx, session, reason)
        });
    }
}

/// Closes `session` for `error`, with a log line.
pub(crate) fn refuse<S>(ctx: &mut Context<'_, S>, session: SessionId, error: &PacketError) {
    crate::ratelog::closing(session, &error);
    let _ = ctx.close_with(session, CloseReason::Protocol(error.to_string()));
}
