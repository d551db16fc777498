//! What a completion carries back: which connection, which incarnation of it, which operation.
//!
//! io_uring's `user_data` and IOCP's completion key + `OVERLAPPED` both give back one word per
//! completion. We pack the connection's index, its generation and the operation kind into it, so
//! that a completion for a connection that has since been closed and reused can never be mistaken
//! for one of the new connection.

/// The generation is kept to this many bits inside a token.
pub const GENERATION_BITS: u32 = 24;
const GENERATION_MASK: u32 = (1 << GENERATION_BITS) - 1;

/// A connection of one driver: its index in the driver's table and the generation of the slot.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ConnId {
    /// Index in the driver's connection table (`0..capacity`).
    pub index: u32,
    /// Incremented each time the slot is given to a new connection (wraps at 2^24).
    pub generation: u32,
}

impl ConnId {
    /// The token of operation `op` on this connection.
    #[inline]
    pub(crate) fn token(self, op: Op) -> Token {
        Token::new(op, self.index, self.generation)
    }
}

/// Kind of operation a token stands for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub(crate) enum Op {
    Recv = 1,
    Send = 2,
    Accept = 3,
    Wake = 4,
    Cancel = 5,
}

/// `user_data` / completion key: `op:8 | generation:24 | index:32`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Token(pub(crate) u64);

impl Token {
    #[inline]
    pub(crate) fn new(op: Op, index: u32, generation: u32) -> Token {
        Token((op as u64) << 56 | u64::from(generation & GENERATION_MASK) << 32 | u64::from(index))
    }

    /// A token with no connection (accept, wake-up).
    #[inline]
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn bare(op: Op) -> Token {
        Token::new(op, 0, 0)
    }

    #[inline]
    pub(crate) fn op(self) -> Option<Op> {
        Some(match (self.0 >> 56) as u8 {
            1 => Op::Recv,
            2 => Op::Send,
            3 => Op::Accept,
            4 => Op::Wake,
            5 => Op::Cancel,
            _ => return None,
        })
    }

    #[inline]
    pub(crate) fn conn(self) -> ConnId {
        ConnId {
            index: self.0 as u32,
            generation: (self.0 >> 32) as u32 & GENERATION_MASK,
        }
    }
}

/// The next generation of a slot, as a token stores it.
#[inline]
pub(crate) fn next_generation(generation: u32) -> u32 {
    generation.wrapping_add(1) & GENERATION_MASK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for (op, index, generation) in [
            (Op::Recv, 0, 0),
            (Op::Send, u32::MAX, GENERATION_MASK),
            (Op::Accept, 12345, 77),
            (Op::Cancel, 1, 1 << 20),
        ] {
            let t = Token::new(op, index, generation);
            assert_eq!(t.op(), Some(op));
            assert_eq!(t.conn(), ConnId { index, generation });
        }
        assert_eq!(Token(0).op(), None);
        assert_eq!(next_generation(GENERATION_MASK), 0);
    }
}
