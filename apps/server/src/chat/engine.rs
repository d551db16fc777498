//! Where the chat's shared state lives: who is logged in (presence), who is in which room, and
//! the room messages. The logic thread talks to it through [`Engine`] and does not know which
//! one it has:
//!
//! - [`MemoryEngine`] (`--engine memory`, the default): one process, everything in its memory;
//!   every call is answered before it returns.
//! - `RedisEngine` (`--engine redis`, in `crate::redis`): several instances share one Redis or a
//!   Redis Cluster; calls are answered later, through the logic queue
//!   ([`ChatMessage::Engine`](super::login::ChatMessage)).
//!
//! Either way an engine answers with [`Output`]s, which the logic applies in order. Room
//! traffic comes back as [`RoomEvent`]s numbered per room: every instance delivers a room's
//! events to its local members in that order, so every member (the sender included) sees one
//! order, and a newcomer gets exactly the events numbered after its entry.

use std::sync::Arc;

use iocp_chat_protocol::ResultCode;
use iocp_server::SessionId;

/// A member of a room as every instance sees it: its id in the room notifies, and its user id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RoomMember {
    /// The unique id the room notifies carry (unique among the members of every instance).
    pub(crate) id: i64,
    /// The user id.
    pub(crate) user_id: Arc<str>,
}

/// What happened in a room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum EventKind {
    /// A member entered (`ROOM_NEW_USER_NOTIFY` to the others).
    Joined(RoomMember),
    /// A member left, or its instance died (`ROOM_LEAVE_USER_NOTIFY`).
    Left(i64),
    /// A chat message (`ROOM_CHAT_NOTIFY` to every member, the sender included).
    Chat {
        /// The sender's user id.
        user_id: Arc<str>,
        /// The message (bytes, as the client sent them).
        message: Vec<u8>,
    },
}

/// An event of a room, in the room's one order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RoomEvent {
    /// The room.
    pub(crate) room: u32,
    /// Its number in the room's order; `None`: delivered to this instance's members only (the
    /// shared engine is unreachable: local members keep chatting among themselves).
    pub(crate) seq: Option<u64>,
    /// What happened.
    pub(crate) kind: EventKind,
}

/// A room entered: the newcomer's id and the members at that moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entered {
    /// The newcomer's id in the room.
    pub(crate) member_id: i64,
    /// The number of its own `Joined` event: it gets the events numbered after it.
    pub(crate) seq: u64,
    /// Every member, in the order they entered, the newcomer last.
    pub(crate) members: Vec<RoomMember>,
}

/// An engine's answer, or news from it.
#[derive(Debug)]
pub(crate) enum Output {
    /// The answer to [`Engine::claim`].
    Claimed {
        session: SessionId,
        user_id: Arc<str>,
        /// `Err`: the login's result code (logged in on another instance, or the engine is
        /// unreachable).
        result: Result<(), ResultCode>,
    },
    /// The answer to [`Engine::enter`].
    Entered {
        session: SessionId,
        room: u32,
        result: Result<Entered, ResultCode>,
    },
    /// Something happened in a room.
    Event(RoomEvent),
    /// This instance lost `user_id` to a login elsewhere (its presence had expired, or the
    /// shared store lost it and another instance claimed it first): its session is closed.
    Lost { user_id: Arc<str> },
    /// The engine reached its store again and registered every local member anew: the
    /// room's events are numbered from `seq` on for them.
    Resynced { room: u32, seq: u64 },
}

/// The chat's shared state, as the logic thread sees it. Answers come as [`Output`]s: pushed
/// to `out` before the call returns, or later (an engine that asks a server).
pub(crate) trait Engine: Send {
    /// Whether the engine can take logins and room changes now (a shared store out of reach:
    /// they are answered busy).
    fn available(&self) -> bool {
        true
    }

    /// `user_id` passed its password check on `session`: claim its presence. An engine
    /// shared by several instances refuses a user logged in on another instance
    /// (`LOGIN_USER_ALREADY`); on this instance the logic replaces the older session.
    fn claim(&mut self, session: SessionId, user_id: &Arc<str>, out: &mut Vec<Output>);

    /// `user_id` has no session on this instance any more.
    fn release(&mut self, user_id: &Arc<str>);

    /// `session` (logged in as `user_id`) asks to enter `room` (a valid room number).
    fn enter(&mut self, session: SessionId, user_id: &Arc<str>, room: u32, out: &mut Vec<Output>);

    /// Member `member_id` leaves `room` (asked to, or its session ended). The others learn
    /// of it through a [`EventKind::Left`] event.
    fn leave(&mut self, room: u32, member_id: i64, out: &mut Vec<Output>);

    /// A member of `room` says `message`: a [`EventKind::Chat`] event for every member.
    fn chat(&mut self, room: u32, user_id: &Arc<str>, message: Vec<u8>, out: &mut Vec<Output>);
}

/// The unique id of a member on the memory engine: its session id as a number (the generation
/// above the slot index), so a user who logs in again has another.
pub(crate) fn unique_id(session: SessionId) -> i64 {
    (i64::from(session.generation) << 32) | i64::from(session.index)
}

