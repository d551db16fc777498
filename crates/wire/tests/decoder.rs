//! Property tests of the frame decoder: any split gives the same frames as the reference,
//! arbitrary bytes never panic, and errors are typed and sticky.

mod support;

use iocp_wire::{Decoder, FrameError, HEADER_LEN, MAX_FRAME_LEN};
use proptest::prelude::*;
use support::*;

proptest! {
    /// A valid stream decodes to exactly its frames, however the reads split it.
    #[test]
    fn any_split_of_valid_stream(frames in frames(300), sizes in read_sizes()) {
        let wire = encode_all(&frames);
        let max = MAX_FRAME_LEN;
        let expected = Outcome { frames: frames.clone(), end: Ok(0) };
        prop_assert_eq!(&reference(&wire, max), &expected);
        prop_assert_eq!(&decode_in_pieces(&wire, max, &sizes), &expected);
    }

    /// Stopping early and resuming loses and reorders nothing.
    #[test]
    fn early_stops_lose_nothing(frames in frames(100), sizes in read_sizes(), take in 1usize..4) {
        let wire = encode_all(&frames);
        let expected = Outcome { frames, end: Ok(0) };
        prop_assert_eq!(&pull_in_pieces(&wire, MAX_FRAME_LEN, &sizes, take), &expected);
    }

    /// A stream cut anywhere gives the frames before the cut and buffers the rest.
    #[test]
    fn truncated_stream_buffers_tail(frames in frames(100), cut in any::<prop::sample::Index>(), sizes in read_sizes()) {
        let wire = encode_all(&frames);
        let cut = cut.index(wire.len() + 1);
        let want = reference(&wire[..cut], MAX_FRAME_LEN);
        prop_assert!(want.end.is_ok());
        prop_assert_eq!(&decode_in_pieces(&wire[..cut], MAX_FRAME_LEN, &sizes), &want);
    }

    /// Arbitrary bytes: never a panic, and the same frames and the same end (typed error or
    /// buffered tail) as the reference, for any split and any maximum.
    #[test]
    fn arbitrary_bytes(
        stream in proptest::collection::vec(any::<u8>(), 0..600),
        max in prop_oneof![Just(HEADER_LEN), HEADER_LEN..64, Just(MAX_FRAME_LEN)],
        sizes in read_sizes(),
        take in 1usize..4,
    ) {
        let want = reference(&stream, max);
        if let Err(e) = want.end {
            match e {
                FrameError::LengthTooSmall { len } => prop_assert!(len < HEADER_LEN),
                FrameError::FrameTooLarge { len, max: m } => prop_assert!(len > m && m == max),
                other => prop_assert!(false, "unexpected error {:?}", other),
            }
            prop_assert!(!e.to_string().is_empty());
        }
        prop_assert_eq!(&decode_in_pieces(&stream, max, &sizes), &want);
        prop_assert_eq!(&pull_in_pieces(&stream, max, &sizes, take), &want);
    }

    /// Streams that mix valid frames with a bad header: the frames before it come out, then
    /// the typed error.
    #[test]
    fn valid_then_bad(frames in frames(59), bad_len in prop_oneof![0u16..5, 65u16..], sizes in read_sizes()) {
        const MAX: usize = 64;
        let mut wire = encode_all(&frames);
        wire.extend_from_slice(&bad_len.to_le_bytes());
        wire.extend_from_slice(&[0; 10]);
        let err = if bad_len < 5 {
            FrameError::LengthTooSmall { len: usize::from(bad_len) }
        } else {
            FrameError::FrameTooLarge { len: usize::from(bad_len), max: MAX }
        };
        let expected = Outcome { frames, end: Err(err) };
        prop_assert_eq!(&decode_in_pieces(&wire, MAX, &sizes), &expected);
        prop_assert_eq!(&pull_in_pieces(&wire, MAX, &sizes, 1), &expected);
    }
}

#[test]
fn decoder_is_reusable_after_reset() {
    let wire = encode_all(&[(1, 2, b"abc".to_vec())]);
    let mut decoder = Decoder::with_max_frame_len(HEADER_LEN);
    assert!(decoder.decode(&wire, |_| ()).is_err());
    decoder.reset();
    assert!(decoder.error().is_none());
    let empty = encode_all(&[(1, 2, Vec::new())]);
    assert_eq!(decoder.decode(&empty, |_| ()), Ok(1));
}
