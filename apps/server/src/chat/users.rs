//! The user manager (the tutorial's `UserManager`): one user per session slot, and who is logged
//! in under which id. Owned by the logic thread.

use std::collections::HashMap;
use std::sync::Arc;

use iocp_server::SessionId;

/// Where a session is in the conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// Connected, not logged in.
    Connected,
    /// Its password is being checked, for this user id.
    LoggingIn(String),
    /// Logged in as `user_id`, in a room or not.
    LoggedIn { user_id: Arc<str>, room: Place },
    /// Its user logged in again on another session, which took over; this one is closing.
    Replaced,
}

/// Where a logged-in user is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    /// In no room.
    Lobby,
    /// Waiting for the engine to let it into this room.
    Entering(u32),
    /// In this room, with this member id.
    In { room: u32, member_id: i64 },
}

/// One session's user.
#[derive(Debug)]
pub(crate) struct User {
    pub(crate) session: SessionId,
    /// The address it connected from.
    pub(crate) addr: std::net::IpAddr,
    pub(crate) state: State,
    /// Failed logins on this connection.
    pub(crate) failed_logins: u32,
    /// When the login being checked was asked for (for the login latency).
    pub(crate) login_started: Option<std::time::Instant>,
}

/// The users, by session slot, and the logged-in ids.
#[derive(Default)]
pub(crate) struct Users {
    slots: Vec<Option<User>>,
    logged_in: HashMap<Arc<str>, SessionId>,
}

impl Users {
    /// Room for `max_sessions` users, made up front (the tutorial's `UserManager::Init`).
    pub(crate) fn new(max_sessions: u32) -> Users {
        Users {
            slots: (0..max_sessions).map(|_| None).collect(),
            logged_in: HashMap::new(),
        }
    }

    /// A session connected.
    pub(crate) fn connect(&mut self, session: SessionId, addr: std::net::IpAddr) {
        let index = session.index as usize;
        if index >= self.slots.len() {
            self.slots.resize_with(index + 1, || None);
        }
        self.slots[index] = Some(User {
            session,
            addr,
            state: State::Connected,
            failed_logins: 0,
            login_started: None,
        });
    }

    /// The user of `session`, if it is still connected.
    pub(crate) fn get(&self, session: SessionId) -> Option<&User> {
        self.slots
            .get(session.index as usize)?
            .as_ref()
            .filter(|u| u.session == session)
    }

    /// The user of `session`, if it is still connected.
    pub(crate) fn get_mut(&mut self, session: SessionId) -> Option<&mut User> {
        self.slots
            .get_mut(session.index as usize)?
            .as_mut()
            .filter(|u| u.session == session)
    }

    /// The session logged in as `user_id`.
    pub(crate) fn session_of(&self, user_id: &str) -> Option<SessionId> {
        self.logged_in.get(user_id).copied()
    }

    /// Logs `session` in as `user_id`.
    pub(crate) fn log_in(&mut self, session: SessionId, user_id: &str) {
        let user_id: Arc<str> = Arc::from(user_id);
        self.logged_in.insert(user_id.clone(), session);
        if let Some(user) = self.get_mut(session) {
            user.state = State::LoggedIn {
                user_id,
                room: Place::Lobby,
            };
        }
    }

    /// `session`'s user logged in again elsewhere: `session` no longer has it (its entry in the
    /// logged-in ids is taken over by the new session's [`Users::log_in`]).
    pub(crate) fn replaced(&mut self, session: SessionId) {
        if let Some(user) = self.get_mut(session) {
            user.state = State::Replaced;
        }
    }

    /// `session` loses its login (lost to another instance, or its account removed) and is
    /// closing: its user id is free. Returns the user id it had.
    pub(crate) fn log_out(&mut self, session: SessionId) -> Option<Arc<str>> {
        let user = self.get_mut(session)?;
        let State::LoggedIn { user_id, .. } = std::mem::replace(&mut user.state, State::Replaced)
        else {
            return None;
        };
        if self.logged_in.get(&user_id) == Some(&session) {
            self.logged_in.remove(&user_id);
        }
        Some(user_id)
    }

    /// A session ended: forget its user, logging it out. Returns what it was.
    pub(crate) fn disconnect(&mut self, session: SessionId) -> Option<User> {
        let slot = self.slots.get_mut(session.index as usize)?;
        if slot.as_ref().is_none_or(|u| u.session != session) {
            return None;
        }
        let user = slot.take()?;
        if let State::LoggedIn { user_id, .. } = &user.state {
            if self.logged_in.get(user_id) == Some(&session) {
                self.logged_in.remove(user_id);
            }
        }
        Some(user)
    }

    /// Every logged-in session and its user id.
    pub(crate) fn logged_in(&self) -> Vec<(SessionId, String)> {
        self.logged_in
            .iter()
            .map(|(user_id, &session)| (session, user_id.to_string()))
            .collect()
    }

    /// Users logged in now.
    pub(crate) fn online(&self) -> usize {
        self.logged_in.len()
    }
}
