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

use super::engine::{Engine, Entered, EventKind, Output, RoomEvent};
use super::login::{Audit, ChatLoginPool, ChatMessage, Ticket};
use super::throttle::Throttle;
use super::users::{Place, State, Users};
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

/// The chat's state: users and rooms. Only the logic thread touches it.
pub(crate) struct ChatLogic {
    users: Users,
    /// The shared state: presence, rooms and their events.
    engine: Box<dyn Engine>,
    /// This instance's members of each room.
    rooms: Vec<LocalRoom>,
    /// The engine's answers not applied yet (reused).
    out: Vec<Output>,
    /// The batch of outputs being applied (kept for its capacity).
    applying: Vec<Output>,
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

/// A member of a room on this instance.
#[derive(Debug)]
struct LocalMember {
    session: SessionId,
    /// The number of its `Joined` event: it gets the room's events numbered after it.
    joined: u64,
}

/// This instance's view of a room: its local members, and the events held while an entry is
/// being answered (an event may arrive before the answer that tells where the newcomer's
/// order starts).
#[derive(Debug, Default)]
struct LocalRoom {
    members: Vec<LocalMember>,
    /// Entries asked for and not answered yet.
    entering: u32,
    /// The events that came while `entering > 0`.
    held: Vec<RoomEvent>,
}

/// Queues a room's event to those of `members` that joined before it (the same bytes to
/// each); returns to how many.
fn send_event(ctx: &LogicContext<'_>, members: &[LocalMember], event: &RoomEvent) -> u64 {
    let mut bytes = None;
    let mut sent = 0;
    for member in members {
        if event.seq.is_some_and(|seq| seq <= member.joined) {
            continue;
        }
        let bytes = bytes.get_or_insert_with(|| match &event.kind {
            EventKind::Joined(member) => RoomNewUserNotify {
                user: RoomUser {
                    unique_id: member.id,
                    user_id: member.user_id.to_string(),
                },
            }
            .encode(),
            EventKind::Left(id) => RoomLeaveUserNotify { unique_id: *id }.encode(),
            EventKind::Chat { user_id, message } => RoomChatNotify {
                user_id: user_id.to_string(),
                message: message.clone(),
            }
            .encode(),
        });
        if ctx.send_bytes(member.session, bytes.clone()).is_ok() {
            sent += 1;
        }
    }
    sent
}

/// Queues a response; a failure means that the session is closing, which its disconnect handles.
fn reply(ctx: &LogicContext<'_>, session: SessionId, packet: &impl TypedPacket) {
    let _ = ctx.send_bytes(session, packet.encode());
}

impl ChatLogic {
    pub(crate) fn new(
        config: &ChatConfig,
        engine: Box<dyn Engine>,
        login: ChatLoginPool,
        audit: Audit,
        counters: Arc<Counters>,
    ) -> ChatLogic {
        ChatLogic {
            users: Users::new(config.server.max_sessions),
            engine,
            rooms: (0..config.rooms).map(|_| LocalRoom::default()).collect(),
            out: Vec::new(),
            applying: Vec::new(),
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

    /// The user id and place of a logged-in session.
    fn logged_in(&self, session: SessionId) -> Option<(Arc<str>, Place)> {
        match &self.users.get(session)?.state {
            State::LoggedIn { user_id, room } => Some((user_id.clone(), *room)),
            _ => None,
        }
    }

    fn set_place(&mut self, session: SessionId, place: Place) {
        if let Some(user) = self.users.get_mut(session) {
            if let State::LoggedIn { room, .. } = &mut user.state {
                *room = place;
            }
        }
    }

    /// Applies what the engine answered, in order (more may come of it: applied too).
    fn apply(&mut self, ctx: &mut LogicContext<'_>) {
        // Applying an output may push more (to `out`): they are applied after the batch at
        // hand, in order. The two vectors keep their capacity from call to call.
        let mut batch = std::mem::take(&mut self.applying);
        while !self.out.is_empty() {
            std::mem::swap(&mut batch, &mut self.out);
            for output in batch.drain(..) {
                match output {
                    Output::Claimed {
                        session,
                        user_id,
                        result,
                    } => self.claimed(ctx, session, user_id, result),
                    Output::Entered {
                        session,
                        room,
                        result,
                    } => self.entered(ctx, session, room, result),
                    Output::Event(event) => self.deliver(ctx, event),
                    Output::Lost { user_id } => self.lost(ctx, &user_id),
                    Output::Resynced { room, seq } => {
                        if let Some(local) = self.rooms.get_mut(room as usize) {
                            for member in &mut local.members {
                                member.joined = seq;
                            }
                            local.held.clear();
                        }
                    }
                }
            }
        }
        self.applying = batch;
    }

    /// Delivers a room's event to this instance's members of the room that joined before it.
    fn deliver(&mut self, ctx: &LogicContext<'_>, event: RoomEvent) {
        let Some(local) = self.rooms.get_mut(event.room as usize) else {
            return;
        };
        let sent = send_event(ctx, &local.members, &event);
        if matches!(event.kind, EventKind::Chat { .. }) {
            Counters::add(&self.counters.notifies, sent);
        }
        if local.entering > 0 && event.seq.is_some() {
            local.held.push(event);
        }
    }

    /// The engine answered an entry.
    fn entered(
        &mut self,
        ctx: &mut LogicContext<'_>,
        session: SessionId,
        room: u32,
        result: Result<Entered, ResultCode>,
    ) {
        let Some(local) = self.rooms.get_mut(room as usize) else {
            return;
        };
        local.entering = local.entering.saturating_sub(1);
        let held = if local.entering == 0 {
            std::mem::take(&mut local.held)
        } else {
            local.held.clone()
        };
        let waiting = matches!(self.logged_in(session), Some((_, Place::Entering(r))) if r == room);
        let entered = match result {
            Err(result) => {
                if waiting {
                    self.set_place(session, Place::Lobby);
                    reply(ctx, session, &RoomEnterResponse { result });
                }
                return;
            }
            Ok(entered) => entered,
        };
        if !waiting {
            // The session left or closed while it waited: it leaves at once.
            self.engine.leave(room, entered.member_id, &mut self.out);
            return;
        }
        self.set_place(
            session,
            Place::In {
                room,
                member_id: entered.member_id,
            },
        );
        Counters::add(&self.counters.room_enters, 1);
        reply(
            ctx,
            session,
            &RoomEnterResponse {
                result: ResultCode::NONE,
            },
        );
        let members: Vec<RoomUser> = entered
            .members
            .iter()
            .map(|m| RoomUser {
                unique_id: m.id,
                user_id: m.user_id.to_string(),
            })
            .collect();
        for chunk in members.chunks(MAX_USER_LIST) {
            let list = RoomUserListNotify {
                users: chunk.to_vec(),
            };
            reply(ctx, session, &list);
        }
        self.rooms[room as usize].members.push(LocalMember {
            session,
            joined: entered.seq,
        });
        // This instance's members (on a shared engine, the others count their own).
        self.counters
            .entered(self.rooms[room as usize].members.len());
        // What happened in the room after its entry, before the answer came.
        let newcomer = [LocalMember {
            session,
            joined: entered.seq,
        }];
        for event in &held {
            send_event(ctx, &newcomer, event);
        }
    }

    /// Takes `session` out of its room (or its entry) and tells the engine, which tells the
    /// others.
    fn leave_room(&mut self, session: SessionId) {
        match self.logged_in(session) {
            Some((_, Place::In { room, member_id })) => {
                if let Some(local) = self.rooms.get_mut(room as usize) {
                    let before = local.members.len();
                    local.members.retain(|m| m.session != session);
                    if local.members.len() < before {
                        self.counters.left(local.members.len());
                    }
                }
                self.engine.leave(room, member_id, &mut self.out);
            }
            Some((_, Place::Entering(_))) => {} // its answer finds it gone and leaves
            _ => return,
        }
        self.set_place(session, Place::Lobby);
    }

    /// The session logged in as `user_id` lost it to another instance: it is closed.
    fn lost(&mut self, ctx: &mut LogicContext<'_>, user_id: &str) {
        let Some(session) = self.users.session_of(user_id) else {
            return;
        };
        tracing::warn!("session {session}: {user_id:?} is logged in elsewhere now: closing it");
        self.leave_room(session);
        self.users.log_out(session);
        let _ = ctx.close_with(session, CloseReason::Closed);
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
            // The shared store is out of reach: answered at once, without a password check.
            Some(_) if !self.engine.available() => ResultCode::LOGIN_SERVER_BUSY,
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
        if outcome != Outcome::Accepted {
            // Answered now; an accepted one when its presence is claimed (`claimed`).
            if let Some(started) = user.login_started.take() {
                (self.counters.login_latency.0).observe(started.elapsed().as_secs_f64());
            }
        }
        let result = match outcome {
            Outcome::Accepted => {
                // The password is right: the engine claims the user's presence; the answer
                // comes as `Output::Claimed`, in `claimed`.
                let user_id: Arc<str> = Arc::from(user_id);
                self.engine.claim(session, &user_id, &mut self.out);
                self.apply(ctx);
                return;
            }
            Outcome::Refused => {
                user.failed_logins += 1;
                ResultCode::LOGIN_USER_INVALID_PW
            }
            Outcome::StoreFailed => ResultCode::LOGIN_STORE_ERROR,
            Outcome::Dropped => unreachable!("handled above"),
        };
        user.state = State::Connected;
        let failed = user.failed_logins;
        tracing::debug!("session {session}: login as {user_id:?} refused: {result}");
        self.refused_login(ctx, session, result);
        if failed >= MAX_FAILED_LOGINS {
            tracing::warn!("session {session}: {failed} failed logins: closing it");
            let _ = ctx.close_with(
                session,
                CloseReason::Protocol(format!("{failed} failed logins")),
            );
        }
    }

    /// The engine answered a presence claim: the login is done.
    fn claimed(
        &mut self,
        ctx: &mut LogicContext<'_>,
        session: SessionId,
        user_id: Arc<str>,
        result: Result<(), ResultCode>,
    ) {
        let waiting = self
            .users
            .get(session)
            .is_some_and(|u| matches!(&u.state, State::LoggingIn(id) if **id == *user_id));
        if !waiting {
            // Closed while the claim was on its way: give the presence back unless another
            // session of this instance has the user.
            if result.is_ok() && self.users.session_of(&user_id).is_none() {
                self.engine.release(&user_id);
            }
            return;
        }
        if let Some(user) = self.users.get_mut(session) {
            user.state = State::Connected;
            if let Some(started) = user.login_started.take() {
                (self.counters.login_latency.0).observe(started.elapsed().as_secs_f64());
            }
        }
        if let Err(result) = result {
            tracing::debug!("session {session}: login as {user_id:?} refused: {result}");
            self.refused_login(ctx, session, result);
            return;
        }
        // The user's earlier session on this instance, if any, is replaced: whatever state it
        // is in (its client gone without a word, or still connected), the newest login wins.
        // It leaves its room (the others are told) and is closed.
        if let Some(old) = self
            .users
            .session_of(&user_id)
            .filter(|&old| old != session)
        {
            self.leave_room(old);
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
        reply(
            ctx,
            session,
            &LoginResponse {
                result: ResultCode::NONE,
            },
        );
    }

    /// `ROOM_ENTER_REQUEST`: the engine is asked; its answer (`entered`) sends the response and
    /// the member list (the newcomer included, last) to the newcomer, and its `Joined` event
    /// `ROOM_NEW_USER_NOTIFY` to the others.
    fn on_enter(
        &mut self,
        ctx: &mut LogicContext<'_>,
        session: SessionId,
        request: RoomEnterRequest,
    ) -> PacketResult {
        let refuse = |result| RoomEnterResponse { result };
        let Some((user_id, place)) = self.logged_in(session) else {
            reply(ctx, session, &refuse(ResultCode::USER_MGR_NOT_LOGGED_IN));
            return Ok(());
        };
        if place != Place::Lobby {
            reply(
                ctx,
                session,
                &refuse(ResultCode::ENTER_ROOM_INVALID_USER_STATUS),
            );
            return Ok(());
        }
        let Some(room) = u32::try_from(request.room_number)
            .ok()
            .filter(|&r| (r as usize) < self.rooms.len())
        else {
            reply(ctx, session, &refuse(ResultCode::ROOM_INVALID_INDEX));
            return Ok(());
        };
        self.set_place(session, Place::Entering(room));
        self.rooms[room as usize].entering += 1;
        self.engine.enter(session, &user_id, room, &mut self.out);
        self.apply(ctx);
        Ok(())
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
            Some((_, Place::In { .. })) if !self.engine.available() => {
                ResultCode::LOGIN_SERVER_BUSY
            }
            Some((_, Place::In { .. })) => {
                reply(
                    ctx,
                    session,
                    &RoomLeaveResponse {
                        result: ResultCode::NONE,
                    },
                );
                self.leave_room(session);
                self.apply(ctx);
                return Ok(());
            }
            Some(_) => ResultCode::LEAVE_ROOM_INVALID_ROOM_INDEX,
        };
        reply(ctx, session, &RoomLeaveResponse { result });
        Ok(())
    }

    /// `ROOM_CHAT_REQUEST`: the response to the sender, then the engine's `Chat` event: one
    /// `ROOM_CHAT_NOTIFY`, encoded once, to every member (the sender included).
    fn on_chat(
        &mut self,
        ctx: &mut LogicContext<'_>,
        session: SessionId,
        request: RoomChatRequest,
    ) -> PacketResult {
        let (user_id, room) = match self.logged_in(session) {
            None => {
                let result = ResultCode::USER_MGR_NOT_LOGGED_IN;
                reply(ctx, session, &RoomChatResponse { result });
                return Ok(());
            }
            Some((user_id, Place::In { room, .. })) => (user_id, room),
            Some(_) => {
                let result = ResultCode::CHAT_ROOM_INVALID_ROOM_NUMBER;
                reply(ctx, session, &RoomChatResponse { result });
                return Ok(());
            }
        };
        reply(
            ctx,
            session,
            &RoomChatResponse {
                result: ResultCode::NONE,
            },
        );
        Counters::add(&self.counters.chats, 1);
        self.engine
            .chat(room, &user_id, request.message, &mut self.out);
        self.apply(ctx);
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
        self.leave_room(session);
        if let Some(user) = self.users.disconnect(session) {
            if let State::LoggedIn { user_id, .. } = user.state {
                tracing::debug!("session {session}: {user_id:?} logged out: {reason}");
                if self.users.session_of(&user_id).is_none() {
                    self.engine.release(&user_id);
                }
            }
        }
        self.counters.online.store(
            self.users.online() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        self.apply(ctx);
    }

    fn on_message(&mut self, ctx: &mut LogicContext<'_>, message: ChatMessage) {
        match message {
            ChatMessage::LoginDone(done) => self.login_done(ctx, done),
            ChatMessage::Engine(outputs) => {
                self.out.extend(outputs);
                self.apply(ctx);
            }
            ChatMessage::AccountsRemoved(removed) => {
                for (session, user_id) in removed {
                    if self.users.session_of(&user_id) != Some(session) {
                        continue; // logged out or replaced since
                    }
                    tracing::info!(
                        "session {session}: the account {user_id:?} was removed: closing it"
                    );
                    self.leave_room(session);
                    if let Some(user_id) = self.users.log_out(session) {
                        self.engine.release(&user_id);
                    }
                    let _ = ctx.close_with(session, CloseReason::Closed);
                }
                self.apply(ctx);
            }
        }
    }
}
