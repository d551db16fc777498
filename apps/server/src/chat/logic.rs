//! The chat's game logic, on the logic thread (the tutorial's `PacketManager::ProcessLogin`,
//! `ProcessEnterRoom`, `ProcessLeaveRoom`, `ProcessRoomChatMessage`).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iocp_accounts::{LoginDone, LoginJob, Outcome, canonical_user_id};
use iocp_chat_protocol::{
    DevEcho, LoginRequest, LoginResponse, MAX_USER_LIST, ResultCode, RoomChatNotify,
    RoomChatRequest, RoomChatResponse, RoomEnterRequest, RoomEnterResponse, RoomLeaveRequest,
    RoomLeaveResponse, RoomLeaveUserNotify, RoomNewUserNotify, RoomUser, RoomUserListNotify,
    TypedPacket,
};
use iocp_packet::{Logic, LogicContext, LogicPackets, PacketResult};
use iocp_server::{CloseReason, SessionId};

use super::login::{Audit, ChatLoginPool, ChatMessage, Ticket};
use super::rooms::{Member, Rooms};
use super::throttle::Throttle;
use super::users::{State, Users};
use super::{ChatConfig, Counters};

/// Failed logins after which a connection is closed (a password-guessing client costs itself a
/// reconnect, and its guesses a hash each).
const MAX_FAILED_LOGINS: u32 = 5;

/// Registers the chat's packet handlers.
pub(crate) fn register(packets: &mut LogicPackets<ChatLogic>) {
    packets
        .on_packet(ChatLogic::on_echo)
        .on_packet(ChatLogic::on_login)
        .on_packet(ChatLogic::on_enter)
        .on_packet(ChatLogic::on_leave)
        .on_packet(ChatLogic::on_chat);
}

/// The unique id of a logged-in session in the room notifies: its session id as a number (the
/// generation above the slot index), so a user who logs in again has another.
pub(crate) fn unique_id(session: SessionId) -> i64 {
    (i64::from(session.generation) << 32) | i64::from(session.index)
}

/// The chat's state: users and rooms. Only the logic thread touches it.
pub(crate) struct ChatLogic {
    users: Users,
    rooms: Rooms,
    login: ChatLoginPool,
    counters: Arc<Counters>,
    /// How long a connection may take to log in.
    login_timeout: Option<Duration>,
    /// When each connection must have logged in by, earliest first (checked on the tick).
    login_deadlines: BinaryHeap<Reverse<(Instant, SessionId)>>,
    throttle: Throttle,
    audit: Audit,
    /// How often the logged-in users' accounts are checked, and when next.
    audit_every: Option<Duration>,
    next_audit: Instant,
}

/// Queues a response; a failure means that the session is closing, which its disconnect handles.
fn reply(ctx: &LogicContext<'_>, session: SessionId, packet: &impl TypedPacket) {
    let _ = ctx.send_bytes(session, packet.encode());
}

impl ChatLogic {
    pub(crate) fn new(
        config: &ChatConfig,
        login: ChatLoginPool,
        audit: Audit,
        counters: Arc<Counters>,
    ) -> ChatLogic {
        ChatLogic {
            users: Users::new(config.server.max_sessions),
            rooms: Rooms::new(config.rooms, config.room_capacity),
            login,
            counters,
            login_timeout: config.login_timeout,
            login_deadlines: BinaryHeap::new(),
            throttle: Throttle::new(config.throttle),
            audit,
            audit_every: config.account_check,
            next_audit: Instant::now(),
        }
    }

    /// Closes the connections whose time to log in is up. One whose login is being checked
    /// right now is looked at again a little later: it asked in time.
    fn expire_logins(&mut self, ctx: &mut LogicContext<'_>) {
        let (Some(timeout), now) = (self.login_timeout, Instant::now()) else {
            return;
        };
        while let Some(&Reverse((deadline, session))) = self.login_deadlines.peek() {
            if deadline > now {
                break;
            }
            self.login_deadlines.pop();
            match self.users.get(session).map(|u| &u.state) {
                Some(State::Connected) => {
                    tracing::debug!("session {session}: no login within {timeout:?}: closing");
                    Counters::add(&self.counters.login_timeouts, 1);
                    let _ = ctx.close_with(
                        session,
                        CloseReason::Timeout(format!("no login within {timeout:?}")),
                    );
                }
                Some(State::LoggingIn(_)) => {
                    let again = now + (timeout / 10).max(Duration::from_millis(100));
                    self.login_deadlines.push(Reverse((again, session)));
                }
                _ => {} // logged in, replaced, or gone
            }
        }
    }

