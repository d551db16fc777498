//! [`Decoder`]: reassembles frames from bytes as they arrive.

use std::fmt;

use crate::header::check_len;
use crate::{DEFAULT_MAX_FRAME_LEN, Frame, FrameError, HEADER_LEN, MAX_FRAME_LEN};

/// Reassembles frames from a byte stream read in pieces of any size.
///
/// One decoder per session. Give it each read's bytes as they come (a read may hold part of a
/// frame, several frames, or the end of one frame and the start of the next) and it hands back
/// every whole frame, in order:
///
/// - Frames that lie entirely inside the bytes given are handed out **in place**, borrowed from
///   those bytes: nothing is copied.
/// - Only a frame that straddles two reads is copied, into the decoder's own buffer, and handed
///   out from there once its last byte arrives. The buffer keeps its capacity (at most one
///   frame, so at most the maximum frame length, in normal use), so in steady state the decoder
///   does not allocate at all.
///
/// The length field is checked as soon as its two bytes are in, so an oversized frame is
/// refused before any of its body is buffered. After an error the decoder is **poisoned**: it
/// returns the same [`FrameError`] for every later call, since the stream has lost its framing.
/// The session should then be closed; [`reset`](Self::reset) makes the decoder reusable for the
/// next session of a pooled slot, keeping its buffer's memory.
///
/// Two ways to take the frames:
///
/// ```
/// use iocp_wire::{Decoder, encode};
///
/// let mut wire = encode(1, 0, b"hello")?.to_vec();
/// wire.extend_from_slice(&encode(2, 0, b"world")?);
///
/// // With a closure, for every whole frame in this read:
/// let mut decoder = Decoder::new();
/// let n = decoder.decode(&wire[..7], |frame| println!("{frame:?}"))?;
/// assert_eq!(n, 0, "first frame not complete yet");
/// let n = decoder.decode(&wire[7..], |frame| assert_eq!(frame.body().len(), 5))?;
/// assert_eq!(n, 2);
///
/// // Or pulled one by one, which allows `?` and an early stop:
/// let mut decoder = Decoder::new();
/// let mut frames = decoder.feed(&wire);
/// while let Some(frame) = frames.next_frame()? {
///     if frame.id() == 1 {
///         break; // the rest is kept for the next call
///     }
/// }
/// drop(frames);
/// assert_eq!(decoder.buffered_len(), 10);
/// # Ok::<(), iocp_wire::FrameError>(())
/// ```
pub struct Decoder {
    /// Bytes received but not yet handed out: usually part of one frame; more after an early
    /// stop. `buf[pos..]` is pending, `buf[..pos]` was handed out and is dropped lazily.
    buf: Vec<u8>,
    pos: usize,
    max_frame_len: usize,
    error: Option<FrameError>,
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The buffered bytes themselves are left out: they may be a whole frame.
        f.debug_struct("Decoder")
            .field("buffered_len", &self.buffered_len())
            .field("max_frame_len", &self.max_frame_len)
            .field("error", &self.error)
            .finish()
    }
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder that accepts frames of up to [`DEFAULT_MAX_FRAME_LEN`] bytes.
    pub const fn new() -> Self {
        Self::with_max_frame_len(DEFAULT_MAX_FRAME_LEN)
    }

    /// A decoder that accepts frames of up to `max_frame_len` bytes, header included.
    ///
    /// # Panics
    ///
    /// If `max_frame_len` is below [`HEADER_LEN`] (no frame could pass) or above
    /// [`MAX_FRAME_LEN`] (no header can say more than `u16::MAX`).
    pub const fn with_max_frame_len(max_frame_len: usize) -> Self {
        assert!(
            HEADER_LEN <= max_frame_len && max_frame_len <= MAX_FRAME_LEN,
            "max_frame_len must be within HEADER_LEN..=MAX_FRAME_LEN (5..=65535)"
        );
        Self {
            buf: Vec::new(),
            pos: 0,
            max_frame_len,
            error: None,
        }
    }

    /// The largest frame accepted, header included.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// How many received bytes wait in the decoder's buffer for the rest of their frame.
    ///
    /// Non-zero when the peer closes means that it closed in the middle of a frame.
    pub fn buffered_len(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The error that poisoned this decoder, if any.
    pub fn error(&self) -> Option<FrameError> {
        self.error
    }

    /// Forgets buffered bytes and any error, keeping the buffer's memory, so the decoder can
    /// serve the next session of a pooled slot.
    pub fn reset(&mut self) {
        self.buf.clear();
        self.pos = 0;
        self.error = None;
    }

    /// Gives the decoder the next bytes read, and returns a cursor over the whole frames
    /// they complete.
    ///
    /// Call [`Frames::next_frame`] until it returns `Ok(None)` (the bytes are used up; a
    /// trailing partial frame has been buffered) or an error. Frames not taken when the cursor
    /// is dropped stay buffered, in order, and come first on the next call.
    pub fn feed<'d, 'a>(&'d mut self, input: &'a [u8]) -> Frames<'d, 'a> {
        Frames {
            decoder: self,
            input,
        }
    }

    /// Gives the decoder the next bytes read and calls `on_frame` for every whole frame, in
    /// order. Returns how many frames were handed out.
    ///
    /// # Errors
    ///
    /// The [`FrameError`] of the first bad header; the frames before it have been handed out.
    /// The decoder is then poisoned.
    pub fn decode(
        &mut self,
        input: &[u8],
        mut on_frame: impl FnMut(Frame<'_>),
    ) -> Result<usize, FrameError> {
        let mut frames = self.feed(input);
        let mut n = 0;
        while let Some(frame) = frames.next_frame()? {
            on_frame(frame);
            n += 1;
        }
        Ok(n)
    }

    fn fail(&mut self, error: FrameError) -> FrameError {
        self.error = Some(error);
        self.buf.clear();
        self.pos = 0;
        error
    }

    /// Moves `input` to the end of the buffer.
    fn stash(&mut self, input: &[u8]) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(input);
    }
}

