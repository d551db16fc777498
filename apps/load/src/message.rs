//! What the load generator sends, and how it checks every byte that comes back.
//!
//! Two layouts, chosen by the message size:
//!
//! - **Framed** (`size >= HEADER_LEN`): each message starts with a little-endian header
//!   `{ u32 connection, u64 sequence, u64 send time in ns }`, followed by a pseudo-random pattern
//!   that depends on (connection, sequence). A lost, duplicated or reordered message shows up as a
//!   wrong sequence number, bytes of another connection as a wrong connection id, and a damaged
//!   byte wherever it is.
//! - **Stream** (`size < HEADER_LEN`): no header; byte `p` of a connection's stream is a pattern
//!   byte that depends on (connection, `p`). Send times are kept in the connection's in-flight
//!   queue only.
//!
//! In both layouts the receiver knows exactly which bytes must arrive next (the send time of the
//! oldest message in flight included), so verification is a comparison against the expected
//! bytes, done incrementally as the bytes arrive, split anywhere. The pattern comes from one table
//! of random bytes, so both sending and checking are slice copies and comparisons.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

/// Bytes of the framed header: connection id (u32), sequence (u64), send time (u64).
pub const HEADER_LEN: usize = 20;
/// Period of the pattern table (a prime, so that no message size lines up with it).
const PERIOD: usize = 8191;
/// Messages are encoded into blocks of at least this size, split off one message at a time.
const ARENA_BLOCK: usize = 64 * 1024;

/// The pattern: `PERIOD` random bytes, stored twice so that any window of up to `PERIOD` bytes
/// starting below `PERIOD` is contiguous.
pub struct Pattern {
    table: Box<[u8]>,
}

impl Default for Pattern {
    fn default() -> Self {
        Self::new()
    }
}

impl Pattern {
    /// Builds the table (the same on every run).
    pub fn new() -> Pattern {
        let mut state = 0x1f2e_3d4c_5b6a_7988_u64;
        let mut table = vec![0u8; 2 * PERIOD];
        for chunk in table[..PERIOD].chunks_mut(8) {
            let word = splitmix64(&mut state).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        table.copy_within(..PERIOD, PERIOD);
        Pattern {
            table: table.into_boxed_slice(),
        }
    }

    /// Appends `len` pattern bytes starting at pattern position `start`.
    fn put(&self, dst: &mut BytesMut, mut start: usize, mut len: usize) {
        while len > 0 {
            let n = len.min(PERIOD);
            dst.put_slice(&self.table[start..start + n]);
            start = (start + n) % PERIOD;
            len -= n;
        }
    }

    /// The index of the first byte of `data` that differs from the pattern starting at `start`.
    fn first_difference(&self, mut start: usize, data: &[u8]) -> Option<usize> {
        let mut done = 0;
        for chunk in data.chunks(PERIOD) {
            let expected = &self.table[start..start + chunk.len()];
            if expected != chunk {
                return first_difference(expected, chunk).map(|i| done + i);
            }
            start = (start + chunk.len()) % PERIOD;
            done += chunk.len();
        }
        None
    }

    /// The pattern byte at position `start`.
    fn byte(&self, start: usize) -> u8 {
        self.table[start]
    }
}

/// The shape of the messages of a run.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    /// Bytes per message (the smallest, with `size_max`).
    pub size: usize,
    /// With framed messages: sizes are spread from `size` to this, each message's size a
    /// function of (connection, sequence) that both ends compute. Not above `size`: every
    /// message has `size` bytes.
    pub size_max: usize,
}

impl Spec {
    /// Messages of `size` bytes each.
    pub fn fixed(size: usize) -> Spec {
        Spec {
            size,
            size_max: size,
        }
    }

    /// The size of message `seq` of connection `conn`.
    #[inline]
    pub fn len(self, conn: u32, seq: u64) -> usize {
        if self.size_max <= self.size || !self.framed() {
            return self.size;
        }
        let mut state = u64::from(conn) << 40 ^ seq ^ 0x5eed;
        let spread = (self.size_max - self.size + 1) as u64;
        self.size + (splitmix64(&mut state) % spread) as usize
    }

    /// Whether messages carry a header ([`HEADER_LEN`] bytes or more) or are checked by stream
    /// position.
    pub fn framed(self) -> bool {
        self.size >= HEADER_LEN
    }

    fn header_len(self) -> usize {
        if self.framed() { HEADER_LEN } else { 0 }
    }

