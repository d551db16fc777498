//! The packet manager's state of one session: its frame decoder, kept in the server's session
//! state ([`iocp_server::Handler::Session`]) — owned by the session's worker, reached without a
//! lock, made when the session opens and dropped when it closes.

use iocp_wire::Decoder;

/// The packet manager's state of one session (its [`iocp_server::Handler::Session`]).
#[derive(Debug, Default)]
pub struct PacketSession {
    /// The session's frame decoder; made with the configured maximum at connect.
    pub(crate) decoder: Decoder,
    /// The packet manager closed this session: what still arrives for it is dropped.
    pub(crate) closing: bool,
    /// What the handlers of [`crate::WorkerPackets`] see as their session state.
    pub(crate) user: (),
}

impl PacketSession {
    /// Readies the state of a new session.
    pub(crate) fn open(&mut self, max_frame_len: usize) {
        self.decoder = Decoder::with_max_frame_len(max_frame_len);
        self.closing = false;
    }

    /// The handlers' view of the state.
    pub(crate) fn user(&mut self) -> &mut () {
        &mut self.user
    }
}