    /// The user id and room of a logged-in session.
    fn logged_in(&self, session: SessionId) -> Option<(Arc<str>, Option<u32>)> {
        match &self.users.get(session)?.state {
            State::LoggedIn { user_id, room } => Some((user_id.clone(), *room)),
            _ => None,
        }
    }

    fn set_room(&mut self, session: SessionId, new_room: Option<u32>) {
        if let Some(user) = self.users.get_mut(session) {
            if let State::LoggedIn { room, .. } = &mut user.state {
                *room = new_room;
            }
        }
    }

    fn refused_login(&self, ctx: &LogicContext<'_>, session: SessionId, result: ResultCode) {
        Counters::add(&self.counters.logins_refused, 1);
        reply(ctx, session, &LoginResponse { result });
    }

    /// `DEV_ECHO`: the same body back, logged in or not.
    fn on_echo(
        &mut self,
        ctx: &mut LogicContext<'_>,
        session: SessionId,
        echo: DevEcho,
    ) -> PacketResult {
        reply(ctx, session, &echo);
        Ok(())
    }

    /// `LOGIN_REQUEST`: checks what can be checked at once, then hands the password to the
    /// login pool; the answer comes back as [`ChatMessage::LoginDone`].
    fn on_login(
        &mut self,
        ctx: &mut LogicContext<'_>,
        session: SessionId,
        request: LoginRequest,
    ) -> PacketResult {
        let Some(user) = self.users.get(session) else {
            return Ok(());
        };
        // A user logged in on another session may log in again: once the password is checked,
        // the new session takes over (see `login_done`).
        let addr = user.addr;
        let now = Instant::now();
        // Ids are compared in their NFKC form: `ａｌｉｃｅ` logs in as `alice`.
        let result = match canonical_user_id(&request.user_id) {
            _ if user.state != State::Connected => ResultCode::LOGIN_USER_ALREADY,
            None => ResultCode::LOGIN_USER_INVALID_ID,
            Some(user_id) => match self.throttle.admit(&user_id, addr, now) {
                Err(why) => {
                    tracing::debug!("session {session}: login of {user_id:?} throttled: {why:?}");
                    Counters::add(&self.counters.logins_throttled, 1);
                    ResultCode::LOGIN_TOO_MANY_ATTEMPTS
                }
                Ok(()) => {
                    let job = LoginJob {
                        ticket: (session, addr),
                        user_id: user_id.clone(),
                        password: request.password,
                    };
                    if self.login.submit(job).is_ok() {
                        Counters::add(&self.counters.login_checks, 1);
                        if let Some(user) = self.users.get_mut(session) {
                            user.state = State::LoggingIn(user_id);
                            user.login_started = Some(now);
                        }
                        return Ok(());
                    }
                    self.throttle.cancel(addr);
                    ResultCode::LOGIN_SERVER_BUSY
                }
            },
        };
        self.refused_login(ctx, session, result);
        Ok(())
    }

