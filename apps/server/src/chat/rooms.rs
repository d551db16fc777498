//! The room manager (the tutorial's `RoomManager` and `Room`): rooms made at start, their
//! members, and sending to all of them. Owned by the logic thread.

use std::sync::Arc;

use iocp_chat_protocol::ResultCode;
use iocp_packet::LogicContext;
use iocp_server::{Bytes, SessionId};

/// A member of a room.
#[derive(Clone, Debug)]
pub(crate) struct Member {
    pub(crate) session: SessionId,
    pub(crate) user_id: Arc<str>,
}

/// One room: its members, in the order they entered.
#[derive(Debug, Default)]
pub(crate) struct Room {
    members: Vec<Member>,
}

impl Room {
    /// The members, in the order they entered.
    pub(crate) fn members(&self) -> &[Member] {
        &self.members
    }

    /// Queues the same bytes to every member but `except` (no copy per member). A member whose
    /// send fails is closing already: its disconnect will take it out of the room. Returns how
    /// many members the bytes were queued to.
    pub(crate) fn send_all(
        &self,
        ctx: &LogicContext<'_>,
        bytes: &Bytes,
        except: Option<SessionId>,
    ) -> u64 {
        let mut sent = 0;
        for member in &self.members {
            if Some(member.session) != except
                && ctx.send_bytes(member.session, bytes.clone()).is_ok()
            {
                sent += 1;
            }
        }
        sent
    }
}

/// Every room.
pub(crate) struct Rooms {
    rooms: Vec<Room>,
    capacity: usize,
}

impl Rooms {
    /// `count` rooms of `capacity` members each, made up front.
    pub(crate) fn new(count: u32, capacity: u32) -> Rooms {
        Rooms {
            rooms: (0..count)
                .map(|_| Room {
                    members: Vec::with_capacity(capacity as usize),
                })
                .collect(),
            capacity: capacity as usize,
        }
    }

    /// Room `number`.
    pub(crate) fn get(&self, number: u32) -> Option<&Room> {
        self.rooms.get(number as usize)
    }

    /// Adds `member` to room `number` (a room number from the wire: any `i32`).
    pub(crate) fn enter(&mut self, number: i32, member: Member) -> Result<u32, ResultCode> {
        let room = u32::try_from(number)
            .ok()
            .and_then(|n| Some((n, self.rooms.get_mut(n as usize)?)));
        let Some((number, room)) = room else {
            return Err(ResultCode::ROOM_INVALID_INDEX);
        };
        if room.members.len() >= self.capacity {
            return Err(ResultCode::ENTER_ROOM_FULL_USER);
        }
        room.members.push(member);
        Ok(number)
    }

    /// Takes `session` out of room `number`; returns the member if it was there.
    pub(crate) fn leave(&mut self, number: u32, session: SessionId) -> Option<Member> {
        let room = self.rooms.get_mut(number as usize)?;
        let at = room.members.iter().position(|m| m.session == session)?;
        Some(room.members.remove(at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(i: u32) -> Member {
        Member {
            session: SessionId {
                index: i,
                generation: 0,
            },
            user_id: Arc::from(format!("u{i}")),
        }
    }

    #[test]
    fn enter_full_invalid_leave() {
        let mut rooms = Rooms::new(2, 2);
        assert_eq!(rooms.enter(0, member(1)), Ok(0));
        assert_eq!(rooms.enter(0, member(2)), Ok(0));
        assert_eq!(
            rooms.enter(0, member(3)),
            Err(ResultCode::ENTER_ROOM_FULL_USER)
        );
        assert_eq!(
            rooms.enter(2, member(3)),
            Err(ResultCode::ROOM_INVALID_INDEX)
        );
        assert_eq!(
            rooms.enter(-1, member(3)),
            Err(ResultCode::ROOM_INVALID_INDEX)
        );
        assert!(rooms.leave(0, member(1).session).is_some());
        assert!(rooms.leave(0, member(1).session).is_none());
        assert_eq!(rooms.get(0).unwrap().members().len(), 1);
        assert_eq!(rooms.enter(0, member(3)), Ok(0));
    }
}
