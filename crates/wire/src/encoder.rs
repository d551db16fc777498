//! Encoding: [`encode`], [`encode_into`] and [`FrameWriter`].

use bytes::{BufMut, Bytes, BytesMut};

use crate::{FrameError, HEADER_LEN, Header, MAX_FRAME_LEN, fixed_str};

/// Encodes one frame into a new [`Bytes`], with one allocation of exactly the frame's size.
///
/// `Bytes` is reference-counted, so a broadcast is encoded once and the same buffer is queued
/// to every session: cloning it copies no bytes.
///
/// ```
/// let frame = iocp_wire::encode(0x0102, 3, b"hi")?;
/// assert_eq!(&frame[..], [7, 0, 0x02, 0x01, 3, b'h', b'i']);
/// # Ok::<(), iocp_wire::FrameError>(())
/// ```
///
/// # Errors
///
/// [`FrameError::FrameTooLarge`] if header and body exceed [`MAX_FRAME_LEN`].
pub fn encode(id: u16, kind: u8, body: &[u8]) -> Result<Bytes, FrameError> {
    let header = Header::for_body(id, kind, body.len())?;
    let mut buf = BytesMut::with_capacity(usize::from(header.len));
    buf.put_slice(&header.to_bytes());
    buf.put_slice(body);
    Ok(buf.freeze())
}

/// Appends one frame to `dst` (a [`BytesMut`], a `Vec<u8>`, …).
///
/// Several frames encoded into one `BytesMut` and then frozen (`dst.split().freeze()`) make one
/// buffer that can be sent in one go and shared by many sessions.
///
/// # Errors
///
/// [`FrameError::FrameTooLarge`] if header and body exceed [`MAX_FRAME_LEN`]; nothing is
/// written then.
///
/// # Panics
///
/// If `dst` cannot grow to hold the frame (a fixed-size `&mut [u8]` that is too short).
pub fn encode_into<B: BufMut + ?Sized>(
    dst: &mut B,
    id: u16,
    kind: u8,
    body: &[u8],
) -> Result<(), FrameError> {
    let header = Header::for_body(id, kind, body.len())?;
    dst.put_slice(&header.to_bytes());
    dst.put_slice(body);
    Ok(())
}

/// Writes one frame whose body is built in pieces, directly into a [`BytesMut`].
///
/// [`new`](Self::new) writes the header with a placeholder length; the `put_*` methods append
/// body fields; [`finish`](Self::finish) patches the length in. This suits packets laid out as
/// fixed-size C structs, such as the tutorial's
/// `struct LOGIN_REQUEST_PACKET : PACKET_HEADER { char UserID[21]; char UserPW[21]; }`:
///
/// ```
/// use bytes::BytesMut;
/// use iocp_wire::{Decoder, FrameWriter};
///
/// const LOGIN_REQUEST: u16 = 201;
/// let mut buf = BytesMut::new();
/// let mut w = FrameWriter::new(&mut buf, LOGIN_REQUEST, 0);
/// w.put_fixed_str("alice", 21);
/// w.put_fixed_str("secret", 21);
/// w.finish()?;
/// assert_eq!(buf.len(), 5 + 21 + 21);
///
/// Decoder::new().decode(&buf, |frame| {
///     let mut r = frame.reader();
///     assert_eq!(r.fixed_str(21), Ok(&b"alice"[..]));
/// })?;
/// # Ok::<(), iocp_wire::FrameError>(())
/// ```
///
/// A writer dropped without [`finish`](Self::finish) removes what it wrote, so a half-built
/// frame is never left in the buffer.
#[derive(Debug)]
#[must_use = "a frame is kept only when `finish` is called"]
pub struct FrameWriter<'b> {
    buf: &'b mut BytesMut,
    /// Where this frame's header starts in `buf`.
    start: usize,
    finished: bool,
}

impl<'b> FrameWriter<'b> {
    /// Starts a frame at the end of `buf`, writing its header with a placeholder length.
    pub fn new(buf: &'b mut BytesMut, id: u16, kind: u8) -> Self {
        let start = buf.len();
        buf.put_slice(&Header { len: 0, id, kind }.to_bytes());
        Self {
            buf,
            start,
            finished: false,
        }
    }

    /// How many body bytes have been written so far.
    pub fn body_len(&self) -> usize {
        self.buf.len() - self.start - HEADER_LEN
    }