    /// Pattern position of payload byte `offset` of message `seq` of connection `conn`.
    fn pattern_start(self, conn: u32, seq: u64, offset: usize) -> usize {
        let (base, pos) = if self.framed() {
            (seed(u64::from(conn) << 40 ^ seq), offset as u64)
        } else {
            (
                seed(u64::from(conn)),
                seq * self.size as u64 + offset as u64,
            )
        };
        ((base + pos % PERIOD as u64) % PERIOD as u64) as usize
    }

    /// Encodes message `seq` of connection `conn`, sent (or due) at `time_ns`, into `arena` and
    /// returns it. The arena is reused in place once every message split from it has been sent,
    /// so the steady state allocates one block now and then, not one per message.
    pub fn encode(
        self,
        pattern: &Pattern,
        arena: &mut BytesMut,
        conn: u32,
        seq: u64,
        time_ns: u64,
    ) -> Bytes {
        let len = self.len(conn, seq);
        if arena.capacity() - arena.len() < len {
            arena.reserve(len.max(ARENA_BLOCK));
        }
        let header = self.header_len();
        if header > 0 {
            arena.put_slice(&header_bytes(conn, seq, time_ns));
        }
        pattern.put(arena, self.pattern_start(conn, seq, 0), len - header);
        arena.split().freeze()
    }
}

/// The framed header of a message.
fn header_bytes(conn: u32, seq: u64, time_ns: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&conn.to_le_bytes());
    h[4..12].copy_from_slice(&seq.to_le_bytes());
    h[12..].copy_from_slice(&time_ns.to_le_bytes());
    h
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn seed(key: u64) -> u64 {
    let mut state = key;
    splitmix64(&mut state) % PERIOD as u64
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// Send times of the messages in flight on one connection, oldest first; its capacity is the
/// pipeline depth, allocated once.
pub struct InFlight {
    times: Box<[u64]>,
    head: usize,
    len: usize,
}

impl InFlight {
    /// An empty queue for up to `capacity` messages.
    pub fn new(capacity: usize) -> InFlight {
        InFlight {
            times: vec![0; capacity.max(1)].into_boxed_slice(),
            head: 0,
            len: 0,
        }
    }

    /// Messages in flight.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no message is in flight.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether another message may be sent.
    pub fn is_full(&self) -> bool {
        self.len == self.times.len()
    }

    /// Records a message sent at `time_ns`.
    ///
    /// # Panics
    ///
    /// If the queue is full.
    pub fn push(&mut self, time_ns: u64) {
        assert!(!self.is_full(), "more messages in flight than the pipeline");
        let i = (self.head + self.len) % self.times.len();
        self.times[i] = time_ns;
        self.len += 1;
    }

    fn front(&self) -> Option<u64> {
        (self.len > 0).then(|| self.times[self.head])
    }

    fn pop(&mut self) {
        self.head = (self.head + 1) % self.times.len();
        self.len -= 1;
    }
}

/// Where the bytes of one connection's echo stream have got to.
#[derive(Default)]
pub struct Receiver {
    /// Messages received completely (the sequence number of the one being received).
    seq: u64,
    /// Bytes of the stream before the current message.
    before: u64,
    /// Bytes of the current message received so far.
    pos: usize,
    /// The header bytes of the current message received so far (for diagnosing a mismatch).
    got: [u8; HEADER_LEN],
    /// Offset of a wrong header byte, reported once the connection id and sequence number have
    /// arrived whole, so that the report can say which message came instead.
    bad: Option<usize>,
}

/// End of the connection id and sequence number in the header.
const ID_END: usize = 12;

impl Receiver {
    /// Messages received and verified completely.
    pub fn messages(&self) -> u64 {
        self.seq
    }

    /// Bytes received and verified.
    pub fn stream_offset(&self) -> u64 {
        self.before + self.pos as u64
    }

    /// Checks `data`, the next bytes of the echo stream of connection `conn`. For every message
    /// completed, pops its send time off `in_flight` and calls `done(seq, send_time_ns)`.
    ///
    /// Stops at the first wrong byte: after an error the stream cannot be trusted any more.
    pub fn feed(
        &mut self,
        spec: Spec,
        pattern: &Pattern,
        conn: u32,
        mut data: &[u8],
        in_flight: &mut InFlight,
        mut done: impl FnMut(u64, u64),
    ) -> Result<(), Mismatch> {
        let header = spec.header_len();
        while !data.is_empty() {
            let Some(time) = in_flight.front() else {
                return Err(Mismatch {
                    conn,
                    seq: self.seq,
                    offset: self.pos,
                    stream_offset: self.stream_offset(),
                    kind: Kind::Unexpected { len: data.len() },
                });
            };
            if self.pos < header {
                let expected = header_bytes(conn, self.seq, time);
                let n = (header - self.pos).min(data.len());
                let (expected, got) = (&expected[self.pos..self.pos + n], &data[..n]);
                self.got[self.pos..self.pos + n].copy_from_slice(got);
                if self.bad.is_none() {
                    self.bad = first_difference(expected, got).map(|i| self.pos + i);
                }
                self.pos += n;
                data = &data[n..];
                if self.bad.is_some() {
                    if self.pos < ID_END {
                        continue;
                    }
                    return Err(self.pending(conn, in_flight).expect("a wrong byte"));
                }
            }
            let len = spec.len(conn, self.seq);
            let n = (len - self.pos).min(data.len());
            if n > 0 {
                let start = spec.pattern_start(conn, self.seq, self.pos - header);
                if let Some(i) = pattern.first_difference(start, &data[..n]) {
                    let offset = self.pos + i;
                    return Err(Mismatch {
                        conn,
                        seq: self.seq,
                        offset,
                        stream_offset: self.before + offset as u64,
                        kind: Kind::Byte {
                            field: Field::Payload,
                            expected: pattern.byte((start + i) % PERIOD),
                            got: data[i],
                        },
                    });
                }
                self.pos += n;
                data = &data[n..];
            }
            if self.pos == len {
                in_flight.pop();
                done(self.seq, time);
                self.seq += 1;
                self.before += len as u64;
                self.pos = 0;
            }
        }
        Ok(())
    }

    /// The wrong header byte found in a header that has not arrived whole yet, if any (for a
    /// stream that stops there). The connection id and sequence number received are decoded as
    /// far as they have arrived.
    pub fn pending(&self, conn: u32, in_flight: &InFlight) -> Option<Mismatch> {
        let offset = self.bad?;
        let time = in_flight.front()?;
        let expected = header_bytes(conn, self.seq, time);
        let have = self.pos;
        let got_conn = (have >= 4).then(|| u32::from_le_bytes(self.got[..4].try_into().unwrap()));
        let got_seq =
            (have >= ID_END).then(|| u64::from_le_bytes(self.got[4..ID_END].try_into().unwrap()));
        Some(Mismatch {
            conn,
            seq: self.seq,
            offset,
            stream_offset: self.before + offset as u64,
            kind: Kind::Byte {
                field: match offset {
                    0..4 => Field::Conn { got: got_conn },
                    4..ID_END => Field::Seq { got: got_seq },
                    _ => Field::Time,
                },
                expected: expected[offset],
                got: self.got[offset],
            },
        })
    }
}

/// A byte of the echo stream that is not the one sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// Connection number (as in the header).
    pub conn: u32,
    /// Message being received.
    pub seq: u64,
    /// Byte of that message.
    pub offset: usize,
    /// Byte of the connection's echo stream.
    pub stream_offset: u64,
    /// What was wrong.
    pub kind: Kind,
}