/// The frames completed by one read: a cursor returned by [`Decoder::feed`].
///
/// Not an [`Iterator`], because a frame that straddled two reads is lent from the decoder's
/// buffer, which the next step reuses: each frame lives until the next call. Use
/// `while let Some(frame) = frames.next_frame()? { … }`.
///
/// Dropping the cursor early keeps the bytes not yet decoded in the decoder, so no frame is
/// lost.
#[derive(Debug)]
#[must_use = "frames are decoded only when `next_frame` is called"]
pub struct Frames<'d, 'a> {
    decoder: &'d mut Decoder,
    /// The part of the read not yet decoded nor buffered.
    input: &'a [u8],
}

impl Frames<'_, '_> {
    /// The next whole frame, or `Ok(None)` when the bytes given are used up.
    ///
    /// # Errors
    ///
    /// [`FrameError::LengthTooSmall`] or [`FrameError::FrameTooLarge`] for a bad length field.
    /// The decoder is then poisoned and returns the same error from now on.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, FrameError> {
        let dec = &mut *self.decoder;
        if let Some(error) = dec.error {
            return Err(error);
        }
        if dec.pos == dec.buf.len() {
            // Fast path: nothing buffered, so frames come straight from the input.
            if dec.pos != 0 {
                dec.buf.clear();
                dec.pos = 0;
            }
            return match Frame::parse(self.input, dec.max_frame_len) {
                Ok(Some((frame, rest))) => {
                    self.input = rest;
                    Ok(Some(frame))
                }
                Ok(None) => {
                    dec.stash(self.input);
                    self.input = &[];
                    Ok(None)
                }
                Err(error) => {
                    self.input = &[];
                    Err(dec.fail(error))
                }
            };
        }
        // Buffered bytes come first; top them up from the input until they hold a frame.
        if dec.buf.len() - dec.pos < 2 && !top_up(dec, &mut self.input, 2) {
            return Ok(None);
        }
        let len = u16::from_le_bytes([dec.buf[dec.pos], dec.buf[dec.pos + 1]]);
        let len = match check_len(len, dec.max_frame_len) {
            Ok(len) => len,
            Err(error) => {
                self.input = &[];
                return Err(dec.fail(error));
            }
        };
        if dec.buf.len() - dec.pos < len && !top_up(dec, &mut self.input, len) {
            return Ok(None);
        }
        let start = dec.pos;
        dec.pos += len;
        Ok(Some(Frame::from_checked(&dec.buf[start..start + len])))
    }
}

/// Moves bytes from the front of `input` to the buffer until `buf[pos..]` holds `want` bytes.
/// Returns whether it does; if not, all of `input` has been moved.
fn top_up(dec: &mut Decoder, input: &mut &[u8], want: usize) -> bool {
    let missing = want - (dec.buf.len() - dec.pos);
    let (taken, rest) = input.split_at(missing.min(input.len()));
    if dec.pos > 0 && dec.buf.capacity() - dec.buf.len() < taken.len() {
        // Reuse the consumed front of the buffer rather than growing it.
        dec.buf.drain(..dec.pos);
        dec.pos = 0;
    }
    dec.buf.reserve(missing);
    dec.buf.extend_from_slice(taken);
    *input = rest;
    taken.len() == missing
}

