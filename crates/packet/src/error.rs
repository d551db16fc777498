//! [`PacketResult`], what a handler returns, and [`BadPacket`], what to do with a refused packet.

pub use iocp_wire::PacketError;

/// What a handler returns: `Err` refuses the packet (see [`BadPacket`]).
pub type PacketResult = Result<(), PacketError>;

/// What the packet manager does with a packet of an unknown id, or one its handler refused.
///
/// A bad length field ([`PacketError::Frame`]) always closes the session, whatever this says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BadPacket {
    /// Close the session with [`iocp_server::CloseReason::Protocol`] giving the error, after
    /// logging it (the default: a peer that speaks another protocol is not served).
    #[default]
    Close,
    /// Log the error and skip the packet; the session goes on.
    Ignore,
}
