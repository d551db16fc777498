//! Property tests of the encoders and the fixed-size string helpers.

mod support;

use bytes::BytesMut;
use iocp_wire::{
    Decoder, FrameWriter, HEADER_LEN, MAX_FRAME_LEN, encode, encode_into, fixed_str_len,
    read_fixed_str, read_fixed_utf8, write_fixed_str,
};
use proptest::prelude::*;
use support::*;

proptest! {
    /// encode → decode gives back id, kind and body; the three encoders agree byte for byte.
    #[test]
    fn round_trip(frames in frames(2000), sizes in read_sizes()) {
        let wire = encode_all(&frames);

        let mut into = BytesMut::new();
        let mut written = BytesMut::new();
        for (id, kind, body) in &frames {
            encode_into(&mut into, *id, *kind, body).unwrap();
            let mut w = FrameWriter::new(&mut written, *id, *kind);
            for chunk in body.chunks(7) {
                w.put_slice(chunk);
            }
            prop_assert_eq!(w.body_len(), body.len());
            w.finish().unwrap();
        }
        prop_assert_eq!(&into[..], &wire[..]);
        prop_assert_eq!(&written[..], &wire[..]);

        let out = decode_in_pieces(&wire, MAX_FRAME_LEN, &sizes);
        prop_assert_eq!(out, Outcome { frames, end: Ok(0) });
    }

    /// A decoded frame's bytes re-encode to themselves (a frame can be forwarded as is).
    #[test]
    fn as_bytes_is_the_encoding(id: u16, kind: u8, body in proptest::collection::vec(any::<u8>(), 0..100)) {
        let wire = encode(id, kind, &body).unwrap();
        prop_assert_eq!(wire.len(), HEADER_LEN + body.len());
        let mut n = 0;
        Decoder::new().decode(&wire, |f| {
            assert_eq!(f.as_bytes(), &wire[..]);
            n += 1;
        }).unwrap();
        prop_assert_eq!(n, 1);
    }

    /// Fixed strings: the stored prefix is what is read back, is valid UTF-8, leaves a NUL,
    /// and is the longest prefix allowed by the rules.
    #[test]
    fn fixed_str_rules(s in "\\PC{0,12}|[a-z\u{0}]{0,12}|[가-힣]{0,8}", n in 0usize..30) {
        let mut field = vec![0xAA; n];
        let stored = write_fixed_str(&mut field, &s);
        prop_assert_eq!(stored, fixed_str_len(&s, n));
        prop_assert!(stored < n || n == 0);
        prop_assert!(field[stored..].iter().all(|&b| b == 0));
        prop_assert_eq!(read_fixed_str(&field), &s.as_bytes()[..stored]);
        prop_assert_eq!(read_fixed_utf8(&field).unwrap(), &s[..stored]);
        let before_nul = s.find('\0').unwrap_or(s.len());
        prop_assert!(stored <= before_nul);
        if stored < before_nul {
            // Truncated: the next character would not have fitted before the last byte.
            let next = s[stored..].chars().next().unwrap().len_utf8();
            prop_assert!(stored + next > n.saturating_sub(1));
        }

        let mut buf = BytesMut::new();
        let mut w = FrameWriter::new(&mut buf, 1, 1);
        prop_assert_eq!(w.put_fixed_str(&s, n), stored);
        w.finish().unwrap();
        prop_assert_eq!(&buf[HEADER_LEN..], &field[..]);
    }
}
