//! Typed packets: [`TypedPacket`], a packet's id and body layout with its encoding both ways,
//! and [`PacketError`], why a packet was refused.

use std::fmt;

use bytes::{Bytes, BytesMut};

use crate::{BodyReader, Frame, FrameError, FrameWriter, HEADER_LEN};

/// Why a packet (or the byte stream carrying it) was refused.
///
/// Each variant should cost the session that sent it, never the server: `iocp-packet`'s packet
/// manager closes that session with a protocol close reason carrying this error's text, or skips
/// the packet, as its `BadPacket` option says. A [`PacketError::Frame`] always closes: once a
/// length field is wrong, nothing after it can be framed.
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
    /// Whether the stream itself has lost its framing (then the session must be closed,
    /// whatever else a packet manager does with bad packets).
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

/// A packet type: its id, its body layout, and the encoding both ways. A protocol crate
/// implements it once per packet (the tutorial's `LOGIN_REQUEST_PACKET` structs); handlers then
/// read and write packets, never bytes.
///
/// ```
/// use iocp_wire::{BodyReader, FrameWriter, PacketError, TypedPacket};
///
/// /// `u16 Result;`
/// #[derive(Debug, PartialEq)]
/// struct LoginResponse { result: u16 }
///
/// impl TypedPacket for LoginResponse {
///     const ID: u16 = 202;
///     const NAME: &'static str = "LOGIN_RESPONSE";
///     fn body_len(&self) -> usize { 2 }
///     fn write_body(&self, w: &mut FrameWriter<'_>) { w.put_u16_le(self.result) }
///     fn read_body(body: &[u8]) -> Result<Self, PacketError> {
///         let mut r = PacketError::exact(Self::ID, body, 2)?;
///         Ok(LoginResponse { result: r.u16_le().map_err(|e| PacketError::body(Self::ID, e))? })
///     }
/// }
///
/// let bytes = LoginResponse { result: 31 }.encode();
/// assert_eq!(&bytes[..], &[7, 0, 202, 0, 0, 31, 0]);
/// let (frame, _) = iocp_wire::Frame::parse(&bytes, 64).unwrap().unwrap();
/// assert_eq!(LoginResponse::decode(&frame), Ok(LoginResponse { result: 31 }));
/// ```
pub trait TypedPacket: Sized {
    /// The packet id.
    const ID: u16;
    /// The packet's name, for logs and errors.
    const NAME: &'static str;
    /// The header's `type` byte to send.
    const KIND: u8 = 0;

    /// Length of this packet's body in bytes.
    fn body_len(&self) -> usize;

    /// Writes the body.
    fn write_body(&self, w: &mut FrameWriter<'_>);

    /// Reads a body.
    ///
    /// # Errors
    ///
    /// [`PacketError::BodyLength`], [`PacketError::Body`] or [`PacketError::Invalid`] when the
    /// body does not have the packet's layout.
    fn read_body(body: &[u8]) -> Result<Self, PacketError>;

    /// Appends the whole frame, header included, to `buf`.
    ///
    /// # Panics
    ///
    /// If the body is longer than a frame can carry ([`crate::MAX_BODY_LEN`]): a packet type's
    /// layout bounds its length.
    fn encode_into(&self, buf: &mut BytesMut) {
        let mut w = FrameWriter::new(buf, Self::ID, Self::KIND);
        self.write_body(&mut w);
        if let Err(e) = w.finish() {
            panic!("{} ({}): {e}", Self::NAME, Self::ID);
        }
    }

    /// The whole frame as shared bytes: encode a notification once, send it to many.
    fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(HEADER_LEN + self.body_len());
        self.encode_into(&mut buf);
        buf.freeze()
    }

    /// Reads this packet from a frame (its `type` byte is not checked).
    ///
    /// # Errors
    ///
    /// [`PacketError::Invalid`] if the frame has another id, else those of
    /// [`read_body`](Self::read_body).
    fn decode(frame: &Frame<'_>) -> Result<Self, PacketError> {
        if frame.id() != Self::ID {
            return Err(PacketError::Invalid {
                id: frame.id(),
                why: format!("expected {} ({})", Self::NAME, Self::ID),
            });
        }
        Self::read_body(frame.body())
    }
}

impl PacketError {
    /// A reader over `body`, which must be exactly `len` bytes long (fixed-size packets, as the
    /// tutorial checks `packetSize == sizeof(...)`).
    ///
    /// # Errors
    ///
    /// [`PacketError::BodyLength`] for any other length.
    pub fn exact(id: u16, body: &[u8], len: usize) -> Result<BodyReader<'_>, PacketError> {
        if body.len() != len {
            return Err(PacketError::BodyLength {
                id,
                expected: len,
                got: body.len(),
            });
        }
        Ok(BodyReader::new(body))
    }

    /// A field of packet `id` could not be read.
    pub fn body(id: u16, error: FrameError) -> PacketError {
        PacketError::Body { id, error }
    }
}
