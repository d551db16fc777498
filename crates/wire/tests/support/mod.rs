//! Shared helpers for the `iocp-wire` integration tests.

#![allow(dead_code)] // each test file uses its own subset

use iocp_wire::{Decoder, Frame, FrameError, encode};
use proptest::prelude::*;

/// A frame as owned values, to compare decoder outputs.
pub type Owned = (u16, u8, Vec<u8>);

/// Owns a frame's id, kind and body.
pub fn own(frame: Frame<'_>) -> Owned {
    (frame.id(), frame.kind(), frame.body().to_vec())
}

/// What a decoder made of a whole stream: the frames, then either the error or the number of
/// bytes left buffered.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub frames: Vec<Owned>,
    pub end: Result<usize, FrameError>,
}

/// The reference: `Frame::parse` in a loop over the whole stream, no decoder involved.
pub fn reference(stream: &[u8], max: usize) -> Outcome {
    let mut frames = Vec::new();
    let mut rest = stream;
    loop {
        match Frame::parse(rest, max) {
            Ok(Some((frame, tail))) => {
                check_frame(frame, max);
                frames.push(own(frame));
                rest = tail;
            }
            Ok(None) => {
                return Outcome {
                    frames,
                    end: Ok(rest.len()),
                };
            }
            Err(e) => {
                return Outcome {
                    frames,
                    end: Err(e),
                };
            }
        }
    }
}

/// Feeds `stream` to a fresh decoder in pieces of the given sizes (cycled), with `decode`.
pub fn decode_in_pieces(stream: &[u8], max: usize, sizes: &[usize]) -> Outcome {
    let mut decoder = Decoder::with_max_frame_len(max);
    let mut frames = Vec::new();
    for piece in pieces(stream, sizes) {
        let result = decoder.decode(piece, |frame| {
            check_frame(frame, max);
            frames.push(own(frame));
        });
        if let Err(e) = result {
            assert_eq!(decoder.error(), Some(e));
            assert_eq!(
                decoder.decode(b"\x05\0\0\0\0", |_| panic!("poisoned")),
                Err(e)
            );
            return Outcome {
                frames,
                end: Err(e),
            };
        }
    }
    Outcome {
        frames,
        end: Ok(decoder.buffered_len()),
    }
}

/// Like [`decode_in_pieces`], but pulls frames with `feed`/`next_frame` and drops the cursor
/// after at most `take` frames per piece (so leftovers are carried in the decoder), then
/// drains with empty reads at the end.
pub fn pull_in_pieces(stream: &[u8], max: usize, sizes: &[usize], take: usize) -> Outcome {
    let mut decoder = Decoder::with_max_frame_len(max);
    let mut frames = Vec::new();
    let take = take.max(1);
    let mut step = |decoder: &mut Decoder, piece: &[u8]| -> Result<usize, FrameError> {
        let mut cursor = decoder.feed(piece);
        let mut n = 0;
        while n < take {
            match cursor.next_frame()? {
                Some(frame) => {
                    check_frame(frame, max);
                    frames.push(own(frame));
                    n += 1;
                }
                None => break,
            }
        }
        Ok(n)
    };
    for piece in pieces(stream, sizes) {
        if let Err(e) = step(&mut decoder, piece) {
            return Outcome {
                frames,
                end: Err(e),
            };
        }
    }
    loop {
        match step(&mut decoder, &[]) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                return Outcome {
                    frames,
                    end: Err(e),
                };
            }
        }
    }
    Outcome {
        frames,
        end: Ok(decoder.buffered_len()),
    }
}

/// Invariants every frame handed out must satisfy.
pub fn check_frame(frame: Frame<'_>, max: usize) {
    let bytes = frame.as_bytes();
    assert!(bytes.len() >= iocp_wire::HEADER_LEN && bytes.len() <= max);
    let header = frame.header();
    assert_eq!(usize::from(header.len), bytes.len());
    assert_eq!(header.id, frame.id());
    assert_eq!(header.kind, frame.kind());
    assert_eq!(frame.body(), &bytes[iocp_wire::HEADER_LEN..]);
    assert_eq!(header.body_len(), frame.body().len());
}

/// Splits `stream` into pieces whose sizes cycle through `sizes` (0 means an empty read).
pub fn pieces<'a>(stream: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = stream;
    let mut i = 0;
    while !rest.is_empty() {
        let n = if sizes.is_empty() {
            rest.len()
        } else {
            sizes[i % sizes.len()].min(rest.len())
        };
        let (head, tail) = rest.split_at(n);
        out.push(head);
        rest = tail;
        i += 1;
        if i > 4 * stream.len() + 8 {
            // Only zero sizes: finish in one piece.
            out.push(rest);
            break;
        }
    }
    out
}

/// Encodes frames back to back.
pub fn encode_all(frames: &[Owned]) -> Vec<u8> {
    let mut wire = Vec::new();
    for (id, kind, body) in frames {
        wire.extend_from_slice(&encode(*id, *kind, body).expect("body fits"));
    }
    wire
}

/// Frames with bodies of up to `max_body` bytes, with a bias to small ones.
pub fn frames(max_body: usize) -> impl Strategy<Value = Vec<Owned>> {
    let body = prop_oneof![
        3 => proptest::collection::vec(any::<u8>(), 0..=8.min(max_body)),
        1 => proptest::collection::vec(any::<u8>(), 0..=max_body),
    ];
    proptest::collection::vec((any::<u16>(), any::<u8>(), body), 0..12)
}

/// Read sizes: mostly small, some 0 (an empty read), some large.
pub fn read_sizes() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(
        prop_oneof![4 => 0usize..8, 2 => 8usize..64, 1 => 64usize..2048],
        1..16,
    )
}
