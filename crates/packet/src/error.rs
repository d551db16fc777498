//! [`PacketError`], why a packet was refused, and [`BadPacket`], what to do about it.

use std::fmt;

use iocp_wire::FrameError;

/// Why a packet (or the byte stream carrying it) was refused.
///
/// Each variant costs the session that sent it, never the server: the packet manager closes that
/// session with [`iocp_server::CloseReason::Protocol`] carrying this error's text, or skips the
/// packet, as [`BadPacket`] says. A [`PacketError::Frame`] always closes: once a length field is
/// wrong, nothing after it can be framed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PacketError {
    /// The stream could not be framed: a `packet_length` below the header or above the maximum.
    Frame(FrameError),
    /// No handler is registered for this packet id.
    UnknownId {
        /// The packet id received.
        id: u16,
    },
    /// The body's length is not the one its packet id has (the tutorial checks
    /// `packetSize == sizeof(LOGIN_REQUEST_PACKET)` the same way).
    BodyLength {
        /// The packet id.
        id: u16,
        /// The body length that packet has (or, for a variable-length packet, the least it may).
        expected: usize,
        /// The body length received.
        got: usize,
    },
    /// A field of the body could not be read.
    Body {
        /// The packet id.
        id: u16,
        /// What the body reader found.
        error: FrameError,
    },
    /// The packet is well-formed but not acceptable (the handler says why).
    Invalid {
        /// The packet id.
        id: u16,
        /// Why.
        why: String,
    },
}

impl PacketError {
    /// Whether the stream itself has lost its framing (then the session is closed whatever
    /// [`BadPacket`] says).
    pub fn is_framing(&self) -> bool {
        matches!(self, PacketError::Frame(_))
    }

    /// The packet id concerned, if one was read.
    pub fn id(&self) -> Option<u16> {
        match self {
            PacketError::Frame(_) => None,
            PacketError::UnknownId { id }
            | PacketError::BodyLength { id, .. }
            | PacketError::Body { id, .. }
            | PacketError::Invalid { id, .. } => Some(*id),
        }
    }
}

impl fmt::Display for PacketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PacketError::Frame(e) => write!(f, "bad frame: {e}"),
            PacketError::UnknownId { id } => write!(f, "unknown packet id {id}"),
            PacketError::BodyLength { id, expected, got } => {
                write!(f, "packet {id}: body of {got} bytes, expected {expected}")
            }
            PacketError::Body { id, error } => write!(f, "packet {id}: {error}"),
            PacketError::Invalid { id, why } => write!(f, "packet {id}: {why}"),
        }
    }
}

impl std::error::Error for PacketError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PacketError::Frame(e) | PacketError::Body { error: e, .. } => Some(e),
            _ => None,
        }
    }
}

impl From<FrameError> for PacketError {
    fn from(e: FrameError) -> Self {
        PacketError::Frame(e)
    }
}

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
