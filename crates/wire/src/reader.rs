//! [`BodyReader`]: read a frame's body field by field, without panicking on short input.

use crate::{FrameError, fixed_str};

/// Reads a frame body laid out as a packed little-endian struct, field by field.
///
/// Every read checks the length first and returns [`FrameError::BodyTooShort`] instead of
/// panicking, so a peer that sends a short packet costs its own session and nothing more.
/// Bytes left over after the last field are not an error; check
/// [`remaining`](Self::remaining) if the packet must be exact.
///
/// ```
/// use iocp_wire::{BodyReader, FrameError};
///
/// // struct LOGIN_REQUEST_PACKET { char UserID[21]; char UserPW[21]; } (after the header)
/// fn parse_login(body: &[u8]) -> Result<(&[u8], &[u8]), FrameError> {
///     let mut r = BodyReader::new(body);
///     Ok((r.fixed_str(21)?, r.fixed_str(21)?))
/// }
///
/// let mut body = [0u8; 42];
/// body[..5].copy_from_slice(b"alice");
/// body[21..24].copy_from_slice(b"pw1");
/// assert_eq!(parse_login(&body)?, (&b"alice"[..], &b"pw1"[..]));
/// assert!(parse_login(&body[..30]).is_err());
/// # Ok::<(), FrameError>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub struct BodyReader<'a> {
    rest: &'a [u8],
}

impl<'a> BodyReader<'a> {
    /// A reader at the start of `body`.
    pub fn new(body: &'a [u8]) -> Self {
        Self { rest: body }
    }

    /// How many bytes are left to read.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// The bytes left to read, without consuming them.
    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }

    /// Reads the next `n` bytes.
    ///
    /// # Errors
    ///
    /// [`FrameError::BodyTooShort`] if fewer than `n` bytes are left; nothing is consumed then.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        match self.rest.split_at_checked(n) {
            Some((head, rest)) => {
                self.rest = rest;
                Ok(head)
            }
            None => Err(FrameError::BodyTooShort {
                needed: n,
                available: self.rest.len(),
            }),
        }
    }

    /// Reads the next `N` bytes as an array.
    ///
    /// # Errors
    ///
    /// [`FrameError::BodyTooShort`] if fewer than `N` bytes are left; nothing is consumed then.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], FrameError> {
        match self.rest.split_first_chunk::<N>() {
            Some((head, rest)) => {
                self.rest = rest;
                Ok(*head)
            }
            None => Err(FrameError::BodyTooShort {
                needed: N,
                available: self.rest.len(),
            }),
        }
    }

    /// Reads a `u8`.
    ///
    /// # Errors
    ///
    /// [`FrameError::BodyTooShort`] if the body is exhausted.
    pub fn u8(&mut self) -> Result<u8, FrameError> {
        self.array::<1>().map(|[b]| b)
    }

    /// Reads a little-endian `u16`.
    ///
    /// # Errors
    ///
    /// [`FrameError::BodyTooShort`] if fewer than 2 bytes are left.
    pub fn u16_le(&mut self) -> Result<u16, FrameError> {
        self.array().map(u16::from_le_bytes)
    }

    /// Reads a little-endian `u32`.
    ///
    /// # Errors
    ///
    /// [`FrameError::BodyTooShort`] if fewer than 4 bytes are left.
    pub fn u32_le(&mut self) -> Result<u32, FrameError> {
        self.array().map(u32::from_le_bytes)
    }

    /// Reads a little-endian `u64`.
    ///
    /// # Errors
    ///
    /// [`FrameError::BodyTooShort`] if fewer than 8 bytes are left.
    pub fn u64_le(&mut self) -> Result<u64, FrameError> {
        self.array().map(u64::from_le_bytes)
    }

    /// Reads a NUL-padded `char[n]` field and returns its bytes up to the first NUL
    /// (see [`read_fixed_str`](crate::read_fixed_str)). All `n` bytes are consumed.
    ///
    /// # Errors
    ///
    /// [`FrameError::BodyTooShort`] if fewer than `n` bytes are left.
    pub fn fixed_str(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        self.bytes(n).map(fixed_str::read_fixed_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields_in_order() {
        let body = [
            1, 2, 0, 3, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, b'h', b'i', 0, 0, 9,
        ];
        let mut r = BodyReader::new(&body);
        assert_eq!(r.u8(), Ok(1));
        assert_eq!(r.u16_le(), Ok(2));
        assert_eq!(r.u32_le(), Ok(3));
        assert_eq!(r.u64_le(), Ok(4));
        assert_eq!(r.fixed_str(4), Ok(&b"hi"[..]));
        assert_eq!(r.remaining(), 1);
        assert_eq!(
            r.u16_le(),
            Err(FrameError::BodyTooShort {
                needed: 2,
                available: 1
            })
        );
        assert_eq!(r.rest(), [9], "a failed read consumes nothing");
        assert_eq!(r.array::<1>(), Ok([9]));
        assert_eq!(r.bytes(0), Ok(&[][..]));
    }
}
