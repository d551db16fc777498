//! One frame decoder per session slot, allocated up front.
//!
//! # Why one `Mutex<Decoder>` per slot
//!
//! The server calls a session's callbacks on the one worker thread that owns its slot, one at a
//! time, so a slot's decoder is only ever touched by one thread: the lock is always free when it
//! is taken (an uncontended `Mutex` is one atomic swap to lock and one to unlock, no system
//! call). The alternatives cost more or prove less:
//!
//! - one `Mutex<HashMap<SessionId, Decoder>>`: every worker would take the same lock for every
//!   read — the global lock on the hot path that we must not have;
//! - per-worker tables without a lock: the [`iocp_server::Handler`] is shared by all workers
//!   (`&self`), so there is no per-worker `&mut` to hold them without `unsafe` or thread-locals;
//!   and which worker owns which slot is the server's business, not ours;
//! - sharded locks: less memory, but neighbouring sessions of different workers would then share
//!   a lock.
//!
//! The cost is memory: one small decoder per slot (about 80 bytes, plus a buffer that grows only
//! when a frame straddles two reads, up to the maximum frame length). Slots are made once, for
//! `max_sessions`, as the session pool itself is; a slot's decoder is reset when its next session
//! opens, keeping its buffer's memory.

use std::sync::{Mutex, MutexGuard};

use iocp_server::SessionId;
use iocp_wire::Decoder;

/// The packet manager's state for one session slot.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) decoder: Decoder,
    /// The packet manager closed this session: what still arrives for it is dropped.
    pub(crate) closing: bool,
}

/// A decoder per session slot.
pub(crate) struct Slots {
    slots: Box<[Mutex<Slot>]>,
}

impl Slots {
    /// Slots for sessions `0..max_sessions`, decoding frames of up to `max_frame_len` bytes.
    pub(crate) fn new(max_sessions: u32, max_frame_len: usize) -> Slots {
        Slots {
            slots: (0..max_sessions)
                .map(|_| {
                    Mutex::new(Slot {
                        decoder: Decoder::with_max_frame_len(max_frame_len),
                        closing: false,
                    })
                })
                .collect(),
        }
    }

    /// The slot of `session`, locked (never contended: see the module's notes), or `None` if the
    /// index is beyond the slots made (a server started with more sessions than the packet
    /// manager was told).
    #[inline]
    pub(crate) fn get(&self, session: SessionId) -> Option<MutexGuard<'_, Slot>> {
        let slot = self.slots.get(session.index as usize)?;
        // A handler that panicked while holding the lock poisoned it; the slot is reset when
        // its session closes, so the data is still usable.
        Some(slot.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Readies the slot for a new session.
    pub(crate) fn open(&self, session: SessionId) -> bool {
        match self.get(session) {
            Some(mut slot) => {
                slot.decoder.reset();
                slot.closing = false;
                true
            }
            None => false,
        }
    }

    /// Forgets what was buffered for a session that ended.
    pub(crate) fn close(&self, session: SessionId) {
        if let Some(mut slot) = self.get(session) {
            slot.decoder.reset();
            slot.closing = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_on_open() {
        let slots = Slots::new(4, 64);
        let s = SessionId {
            index: 3,
            generation: 1,
        };
        assert!(slots.open(s));
        slots
            .get(s)
            .unwrap()
            .decoder
            .decode(&[9, 0, 1], |_| {})
            .unwrap();
        assert_eq!(slots.get(s).unwrap().decoder.buffered_len(), 3);
        slots.close(s);
        assert!(slots.get(s).unwrap().closing);
        assert!(slots.open(s));
        let slot = slots.get(s).unwrap();
        assert_eq!(slot.decoder.buffered_len(), 0);
        assert!(!slot.closing);
        drop(slot);
        assert!(
            slots
                .get(SessionId {
                    index: 4,
                    generation: 0
                })
                .is_none()
        );
    }
}