    /// A password check came back.
    fn login_done(&mut self, ctx: &mut LogicContext<'_>, done: LoginDone<Ticket>) {
        let LoginDone {
            ticket: (session, addr),
            user_id,
            outcome,
        } = done;
        Counters::add(&self.counters.login_answers, 1);
        match outcome {
            Outcome::Accepted | Outcome::Refused => {
                let failed = outcome == Outcome::Refused;
                self.throttle.done(&user_id, addr, failed, Instant::now());
            }
            Outcome::StoreFailed | Outcome::Dropped => self.throttle.cancel(addr),
        }
        if outcome == Outcome::Dropped {
            Counters::add(&self.counters.login_checks_dropped, 1);
            return; // its session is gone
        }
        let Some(user) = self.users.get_mut(session) else {
            return; // disconnected meanwhile
        };
        if !matches!(&user.state, State::LoggingIn(id) if *id == user_id) {
            return;
        }
        if let Some(started) = user.login_started.take() {
            (self.counters.login_latency.0).observe(started.elapsed().as_secs_f64());
        }
        user.state = State::Connected;
        let result = match outcome {
            Outcome::Accepted => ResultCode::NONE,
            Outcome::Refused => {
                user.failed_logins += 1;
                ResultCode::LOGIN_USER_INVALID_PW
            }
            Outcome::StoreFailed => ResultCode::LOGIN_STORE_ERROR,
            Outcome::Dropped => unreachable!("handled above"),
        };
        let failed = user.failed_logins;
        if result != ResultCode::NONE {
            tracing::debug!("session {session}: login as {user_id:?} refused: {result}");
            self.refused_login(ctx, session, result);
            if failed >= MAX_FAILED_LOGINS {
                tracing::warn!("session {session}: {failed} failed logins: closing it");
                let _ = ctx.close_with(
                    session,
                    CloseReason::Protocol(format!("{failed} failed logins")),
                );
            }
            return;
        }
        // The user's earlier session, if any, is replaced: whatever state it is in (its client
        // gone without a word, or still connected elsewhere), the newest login wins. It leaves
        // its room (the others are told) and is closed.
        if let Some(old) = self
            .users
            .session_of(&user_id)
            .filter(|&old| old != session)
        {
            if let Some((_, Some(number))) = self.logged_in(old) {
                self.leave_room(ctx, old, number);
            }
            self.users.replaced(old);
            Counters::add(&self.counters.logins_replaced, 1);
            tracing::info!("session {old}: {user_id:?} logged in again on {session}: closing it");
            let _ = ctx.close_with(old, CloseReason::Closed);
        }
        self.users.log_in(session, &user_id);
        Counters::add(&self.counters.logins, 1);
        self.counters.online.store(
            self.users.online() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        tracing::debug!("session {session}: logged in as {user_id:?}");
        reply(ctx, session, &LoginResponse { result });
    }

    /// `ROOM_ENTER_REQUEST`: the response, then the member list (the newcomer included, last)
    /// to the newcomer, then `ROOM_NEW_USER_NOTIFY` to the others.
    fn on_enter(
        &mut self,
        ctx: &mut LogicContext<'_>,
        session: SessionId,
        request: RoomEnterRequest,
    ) -> PacketResult {
        let refuse = |result| RoomEnterResponse { result };
        let Some((user_id, room)) = self.logged_in(session) else {
            reply(ctx, session, &refuse(ResultCode::USER_MGR_NOT_LOGGED_IN));
            return Ok(());
        };
        if room.is_some() {
            reply(
                ctx,
                session,
                &refuse(ResultCode::ENTER_ROOM_INVALID_USER_STATUS),
            );
            return Ok(());
        }
        let member = Member {
            session,
            user_id: user_id.clone(),
        };
        let number = match self.rooms.enter(request.room_number, member) {
            Ok(number) => number,
            Err(result) => {
                reply(ctx, session, &refuse(result));
                return Ok(());
            }
        };
        self.set_room(session, Some(number));
        Counters::add(&self.counters.room_enters, 1);
        let room = self.rooms.get(number).expect("just entered");
        self.counters.entered(room.members().len());
        reply(
            ctx,
            session,
            &RoomEnterResponse {
                result: ResultCode::NONE,
            },
        );
        let members: Vec<RoomUser> = room
            .members()
            .iter()
            .map(|m| RoomUser {
                unique_id: unique_id(m.session),
                user_id: m.user_id.to_string(),
            })
            .collect();
        for chunk in members.chunks(MAX_USER_LIST) {
            let list = RoomUserListNotify {
                users: chunk.to_vec(),
            };
            reply(ctx, session, &list);
        }
        let notify = RoomNewUserNotify {
            user: RoomUser {
                unique_id: unique_id(session),
                user_id: user_id.to_string(),
            },
        }
        .encode();
        room.send_all(ctx, &notify, Some(session));
        Ok(())
    }

    /// Takes `session` out of its room and tells the others.
    fn leave_room(&mut self, ctx: &LogicContext<'_>, session: SessionId, number: u32) {
        if let Some(member) = self.rooms.leave(number, session) {
            let members = self.rooms.get(number).map_or(0, |r| r.members().len());
            self.counters.left(members);
            let notify = RoomLeaveUserNotify {
                unique_id: unique_id(member.session),
            }
            .encode();
            if let Some(room) = self.rooms.get(number) {
                room.send_all(ctx, &notify, None);
            }
        }
        self.set_room(session, None);
    }

    /// `ROOM_LEAVE_REQUEST`.
    fn on_leave(
        &mut self,
        ctx: &mut LogicContext<'_>,
        session: SessionId,
        _: RoomLeaveRequest,
    ) -> PacketResult {
        let result = match self.logged_in(session) {
            None => ResultCode::USER_MGR_NOT_LOGGED_IN,
            Some((_, None)) => ResultCode::LEAVE_ROOM_INVALID_ROOM_INDEX,
            Some((_, Some(number))) => {
                reply(
                    ctx,
                    session,
                    &RoomLeaveResponse {
                        result: ResultCode::NONE,
                    },
                );
                self.leave_room(ctx, session, number);
                return Ok(());
            }
        };
        reply(ctx, session, &RoomLeaveResponse { result });
        Ok(())
    }

    /// `ROOM_CHAT_REQUEST`: the response to the sender, then one `ROOM_CHAT_NOTIFY`, encoded
    /// once, to every member (the sender included).
    fn on_chat(
        &mut self,
        ctx: &mut LogicContext<'_>,
        session: SessionId,
        request: RoomChatRequest,
    ) -> PacketResult {
        let (user_id, number) = match self.logged_in(session) {
            None => {
                reply(
                    ctx,
                    session,
                    &RoomChatResponse {
                        result: ResultCode::USER_MGR_NOT_LOGGED_IN,
                    },
                );
                return Ok(());
            }
            Some((_, None)) => {
                reply(
                    ctx,
                    session,
                    &RoomChatResponse {
                        result: ResultCode::CHAT_ROOM_INVALID_ROOM_NUMBER,
                    },
                );
                return Ok(());
            }
            Some((user_id, Some(number))) => (user_id, number),
        };
        reply(
            ctx,
            session,
            &RoomChatResponse {
                result: ResultCode::NONE,
            },
        );
        let notify = RoomChatNotify {
            user_id: user_id.to_string(),
            message: request.message,
        }
        .encode();
        let room = self.rooms.get(number).expect("a member's room exists");
        let sent = room.send_all(ctx, &notify, None);
        Counters::add(&self.counters.chats, 1);
        Counters::add(&self.counters.notifies, sent);
        Ok(())
    }
}

impl Logic for ChatLogic {
    type Message = ChatMessage;

