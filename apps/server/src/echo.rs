//! The seed's echo server: every received byte goes back to its sender.

use iocp_server::{CloseReason, Context, Handler, SessionId};

/// The seed's echo: send back what arrived.
pub struct Echo {
    /// Log every received message with its session index, as the seed does.
    pub log_each: bool,
}

impl Handler for Echo {
    type Session = ();

    fn on_connect(&self, _ctx: &mut Context<'_>, session: SessionId, peer: std::net::SocketAddr) {
        tracing::debug!("[connect] session {} from {peer}", session.index);
    }

    fn on_receive(&self, ctx: &mut Context<'_>, session: SessionId, data: &[u8]) {
        if self.log_each {
            tracing::info!(
                "[recv] session {}: {} bytes: {}",
                session.index,
                data.len(),
                String::from_utf8_lossy(data)
            );
        }
        // Errors cost only this session and are logged by the server.
        let _ = ctx.send(session, data);
    }

    fn on_close(&self, _ctx: &mut Context<'_>, session: SessionId, reason: CloseReason) {
        tracing::debug!("[close] session {}: {reason}", session.index);
    }
}