impl Drop for Frames<'_, '_> {
    fn drop(&mut self) {
        if !self.input.is_empty() && self.decoder.error.is_none() {
            self.decoder.stash(self.input);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode;

    fn stream() -> Vec<u8> {
        let mut wire = Vec::new();
        for (id, body) in [(1u16, &b"abc"[..]), (2, b""), (3, b"0123456789")] {
            wire.extend_from_slice(&encode(id, 7, body).unwrap());
        }
        wire
    }

    fn collect(dec: &mut Decoder, input: &[u8]) -> Result<Vec<(u16, Vec<u8>)>, FrameError> {
        let mut out = Vec::new();
        dec.decode(input, |f| out.push((f.id(), f.body().to_vec())))?;
        Ok(out)
    }

    #[test]
    fn whole_stream_at_once_buffers_nothing() {
        let mut dec = Decoder::new();
        let frames = collect(&mut dec, &stream()).unwrap();
        assert_eq!(frames.len(), 3);
        assert_eq!(dec.buffered_len(), 0);
        assert_eq!(dec.buf.capacity(), 0, "no frame straddled, nothing copied");
    }

    #[test]
    fn byte_by_byte() {
        let mut dec = Decoder::new();
        let mut frames = Vec::new();
        for b in stream() {
            frames.extend(collect(&mut dec, &[b]).unwrap());
        }
        assert_eq!(
            frames,
            vec![
                (1, b"abc".to_vec()),
                (2, vec![]),
                (3, b"0123456789".to_vec())
            ]
        );
        assert_eq!(dec.buffered_len(), 0);
    }

    #[test]
    fn early_stop_keeps_the_rest() {
        let wire = stream();
        let mut dec = Decoder::new();
        {
            let mut frames = dec.feed(&wire[..4]);
            assert!(frames.next_frame().unwrap().is_none());
        }
        {
            let mut frames = dec.feed(&wire[4..]);
            let f = frames.next_frame().unwrap().unwrap();
            assert_eq!(f.id(), 1);
        }
        assert_eq!(dec.buffered_len(), wire.len() - 8);
        {
            let mut frames = dec.feed(&[]);
            assert_eq!(frames.next_frame().unwrap().unwrap().id(), 2);
        }
        let rest = collect(&mut dec, &[]).unwrap();
        assert_eq!(rest, vec![(3, b"0123456789".to_vec())]);
        assert_eq!(dec.buffered_len(), 0);
    }

    #[test]
    fn early_stop_with_partial_tail_then_more_input() {
        let wire = stream();
        let mut dec = Decoder::new();
        {
            let mut frames = dec.feed(&wire[..wire.len() - 3]);
            assert_eq!(frames.next_frame().unwrap().unwrap().id(), 1);
        }
        let rest = collect(&mut dec, &wire[wire.len() - 3..]).unwrap();
        assert_eq!(rest.iter().map(|f| f.0).collect::<Vec<_>>(), [2, 3]);
    }

    #[test]
    fn errors_poison() {
        let mut dec = Decoder::with_max_frame_len(10);
        let mut wire = encode(1, 0, b"ok").unwrap().to_vec();
        wire.extend_from_slice(&[11, 0]);
        let mut seen = 0;
        let err = dec.decode(&wire, |_| seen += 1).unwrap_err();
        assert_eq!(seen, 1);
        assert_eq!(err, FrameError::FrameTooLarge { len: 11, max: 10 });
        assert_eq!(dec.error(), Some(err));
        assert_eq!(dec.decode(&stream(), |_| seen += 1), Err(err));
        assert_eq!(seen, 1);
        dec.reset();
        assert_eq!(collect(&mut dec, &wire[..7]).unwrap().len(), 1);
    }

    #[test]
    fn too_small_detected_across_reads() {
        let mut dec = Decoder::new();
        assert_eq!(collect(&mut dec, &[4]), Ok(vec![]));
        assert_eq!(
            collect(&mut dec, &[0, 1, 2]),
            Err(FrameError::LengthTooSmall { len: 4 })
        );
        assert_eq!(dec.buffered_len(), 0);
    }

    #[test]
    fn oversized_refused_before_body() {
        let mut dec = Decoder::with_max_frame_len(MAX_FRAME_LEN);
        assert_eq!(collect(&mut dec, &[0xff]), Ok(vec![]));
        assert_eq!(collect(&mut dec, &[0xff]), Ok(vec![]));
        assert_eq!(dec.buffered_len(), 2);
        let mut dec = Decoder::new();
        assert_eq!(
            collect(&mut dec, &[0xff, 0xff]),
            Err(FrameError::FrameTooLarge {
                len: 0xffff,
                max: DEFAULT_MAX_FRAME_LEN
            })
        );
    }

    #[test]
    fn buffer_capacity_is_reused() {
        let wire = stream();
        let mut dec = Decoder::new();
        for _ in 0..3 {
            for chunk in wire.chunks(5) {
                collect(&mut dec, chunk).unwrap();
            }
        }
        let cap = dec.buf.capacity();
        for _ in 0..100 {
            for chunk in wire.chunks(5) {
                collect(&mut dec, chunk).unwrap();
            }
        }
        assert_eq!(dec.buf.capacity(), cap);
        assert!(cap <= 64, "capacity {cap}");
    }

    #[test]
    #[should_panic(expected = "max_frame_len")]
    fn max_below_header_panics() {
        let _ = Decoder::with_max_frame_len(4);
    }

    #[test]
    #[should_panic(expected = "max_frame_len")]
    fn max_above_u16_panics() {
        let _ = Decoder::with_max_frame_len(MAX_FRAME_LEN + 1);
    }
}