/// One room of the memory engine.
#[derive(Default)]
struct Room {
    /// The members, in the order they entered.
    members: Vec<RoomMember>,
    /// The number of the room's last event.
    seq: u64,
}

/// Everything in this process: presence is the logic's own user table (nothing to claim), the
/// rooms are vectors (the tutorial's `RoomManager`).
pub(crate) struct MemoryEngine {
    rooms: Vec<Room>,
    capacity: usize,
}

impl MemoryEngine {
    /// `count` rooms of `capacity` members each, made up front.
    pub(crate) fn new(count: u32, capacity: u32) -> MemoryEngine {
        MemoryEngine {
            rooms: (0..count)
                .map(|_| Room {
                    members: Vec::with_capacity(capacity as usize),
                    seq: 0,
                })
                .collect(),
            capacity: capacity as usize,
        }
    }

    fn event(&mut self, room: u32, kind: EventKind) -> Option<RoomEvent> {
        let r = self.rooms.get_mut(room as usize)?;
        r.seq += 1;
        Some(RoomEvent {
            room,
            seq: Some(r.seq),
            kind,
        })
    }
}

impl Engine for MemoryEngine {
    fn claim(&mut self, session: SessionId, user_id: &Arc<str>, out: &mut Vec<Output>) {
        out.push(Output::Claimed {
            session,
            user_id: user_id.clone(),
            result: Ok(()),
        });
    }

    fn release(&mut self, _user_id: &Arc<str>) {}

    fn enter(&mut self, session: SessionId, user_id: &Arc<str>, room: u32, out: &mut Vec<Output>) {
        let capacity = self.capacity;
        let Some(r) = self.rooms.get_mut(room as usize) else {
            out.push(Output::Entered {
                session,
                room,
                result: Err(ResultCode::ROOM_INVALID_INDEX),
            });
            return;
        };
        if r.members.len() >= capacity {
            out.push(Output::Entered {
                session,
                room,
                result: Err(ResultCode::ENTER_ROOM_FULL_USER),
            });
            return;
        }
        let member = RoomMember {
            id: unique_id(session),
            user_id: user_id.clone(),
        };
        r.members.push(member.clone());
        let members = r.members.clone();
        let Some(joined) = self.event(room, EventKind::Joined(member.clone())) else {
            return;
        };
        out.push(Output::Entered {
            session,
            room,
            result: Ok(Entered {
                member_id: member.id,
                seq: joined.seq.unwrap_or(0),
                members,
            }),
        });
        out.push(Output::Event(joined));
    }

    fn leave(&mut self, room: u32, member_id: i64, out: &mut Vec<Output>) {
        let Some(r) = self.rooms.get_mut(room as usize) else {
            return;
        };
        let Some(at) = r.members.iter().position(|m| m.id == member_id) else {
            return;
        };
        r.members.remove(at);
        if let Some(left) = self.event(room, EventKind::Left(member_id)) {
            out.push(Output::Event(left));
        }
    }

    fn chat(&mut self, room: u32, user_id: &Arc<str>, message: Vec<u8>, out: &mut Vec<Output>) {
        let kind = EventKind::Chat {
            user_id: user_id.clone(),
            message,
        };
        if let Some(chat) = self.event(room, kind) {
            out.push(Output::Event(chat));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(i: u32) -> SessionId {
        SessionId {
            index: i,
            generation: 0,
        }
    }

    fn entered(out: &[Output]) -> Result<&Entered, ResultCode> {
        match out.first() {
            Some(Output::Entered { result, .. }) => result.as_ref().map_err(|e| *e),
            other => panic!("not an answer to enter: {other:?}"),
        }
    }

    #[test]
    fn enter_full_leave_and_one_order() {
        let mut engine = MemoryEngine::new(2, 2);
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
        let mut out = Vec::new();
        engine.enter(session(1), &a, 0, &mut out);
        assert_eq!(entered(&out).unwrap().seq, 1);
        out.clear();
        engine.enter(session(2), &b, 0, &mut out);
        let e = entered(&out).unwrap();
        assert_eq!(e.seq, 2);
        assert_eq!(
            e.members.iter().map(|m| &*m.user_id).collect::<Vec<_>>(),
            ["a", "b"]
        );
        out.clear();
        engine.enter(session(3), &c, 0, &mut out);
        assert_eq!(entered(&out), Err(ResultCode::ENTER_ROOM_FULL_USER));
        out.clear();
        engine.enter(session(3), &c, 2, &mut out);
        assert_eq!(entered(&out), Err(ResultCode::ROOM_INVALID_INDEX));
        out.clear();
        engine.chat(0, &a, b"hi".to_vec(), &mut out);
        engine.leave(0, unique_id(session(1)), &mut out);
        engine.leave(0, unique_id(session(1)), &mut out);
        let seqs: Vec<_> = out
            .iter()
            .map(|o| match o {
                Output::Event(e) => e.seq,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(seqs, [Some(3), Some(4)]);
        out.clear();
        engine.enter(session(3), &c, 0, &mut out);
        assert!(entered(&out).is_ok());
    }
}
