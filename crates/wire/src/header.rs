//! The 5-byte packet header and the length limits that follow from it.

use crate::FrameError;

/// Size of the header in bytes: `u16 packet_length`, `u16 packet_id`, `u8 type`, packed.
pub const HEADER_LEN: usize = 5;

/// The largest frame the header can describe: `packet_length` is a `u16`.
pub const MAX_FRAME_LEN: usize = u16::MAX as usize;

/// The largest body that fits in a frame of [`MAX_FRAME_LEN`] bytes.
pub const MAX_BODY_LEN: usize = MAX_FRAME_LEN - HEADER_LEN;

/// The decoder's maximum frame length unless configured otherwise: 8 KiB.
///
/// Game and chat packets are small (the tutorial's largest is a chat message of a few hundred
/// bytes), and a decoder may have to buffer one whole frame per session, so the default is far
/// below what the header allows. Raise it with
/// [`Decoder::with_max_frame_len`](crate::Decoder::with_max_frame_len), up to
/// [`MAX_FRAME_LEN`].
pub const DEFAULT_MAX_FRAME_LEN: usize = 8 * 1024;

/// The packet header, as the tutorial's packed struct:
///
/// ```c
/// #pragma pack(push, 1)
/// struct PACKET_HEADER { UINT16 PacketLength; UINT16 PacketId; UINT8 Type; };
/// ```
///
/// On the wire all fields are little-endian, with no padding: 5 bytes in all.
/// `len` counts the whole frame, header included, so a frame with an empty body has `len == 5`.
///
/// A `Header` is plain data: one read off the wire may hold any `len`. The decoder checks it
/// (see [`FrameError`]) before it trusts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Header {
    /// Length of the whole frame in bytes, header included (`PacketLength`).
    #[doc(alias = "packet_length")]
    pub len: u16,
    /// The packet id, which selects the handler (`PacketId`).
    #[doc(alias = "packet_id")]
    pub id: u16,
    /// The packet's `Type` byte; its meaning is the application's.
    #[doc(alias = "type")]
    pub kind: u8,
}

impl Header {
    /// Builds the header of a frame carrying `body_len` bytes of body.
    ///
    /// # Errors
    ///
    /// [`FrameError::FrameTooLarge`] if the frame would be longer than [`MAX_FRAME_LEN`].
    pub fn for_body(id: u16, kind: u8, body_len: usize) -> Result<Self, FrameError> {
        match u16::try_from(body_len.saturating_add(HEADER_LEN)) {
            Ok(len) => Ok(Self { len, id, kind }),
            Err(_) => Err(FrameError::FrameTooLarge {
                len: body_len.saturating_add(HEADER_LEN),
                max: MAX_FRAME_LEN,
            }),
        }
    }

    /// Reads a header from its 5 wire bytes. No check is made on `len`.
    pub const fn from_bytes(bytes: [u8; HEADER_LEN]) -> Self {
        Self {
            len: u16::from_le_bytes([bytes[0], bytes[1]]),
            id: u16::from_le_bytes([bytes[2], bytes[3]]),
            kind: bytes[4],
        }
    }

    /// Reads a header from the first 5 bytes of `bytes`, or `None` if there are fewer.
    /// No check is made on `len`.
    pub fn read(bytes: &[u8]) -> Option<Self> {
        let first: &[u8; HEADER_LEN] = bytes.first_chunk()?;
        Some(Self::from_bytes(*first))
    }

    /// The header's 5 wire bytes.
    pub const fn to_bytes(self) -> [u8; HEADER_LEN] {
        let [l0, l1] = self.len.to_le_bytes();
        let [i0, i1] = self.id.to_le_bytes();
        [l0, l1, i0, i1, self.kind]
    }

    /// The body length that `len` announces (0 if `len` is smaller than the header).
    pub const fn body_len(self) -> usize {
        (self.len as usize).saturating_sub(HEADER_LEN)
    }
}

/// Checks a `packet_length` against the header size and `max`; returns it as a `usize`.
pub(crate) fn check_len(len: u16, max: usize) -> Result<usize, FrameError> {
    let len = usize::from(len);
    if len < HEADER_LEN {
        Err(FrameError::LengthTooSmall { len })
    } else if len > max {
        Err(FrameError::FrameTooLarge { len, max })
    } else {
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_packed_little_endian() {
        let h = Header {
            len: 0x0102,
            id: 0x0304,
            kind: 0x05,
        };
        assert_eq!(h.to_bytes(), [0x02, 0x01, 0x04, 0x03, 0x05]);
        assert_eq!(Header::from_bytes(h.to_bytes()), h);
        assert_eq!(Header::read(&[0x02, 0x01, 0x04, 0x03, 0x05, 0xff]), Some(h));
        assert_eq!(Header::read(&[0x02, 0x01, 0x04, 0x03]), None);
    }

    #[test]
    fn for_body_limits() {
        assert_eq!(Header::for_body(7, 1, 0).unwrap().len, 5);
        assert_eq!(Header::for_body(7, 1, MAX_BODY_LEN).unwrap().len, u16::MAX);
        assert_eq!(
            Header::for_body(7, 1, MAX_BODY_LEN + 1),
            Err(FrameError::FrameTooLarge {
                len: MAX_FRAME_LEN + 1,
                max: MAX_FRAME_LEN
            })
        );
        assert!(Header::for_body(7, 1, usize::MAX).is_err());
    }

    #[test]
    fn body_len_saturates() {
        let h = Header {
            len: 3,
            id: 0,
            kind: 0,
        };
        assert_eq!(h.body_len(), 0);
    }

    #[test]
    fn check_len_bounds() {
        assert_eq!(
            check_len(4, 100),
            Err(FrameError::LengthTooSmall { len: 4 })
        );
        assert_eq!(check_len(5, 100), Ok(5));
        assert_eq!(check_len(100, 100), Ok(100));
        assert_eq!(
            check_len(101, 100),
            Err(FrameError::FrameTooLarge { len: 101, max: 100 })
        );
    }
}