    fn on_connect(&mut self, _ctx: &mut LogicContext<'_>, session: SessionId, peer: SocketAddr) {
        tracing::debug!("session {session}: connected from {peer}");
        self.users.connect(session, peer.ip());
        if let Some(timeout) = self.login_timeout {
            self.login_deadlines
                .push(Reverse((Instant::now() + timeout, session)));
        }
    }

    fn on_tick(&mut self, ctx: &mut LogicContext<'_>) {
        self.expire_logins(ctx);
        let now = Instant::now();
        if let Some(every) = self.audit_every {
            if now >= self.next_audit {
                self.next_audit = now + every;
                self.audit.check(self.users.logged_in());
            }
        }
    }

    /// Leaves the room and logs out, whatever closed the session.
    fn on_disconnect(
        &mut self,
        ctx: &mut LogicContext<'_>,
        session: SessionId,
        reason: CloseReason,
    ) {
        if let Some((_, Some(number))) = self.logged_in(session) {
            self.leave_room(ctx, session, number);
        }
        if let Some(user) = self.users.disconnect(session) {
            if let State::LoggedIn { user_id, .. } = user.state {
                tracing::debug!("session {session}: {user_id:?} logged out: {reason}");
            }
        }
        self.counters.online.store(
            self.users.online() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    fn on_message(&mut self, ctx: &mut LogicContext<'_>, message: ChatMessage) {
        match message {
            ChatMessage::LoginDone(done) => self.login_done(ctx, done),
            ChatMessage::AccountsRemoved(removed) => {
                for (session, user_id) in removed {
                    if self.users.session_of(&user_id) != Some(session) {
                        continue; // logged out or replaced since
                    }
                    tracing::info!(
                        "session {session}: the account {user_id:?} was removed: closing it"
                    );
                    if let Some((_, Some(number))) = self.logged_in(session) {
                        self.leave_room(ctx, session, number);
                    }
                    self.users.replaced(session);
                    let _ = ctx.close_with(session, CloseReason::Closed);
                }
            }
        }
    }
}