/// What a [`Mismatch`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A byte differs from the one sent.
    Byte {
        /// Which part of the message.
        field: Field,
        /// The byte sent.
        expected: u8,
        /// The byte received.
        got: u8,
    },
    /// Bytes arrived while no message was in flight: more came back than was sent.
    Unexpected {
        /// How many bytes arrived.
        len: usize,
    },
}

/// The part of a message a wrong byte is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// The connection id of the header; `got` is the id received, when all of it arrived.
    Conn {
        /// The connection id received.
        got: Option<u32>,
    },
    /// The sequence number of the header; `got` is the number received, when all of it arrived.
    Seq {
        /// The sequence number received.
        got: Option<u64>,
    },
    /// The send time of the header.
    Time,
    /// The pattern after the header (or the whole message when there is no header).
    Payload,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Mismatch {
            conn,
            seq,
            offset,
            stream_offset,
            ..
        } = *self;
        match self.kind {
            Kind::Unexpected { len } => write!(
                f,
                "connection {conn}: {len} unexpected bytes at stream offset {stream_offset}: \
                 more came back than was sent"
            ),
            Kind::Byte {
                field,
                expected,
                got,
            } => {
                write!(
                    f,
                    "connection {conn}, message {seq}, byte {offset} (stream offset \
                     {stream_offset}): expected 0x{expected:02x}, got 0x{got:02x}"
                )?;
                match field {
                    Field::Conn { got: Some(other) } => write!(
                        f,
                        " in the connection id: received the bytes of connection {other}"
                    ),
                    Field::Conn { got: None } => f.write_str(" in the connection id"),
                    Field::Seq { got: Some(other) } if other == seq + 1 => write!(
                        f,
                        " in the sequence number: the header says message {other}, so message \
                         {seq} was lost (or the stream reordered, or this byte damaged)"
                    ),
                    Field::Seq { got: Some(other) } if other > seq => write!(
                        f,
                        " in the sequence number: the header says message {other}, so messages \
                         {seq} to {} were lost (or the stream reordered, or this byte damaged)",
                        other - 1
                    ),
                    Field::Seq { got: Some(other) } => write!(
                        f,
                        " in the sequence number: the header says message {other}, which came \
                         before (duplicated or reordered, or this byte damaged)"
                    ),
                    Field::Seq { .. } => f.write_str(" in the sequence number"),
                    Field::Time => f.write_str(" in the send time"),
                    Field::Payload if offset == 0 => f.write_str(
                        " in the payload (bytes lost, duplicated, reordered or corrupted)",
                    ),
                    Field::Payload => f.write_str(" in the payload"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes `count` messages of `conn` and returns the stream and the send times.
    fn stream(spec: Spec, pattern: &Pattern, conn: u32, count: u64) -> (Vec<u8>, Vec<u64>) {
        let mut arena = BytesMut::new();
        let mut out = Vec::new();
        let mut times = Vec::new();
        for seq in 0..count {
            let t = 1_000 + seq * 7;
            out.extend_from_slice(&spec.encode(pattern, &mut arena, conn, seq, t));
            times.push(t);
        }
        (out, times)
    }

    /// Feeds `bytes` in chunks of `step`, with `times` in flight; returns messages completed.
    fn feed(
        spec: Spec,
        pattern: &Pattern,
        conn: u32,
        bytes: &[u8],
        times: &[u64],
        step: usize,
    ) -> Result<Vec<(u64, u64)>, Mismatch> {
        let mut rx = Receiver::default();
        let mut in_flight = InFlight::new(times.len());
        for &t in times {
            in_flight.push(t);
        }
        let mut done = Vec::new();
        for chunk in bytes.chunks(step) {
            rx.feed(spec, pattern, conn, chunk, &mut in_flight, |s, t| {
                done.push((s, t))
            })?;
        }
        Ok(done)
    }

    #[test]
    fn verifies_split_anywhere() {
        let pattern = Pattern::new();
        for size in [1, 3, 19, 20, 21, 64, 8191, 8192, 20_000] {
            let spec = Spec::fixed(size);
            let (bytes, times) = stream(spec, &pattern, 7, 5);
            assert_eq!(bytes.len(), 5 * size);
            for step in [1, 2, 7, 19, 20, 64, 4096, 100_000] {
                let done = feed(spec, &pattern, 7, &bytes, &times, step).unwrap();
                let want: Vec<_> = times
                    .iter()
                    .enumerate()
                    .map(|(s, &t)| (s as u64, t))
                    .collect();
                assert_eq!(done, want, "size {size} step {step}");
            }
        }
    }

    #[test]
    fn mixed_sizes_verify_split_anywhere_and_catch_a_wrong_byte() {
        let pattern = Pattern::new();
        let spec = Spec {
            size: 20,
            size_max: 5000,
        };
        let sizes: Vec<usize> = (0..40).map(|seq| spec.len(7, seq)).collect();
        assert!(sizes.iter().all(|&n| (20..=5000).contains(&n)));
        assert!(sizes.iter().any(|&n| n != sizes[0]), "sizes are mixed");
        let (bytes, times) = stream(spec, &pattern, 7, 40);
        assert_eq!(bytes.len(), sizes.iter().sum::<usize>());
        for step in [1, 19, 64, 4096, 1 << 20] {
            let done = feed(spec, &pattern, 7, &bytes, &times, step).unwrap();
            assert_eq!(done.len(), 40, "step {step}");
        }
        let mut bad = bytes.clone();
        let at = sizes[..10].iter().sum::<usize>() + 25;
        bad[at] ^= 1;
        let err = feed(spec, &pattern, 7, &bad, &times, 100).unwrap_err();
        assert_eq!((err.seq, err.offset), (10, 25), "{err}");
        assert_eq!(err.stream_offset, at as u64);
    }

    #[test]
    fn messages_differ_between_connections_and_sequences() {
        let pattern = Pattern::new();
        let spec = Spec::fixed(64);
        let mut arena = BytesMut::new();
        let a = spec.encode(&pattern, &mut arena, 1, 0, 0);
        let b = spec.encode(&pattern, &mut arena, 1, 1, 0);
        let c = spec.encode(&pattern, &mut arena, 2, 0, 0);
        assert_ne!(a[HEADER_LEN..], b[HEADER_LEN..]);
        assert_ne!(a[HEADER_LEN..], c[HEADER_LEN..]);
    }

    #[test]
    fn catches_a_corrupted_byte() {
        let pattern = Pattern::new();
        for size in [3, 64, 10_000] {
            let spec = Spec::fixed(size);
            let (mut bytes, times) = stream(spec, &pattern, 3, 4);
            let at = 2 * size + size - 1;
            bytes[at] ^= 0x40;
            for step in [1, 5, 1000] {
                let err = feed(spec, &pattern, 3, &bytes, &times, step).unwrap_err();
                assert_eq!(err.stream_offset, at as u64);
                assert_eq!((err.seq, err.offset), (2, size - 1));
                let Kind::Byte { expected, got, .. } = err.kind else {
                    panic!("{err}")
                };
                assert_eq!(expected ^ 0x40, got);
            }
        }
    }

    #[test]
    fn catches_loss_and_reordering() {
        let pattern = Pattern::new();
        let spec = Spec::fixed(64);
        let (bytes, times) = stream(spec, &pattern, 9, 4);
        // Message 1 lost.
        let lost: Vec<u8> = [&bytes[..64], &bytes[128..]].concat();
        let err = feed(spec, &pattern, 9, &lost, &times, 10).unwrap_err();
        assert_eq!(err.seq, 1);
        assert!(matches!(
            err.kind,
            Kind::Byte {
                field: Field::Seq { got: Some(2) },
                ..
            }
        ));
        assert!(err.to_string().contains("message 1 was lost"), "{err}");
        // Messages 1 and 2 swapped.
        let swapped: Vec<u8> = [&bytes[..64], &bytes[128..192], &bytes[64..128]].concat();
        let err = feed(spec, &pattern, 9, &swapped, &times, 1).unwrap_err();
        assert_eq!(err.seq, 1);
        // Bytes of another connection.
        let (other, _) = stream(spec, &pattern, 10, 1);
        let err = feed(spec, &pattern, 9, &other, &times, 64).unwrap_err();
        assert!(matches!(
            err.kind,
            Kind::Byte {
                field: Field::Conn { got: Some(10) },
                ..
            }
        ));
        // Small messages: a lost byte shifts the stream.
        let spec = Spec::fixed(3);
        let (bytes, times) = stream(spec, &pattern, 9, 50);
        let shifted: Vec<u8> = [&bytes[..10], &bytes[11..]].concat();
        let err = feed(spec, &pattern, 9, &shifted, &times, 4).unwrap_err();
        assert!(err.stream_offset >= 10, "{err}");
    }

    #[test]
    fn reports_a_wrong_header_that_stops_half_way() {
        let pattern = Pattern::new();
        let spec = Spec::fixed(64);
        let (bytes, times) = stream(spec, &pattern, 9, 3);
        let lost: Vec<u8> = [&bytes[..64], &bytes[128..]].concat();
        let mut rx = Receiver::default();
        let mut in_flight = InFlight::new(3);
        for &t in &times {
            in_flight.push(t);
        }
        // Message 1 lost, and the stream stops 6 bytes into the header of message 2.
        for chunk in lost[..70].chunks(3) {
            rx.feed(spec, &pattern, 9, chunk, &mut in_flight, |_, _| {})
                .unwrap();
        }
        assert_eq!(rx.messages(), 1);
        let err = rx.pending(9, &in_flight).unwrap();
        assert_eq!((err.seq, err.offset), (1, 4));
        assert!(matches!(
            err.kind,
            Kind::Byte {
                field: Field::Seq { got: None },
                ..
            }
        ));
    }

    #[test]
    fn catches_extra_bytes() {
        let pattern = Pattern::new();
        let spec = Spec::fixed(32);
        let (mut bytes, times) = stream(spec, &pattern, 1, 2);
        bytes.push(0);
        let err = feed(spec, &pattern, 1, &bytes, &times, 7).unwrap_err();
        assert_eq!(err.kind, Kind::Unexpected { len: 1 });
        assert_eq!(err.stream_offset, 64);
    }
}
