//! The one error type of this crate.

use std::fmt;

use crate::HEADER_LEN;

/// Why bytes are not a valid frame, or why a frame cannot be built.
///
/// Every variant means "this peer sent something we cannot frame": the session that sent it is
/// closed, the rest of the server goes on. A [`Decoder`](crate::Decoder) that has returned an
/// error keeps returning the same one (it is *poisoned*), since the byte stream has lost its
/// framing and nothing after the bad header can be trusted.
///
/// | variant | returned by |
/// |---|---|
/// | [`LengthTooSmall`](Self::LengthTooSmall) | [`Decoder`](crate::Decoder), [`Frame::parse`](crate::Frame::parse) |
/// | [`FrameTooLarge`](Self::FrameTooLarge) | the decoder and `Frame::parse` (above the configured maximum), the encoders (above [`MAX_FRAME_LEN`](crate::MAX_FRAME_LEN)) |
/// | [`BodyTooShort`](Self::BodyTooShort) | [`BodyReader`](crate::BodyReader) |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FrameError {
    /// The header's `packet_length` is smaller than the 5-byte header itself.
    ///
    /// A length of 0 is the usual sign of a peer that does not speak this protocol.
    LengthTooSmall {
        /// The `packet_length` read from the header.
        len: usize,
    },
    /// The frame is longer than the maximum frame length.
    FrameTooLarge {
        /// The frame's length, header included.
        len: usize,
        /// The largest length allowed, header included.
        max: usize,
    },
    /// A frame's body ended before a field that its packet type needs.
    BodyTooShort {
        /// How many bytes the field needs.
        needed: usize,
        /// How many bytes were left in the body.
        available: usize,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::LengthTooSmall { len } => write!(
                f,
                "frame length {len} is smaller than the {HEADER_LEN}-byte header"
            ),
            Self::FrameTooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the maximum of {max} bytes")
            }
            Self::BodyTooShort { needed, available } => write!(
                f,
                "frame body too short: a field needs {needed} bytes, {available} left"
            ),
        }
    }
}

impl std::error::Error for FrameError {}
