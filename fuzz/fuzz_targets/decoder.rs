//! Fuzzes `iocp_wire::Decoder`: arbitrary bytes, fed in arbitrary reads, with arbitrary early
//! stops, against a reference that parses the whole stream at once with `Frame::parse`.
//!
//! Checked for every input:
//! - no panic, whatever the bytes, the split and the maximum frame length;
//! - the decoder hands out exactly the reference's frames, in order, and ends the same way:
//!   the same typed error, or the same number of bytes left buffered (less than one frame);
//! - every frame is well formed (length field = its size, within 5..=max) and re-encodes to
//!   its own bytes;
//! - after an error the decoder is poisoned: it returns the same error and no frame.

#![no_main]

use arbitrary::Arbitrary;
use iocp_wire::{Decoder, Frame, FrameError, HEADER_LEN, encode};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    /// The decoder's maximum frame length (raised to at least the header size).
    max: u16,
    /// Read sizes, cycled (0 is an empty read); none means one read of everything.
    sizes: Vec<u8>,
    /// Frames pulled per read before the cursor is dropped (0: all of them).
    take: u8,
    /// The byte stream.
    data: Vec<u8>,
}

type Owned = (u16, u8, Vec<u8>);

#[derive(Debug, PartialEq)]
struct Outcome {
    frames: Vec<Owned>,
    end: Result<usize, FrameError>,
}

fn check(frame: Frame<'_>, max: usize) -> Owned {
    let bytes = frame.as_bytes();
    assert!(bytes.len() >= HEADER_LEN && bytes.len() <= max);
    let header = frame.header();
    assert_eq!(usize::from(header.len), bytes.len());
    assert_eq!((header.id, header.kind), (frame.id(), frame.kind()));
    assert_eq!(frame.body(), &bytes[HEADER_LEN..]);
    let again = encode(frame.id(), frame.kind(), frame.body()).expect("a decoded frame fits");
    assert_eq!(&again[..], bytes);
    (frame.id(), frame.kind(), frame.body().to_vec())
}

fn reference(data: &[u8], max: usize) -> Outcome {
    let mut frames = Vec::new();
    let mut rest = data;
    loop {
        match Frame::parse(rest, max) {
            Ok(Some((frame, tail))) => {
                frames.push(check(frame, max));
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

fn reads<'a>(data: &'a [u8], sizes: &[u8]) -> Vec<&'a [u8]> {
    if sizes.is_empty() {
        return vec![data];
    }
    let mut out = Vec::new();
    let mut rest = data;
    for &n in sizes.iter().cycle() {
        if rest.is_empty() || out.len() > 2 * data.len() + 16 {
            break;
        }
        let (head, tail) = rest.split_at(usize::from(n).min(rest.len()));
        out.push(head);
        rest = tail;
    }
    out.push(rest);
    out
}

/// Feeds the reads with `Decoder::decode`.
fn with_decode(data: &[u8], max: usize, sizes: &[u8]) -> Outcome {
    let mut decoder = Decoder::with_max_frame_len(max);
    let mut frames = Vec::new();
    for read in reads(data, sizes) {
        if let Err(e) = decoder.decode(read, |f| frames.push(check(f, max))) {
            assert_eq!(decoder.error(), Some(e));
            assert_eq!(decoder.buffered_len(), 0);
            assert_eq!(
                decoder.decode(&[5, 0, 0, 0, 0], |_| panic!("poisoned")),
                Err(e)
            );
            return Outcome {
                frames,
                end: Err(e),
            };
        }
        assert!(
            decoder.buffered_len() < max,
            "more than a partial frame buffered"
        );
    }
    Outcome {
        frames,
        end: Ok(decoder.buffered_len()),
    }
}

/// Pulls at most `take` frames per read with `feed`/`next_frame`, then drains.
fn with_feed(data: &[u8], max: usize, sizes: &[u8], take: usize) -> Outcome {
    let mut decoder = Decoder::with_max_frame_len(max);
    let mut frames = Vec::new();
    let mut step = |decoder: &mut Decoder, read: &[u8]| -> Result<usize, FrameError> {
        let mut cursor = decoder.feed(read);
        let mut n = 0;
        while n < take {
            let Some(frame) = cursor.next_frame()? else {
                break;
            };
            frames.push(check(frame, max));
            n += 1;
        }
        Ok(n)
    };
    let mut end = Ok(());
    for read in reads(data, sizes) {
        if let Err(e) = step(&mut decoder, read) {
            end = Err(e);
            break;
        }
    }
    while end.is_ok() {
        match step(&mut decoder, &[]) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => end = Err(e),
        }
    }
    Outcome {
        frames,
        end: end.map(|()| decoder.buffered_len()),
    }
}

fuzz_target!(|input: Input| {
    let max = usize::from(input.max).max(HEADER_LEN);
    let take = if input.take == 0 {
        usize::MAX
    } else {
        usize::from(input.take)
    };
    let want = reference(&input.data, max);
    match want.end {
        Ok(tail) => assert!(tail < max),
        Err(FrameError::LengthTooSmall { len }) => assert!(len < HEADER_LEN),
        Err(FrameError::FrameTooLarge { len, max: m }) => assert!(m == max && len > max),
        Err(other) => panic!("unexpected error {other:?}"),
    }
    assert_eq!(with_decode(&input.data, max, &input.sizes), want);
    assert_eq!(with_feed(&input.data, max, &input.sizes, take), want);
});