    /// The body written so far, to patch a field written earlier (a count, say).
    pub fn body_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start + HEADER_LEN..]
    }

    /// Appends bytes to the body.
    pub fn put_slice(&mut self, bytes: &[u8]) {
        self.buf.put_slice(bytes);
    }

    /// Appends a `u8`.
    pub fn put_u8(&mut self, v: u8) {
        self.buf.put_u8(v);
    }

    /// Appends a little-endian `u16`.
    pub fn put_u16_le(&mut self, v: u16) {
        self.buf.put_u16_le(v);
    }

    /// Appends a little-endian `u32`.
    pub fn put_u32_le(&mut self, v: u32) {
        self.buf.put_u32_le(v);
    }

    /// Appends a little-endian `u64`.
    pub fn put_u64_le(&mut self, v: u64) {
        self.buf.put_u64_le(v);
    }

    /// Appends `n` zero bytes (padding, or a field to patch later with
    /// [`body_mut`](Self::body_mut)).
    pub fn put_zeros(&mut self, n: usize) {
        self.buf.put_bytes(0, n);
    }

    /// Appends `s` as a NUL-padded `char[n]` field, by the rules of
    /// [`write_fixed_str`](crate::write_fixed_str): at most `n - 1` bytes of `s`, cut at a
    /// character boundary, then NULs up to `n` bytes.
    ///
    /// Returns how many bytes of `s` were stored; less than `s.len()` means truncation.
    pub fn put_fixed_str(&mut self, s: &str, n: usize) -> usize {
        let len = fixed_str::fixed_str_len(s, n);
        self.buf.put_slice(&s.as_bytes()[..len]);
        self.buf.put_bytes(0, n - len);
        len
    }

    /// Writes the frame's length into its header, completing the frame.
    ///
    /// # Errors
    ///
    /// [`FrameError::FrameTooLarge`] if the frame exceeds [`MAX_FRAME_LEN`]; the frame is then
    /// removed from the buffer.
    pub fn finish(mut self) -> Result<(), FrameError> {
        let len = self.buf.len() - self.start;
        let Ok(len16) = u16::try_from(len) else {
            // Drop truncates the buffer back to `start`.
            return Err(FrameError::FrameTooLarge {
                len,
                max: MAX_FRAME_LEN,
            });
        };
        self.buf[self.start..self.start + 2].copy_from_slice(&len16.to_le_bytes());
        self.finished = true;
        Ok(())
    }
}

impl Drop for FrameWriter<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.buf.truncate(self.start);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Frame, MAX_BODY_LEN};

    #[test]
    fn encode_layout() {
        let b = encode(0xABCD, 0x7F, b"xyz").unwrap();
        assert_eq!(&b[..], [8, 0, 0xCD, 0xAB, 0x7F, b'x', b'y', b'z']);
        assert_eq!(encode(1, 2, &[]).unwrap().len(), HEADER_LEN);
    }

    #[test]
    fn encode_limits() {
        let body = vec![0; MAX_BODY_LEN];
        assert_eq!(encode(1, 2, &body).unwrap().len(), MAX_FRAME_LEN);
        let body = vec![0; MAX_BODY_LEN + 1];
        let err = FrameError::FrameTooLarge {
            len: MAX_FRAME_LEN + 1,
            max: MAX_FRAME_LEN,
        };
        assert_eq!(encode(1, 2, &body), Err(err));
        let mut buf = BytesMut::from(&b"keep"[..]);
        assert_eq!(encode_into(&mut buf, 1, 2, &body), Err(err));
        assert_eq!(&buf[..], b"keep", "nothing written on error");
    }

    #[test]
    fn encode_into_appends_to_vec_and_bytes_mut() {
        let mut v = Vec::new();
        encode_into(&mut v, 1, 0, b"a").unwrap();
        encode_into(&mut v, 2, 0, b"bc").unwrap();
        let mut m = BytesMut::new();
        encode_into(&mut m, 1, 0, b"a").unwrap();
        encode_into(&mut m, 2, 0, b"bc").unwrap();
        assert_eq!(&v[..], &m[..]);
        let (f, rest) = Frame::parse(&v, MAX_FRAME_LEN).unwrap().unwrap();
        assert_eq!(f.body(), b"a");
        assert_eq!(
            Frame::parse(rest, MAX_FRAME_LEN).unwrap().unwrap().0.body(),
            b"bc"
        );
    }

    #[test]
    fn writer_matches_encode() {
        let mut buf = BytesMut::from(&b"prefix"[..]);
        let mut w = FrameWriter::new(&mut buf, 9, 4);
        w.put_u8(1);
        w.put_u16_le(2);
        w.put_zeros(4);
        w.put_u64_le(3);
        assert_eq!(w.put_fixed_str("user", 8), 4);
        w.put_slice(b"!");
        w.body_mut()[3..7].copy_from_slice(&5u32.to_le_bytes());
        assert_eq!(w.body_len(), 1 + 2 + 4 + 8 + 8 + 1);
        w.finish().unwrap();

        let mut body = vec![1, 2, 0, 5, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0];
        body.extend_from_slice(b"user\0\0\0\0!");
        assert_eq!(&buf[..6], b"prefix");
        assert_eq!(&buf[6..], &encode(9, 4, &body).unwrap()[..]);
    }

    #[test]
    fn writer_put_u32() {
        let mut buf = BytesMut::new();
        let mut w = FrameWriter::new(&mut buf, 0, 0);
        w.put_u32_le(0x0403_0201);
        w.finish().unwrap();
        assert_eq!(&buf[HEADER_LEN..], [1, 2, 3, 4]);
    }

    #[test]
    fn writer_dropped_or_too_large_leaves_nothing() {
        let mut buf = BytesMut::from(&b"keep"[..]);
        {
            let mut w = FrameWriter::new(&mut buf, 1, 1);
            w.put_slice(b"half");
        }
        assert_eq!(&buf[..], b"keep");
        let mut w = FrameWriter::new(&mut buf, 1, 1);
        w.put_zeros(MAX_BODY_LEN + 1);
        assert_eq!(
            w.finish(),
            Err(FrameError::FrameTooLarge {
                len: MAX_FRAME_LEN + 1,
                max: MAX_FRAME_LEN
            })
        );
        assert_eq!(&buf[..], b"keep");
    }
}
