//! What the readiness backend knows of one connection slot: which operations are outstanding and
//! what the poller watches for them.

use std::io;

use mio::unix::SourceFd;
use mio::{Interest, Registry};

use crate::sys::Raw;
use crate::token::{Op, Token};

/// The poller token of the listener.
pub(super) const LISTENER: mio::Token = mio::Token(usize::MAX);
/// The poller token of the waker.
pub(super) const WAKER: mio::Token = mio::Token(usize::MAX - 1);

/// The poller token of a connection: `generation << 32 | index`.
///
/// Indices are below 2^32 and generations below 2^24, so it never equals [`LISTENER`] or
/// [`WAKER`]. An event is matched to its slot by comparing the whole token, so an event for a
/// connection that has since been closed (and whose descriptor number may serve another one) is
/// recognised as stale.
pub(super) fn conn_token(index: usize, generation: u32) -> mio::Token {
    mio::Token((u64::from(generation) << 32 | index as u64) as usize)
}

/// The slot index a connection's poller token names.
pub(super) fn token_index(token: mio::Token) -> usize {
    (token.0 as u64 & u64::from(u32::MAX)) as usize
}

/// Where the send of a slot stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub(super) enum SendState {
    /// No send outstanding.
    #[default]
    Idle,
    /// The socket took nothing; `Send(Ok(0))` is delivered when it becomes writable.
    Waiting,
    /// The completion is in the port's ready queue.
    Queued,
}

/// One connection slot (the connection index of its tokens).
pub(super) struct Slot {
    /// The socket of the current connection, `-1` before the first one.
    pub(super) fd: Raw,
    /// The generation of the current connection.
    pub(super) generation: u32,
    /// What the poller watches, `None` when the socket is not registered.
    pub(super) interest: Option<Interest>,
    /// A receive is armed: its final completion has not been produced yet.
    pub(super) recv: bool,
    /// Read until `EAGAIN` rather than stopping at the first short read: the receive was just
    /// armed (data may have arrived before registration), or the peer closed or failed (a short
    /// read may be followed by the end of stream or the error, which raise no further edge).
    pub(super) drain: bool,
    /// The slot is in the port's list of connections to read again without waiting.
    pub(super) listed: bool,
    /// The send outstanding, if any.
    pub(super) send: SendState,
    /// `SO_NOSIGPIPE` is set on `fd` (or is not needed on this platform).
    pub(super) no_sigpipe: bool,
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            fd: -1,
            generation: 0,
            interest: None,
            recv: false,
            drain: false,
            listed: false,
            send: SendState::Idle,
            no_sigpipe: false,
        }
    }
}

impl Slot {
    /// Whether an operation of the slot has not completed yet.
    pub(super) fn is_busy(&self) -> bool {
        self.recv || self.send != SendState::Idle
    }

    /// Gives the slot to a new connection, if `fd` and `generation` are not the current one's.
    pub(super) fn open(&mut self, fd: Raw, generation: u32) {
        if self.fd == fd && self.generation == generation {
            return;
        }
        debug_assert!(
            !self.is_busy() && self.interest.is_none(),
            "slot reused while an operation is outstanding"
        );
        *self = Slot {
            fd,
            generation,
            no_sigpipe: !super::net::NEEDS_NO_SIGPIPE,
            ..Slot::default()
        };
    }

    /// Whether `token` names the current connection of this slot.
    pub(super) fn is(&self, fd: Raw, token: Token) -> bool {
        self.fd == fd && self.generation == token.conn().generation
    }

    /// The completion token of operation `op` on the current connection.
    pub(super) fn token(&self, op: Op, index: usize) -> Token {
        Token::new(op, index as u32, self.generation)
    }

    /// What the poller must watch for the operations outstanding.
    fn wanted(&self) -> Option<Interest> {
        match (self.recv, self.send == SendState::Waiting) {
            (true, true) => Some(Interest::READABLE | Interest::WRITABLE),
            (true, false) => Some(Interest::READABLE),
            (false, true) => Some(Interest::WRITABLE),
            (false, false) => None,
        }
    }

    /// Registers, re-registers or deregisters the socket so that the poller watches exactly what
    /// the outstanding operations need.
    ///
    /// Deregistering as soon as nothing is outstanding matters: the owner closes the socket once
    /// the last completion is delivered, and a closed descriptor must not stay in a kqueue (nor
    /// its number be mistaken for the next socket that gets it).
    pub(super) fn sync(&mut self, registry: &Registry, index: usize) -> io::Result<()> {
        let wanted = self.wanted();
        if wanted == self.interest {
            return Ok(());
        }
        let token = conn_token(index, self.generation);
        let mut source = SourceFd(&self.fd);
        match (self.interest, wanted) {
            (None, Some(interest)) => registry.register(&mut source, token, interest)?,
            (Some(_), Some(interest)) => registry.reregister(&mut source, token, interest)?,
            (Some(_), None) => registry.deregister(&mut source)?,
            (None, None) => {}
        }
        self.interest = wanted;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::GENERATION_BITS;

    #[test]
    fn connection_tokens_are_distinct_from_reserved_ones() {
        let max_generation = (1 << GENERATION_BITS) - 1;
        for (index, generation) in [(0, 0), (u32::MAX as usize, max_generation), (7, 3)] {
            let token = conn_token(index, generation);
            assert_ne!(token, LISTENER);
            assert_ne!(token, WAKER);
            assert_eq!(token_index(token), index);
        }
        assert_ne!(conn_token(5, 1), conn_token(5, 2));
    }
}
