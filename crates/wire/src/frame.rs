//! [`Frame`], a borrowed view of one whole frame.

use std::fmt;

use crate::header::check_len;
use crate::{BodyReader, FrameError, HEADER_LEN, Header};

/// One whole frame — header and body — borrowed from the bytes it was decoded from.
///
/// A `Frame` is always valid: its header's `packet_length` equals the number of bytes it views,
/// and that is at least [`HEADER_LEN`]. It is `Copy` and costs nothing to pass around; to keep
/// a frame beyond the borrow (to hand it to a logic thread, say), copy its bytes:
/// `Bytes::copy_from_slice(frame.as_bytes())`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Frame<'a> {
    /// Invariant: `bytes.len() >= HEADER_LEN` and the header's length field equals `bytes.len()`.
    bytes: &'a [u8],
}

impl<'a> Frame<'a> {
    /// Splits the first frame off the front of `input`, without a [`Decoder`](crate::Decoder).
    ///
    /// Returns the frame and the bytes after it, or `Ok(None)` if `input` does not yet hold a
    /// whole frame. The length field is checked as soon as its two bytes are there, so an
    /// oversized frame is refused before its body arrives.
    ///
    /// # Errors
    ///
    /// [`FrameError::LengthTooSmall`] or [`FrameError::FrameTooLarge`] if the length field is
    /// below [`HEADER_LEN`] or above `max_frame_len`.
    pub fn parse(
        input: &'a [u8],
        max_frame_len: usize,
    ) -> Result<Option<(Self, &'a [u8])>, FrameError> {
        let Some(&len) = input.first_chunk::<2>() else {
            return Ok(None);
        };
        let len = check_len(u16::from_le_bytes(len), max_frame_len)?;
        Ok(input
            .split_at_checked(len)
            .map(|(bytes, rest)| (Self { bytes }, rest)))
    }

    /// Wraps bytes whose length field has already been checked and that hold exactly one frame.
    pub(crate) fn from_checked(bytes: &'a [u8]) -> Self {
        debug_assert!(bytes.len() >= HEADER_LEN);
        debug_assert_eq!(
            usize::from(u16::from_le_bytes([bytes[0], bytes[1]])),
            bytes.len()
        );
        Self { bytes }
    }

    /// The frame's header.
    pub fn header(&self) -> Header {
        let mut h = [0; HEADER_LEN];
        h.copy_from_slice(&self.bytes[..HEADER_LEN]);
        Header::from_bytes(h)
    }

    /// The packet id (`PacketId`), which selects the handler.
    pub fn id(&self) -> u16 {
        u16::from_le_bytes([self.bytes[2], self.bytes[3]])
    }

    /// The packet's `Type` byte.
    pub fn kind(&self) -> u8 {
        self.bytes[4]
    }

    /// The body: everything after the 5-byte header (possibly empty).
    pub fn body(&self) -> &'a [u8] {
        &self.bytes[HEADER_LEN..]
    }

    /// The whole frame as it came off the wire, header included — ready to be sent on as is.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// A reader over the body, for packets laid out as fixed-size structs.
    pub fn reader(&self) -> BodyReader<'a> {
        BodyReader::new(self.body())
    }
}

impl fmt::Debug for Frame<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 16;
        let body = self.body();
        let mut s = f.debug_struct("Frame");
        s.field("id", &self.id())
            .field("kind", &self.kind())
            .field("len", &self.bytes.len());
        if body.len() <= SHOWN {
            s.field("body", &body);
        } else {
            s.field("body_head", &&body[..SHOWN]);
        }
        s.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_splits_frames() {
        let input = [6, 0, 1, 0, 9, b'x', 5, 0, 2, 0, 3, 7];
        let (f, rest) = Frame::parse(&input, 100).unwrap().unwrap();
        assert_eq!(f.id(), 1);
        assert_eq!(f.kind(), 9);
        assert_eq!(f.body(), b"x");
        assert_eq!(f.as_bytes(), &input[..6]);
        assert_eq!(
            f.header(),
            Header {
                len: 6,
                id: 1,
                kind: 9
            }
        );
        let (g, rest) = Frame::parse(rest, 100).unwrap().unwrap();
        assert_eq!((g.id(), g.kind(), g.body()), (2, 3, &[][..]));
        assert_eq!(rest, [7]);
        assert_eq!(Frame::parse(rest, 100), Ok(None));
    }

    #[test]
    fn parse_checks_length_early() {
        assert_eq!(Frame::parse(&[], 100), Ok(None));
        assert_eq!(
            Frame::parse(&[0, 0], 100),
            Err(FrameError::LengthTooSmall { len: 0 })
        );
        assert_eq!(
            Frame::parse(&[101, 0], 100),
            Err(FrameError::FrameTooLarge { len: 101, max: 100 })
        );
        assert_eq!(Frame::parse(&[100, 0, 1, 0, 0], 100), Ok(None));
    }

    #[test]
    fn debug_is_short() {
        let mut bytes = vec![105, 0, 1, 0, 2];
        bytes.extend([0xAA; 100]);
        let (f, _) = Frame::parse(&bytes, 200).unwrap().unwrap();
        let s = format!("{f:?}");
        assert!(s.contains("len: 105"), "{s}");
        assert!(s.len() < 200, "{s}");
    }
}
