//! The chat engine on Redis: presence claimed atomically with an expiry each instance keeps
//! refreshing, rooms whose capacity holds across instances, and room events on sharded pub/sub
//! in one numbered order per room.
//!
//! ```text
//!  logic thread ──Command──▶ engine task (tokio) ──EVALSHA──▶ Redis (or the cluster's shard of the key)
//!       ▲                        │ every ttl/3: presence refresh, room sync (reaps the dead)
//!       │                        │ when Redis comes back: the same, then `Resynced`
//!       ├──Output (answers)──────┘
//!       └──Output::Event ── forwarder task ◀──SSUBSCRIBE── iocp:{room:N}:events
//! ```
//!
//! - The logic thread never waits: [`RedisEngine`]'s calls queue a command (or, with Redis out
//!   of reach, answer at once: logins and entries `LOGIN_SERVER_BUSY`, chat delivered to this
//!   instance's members only).
//! - The engine task takes the commands in batches and sends each batch's scripts at once, in
//!   order (the client pipelines them), so a room's steps from this instance keep their order.
//! - An instance subscribes to a room's channel before its first member's entry script runs,
//!   and leaves the channel when it has no member there.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fred::prelude::*;
use fred::types::Value;
use fred::types::config::Options;
use fred::types::scripts::Script;
use iocp_chat_protocol::ResultCode;
use iocp_packet::LogicSender;
use iocp_server::SessionId;
use tokio::sync::mpsc;

use super::{Redis, scripts};
use crate::chat::engine::{Engine, Entered, EventKind, Output, RoomEvent, RoomMember};
use crate::chat::login::ChatMessage;

/// The result code of a login or an entry while Redis is out of reach.
const BUSY: ResultCode = ResultCode::LOGIN_SERVER_BUSY;

/// What the logic thread asks of the engine task.
#[derive(Debug)]
enum Command {
    Claim {
        session: SessionId,
        user_id: Arc<str>,
    },
    Release {
        user_id: Arc<str>,
    },
    Enter {
        session: SessionId,
        user_id: Arc<str>,
        room: u32,
        member_id: i64,
    },
    /// `published`: false if the logic delivered it locally (Redis was away); the task only
    /// forgets the member then, and the next sync removes it from Redis.
    Leave {
        room: u32,
        member_id: i64,
        published: bool,
    },
    Chat {
        room: u32,
        user_id: Arc<str>,
        message: Vec<u8>,
    },
}

/// The logic thread's side of the Redis engine.
pub(crate) struct RedisEngine {
    commands: mpsc::UnboundedSender<Command>,
    up: Arc<AtomicBool>,
    /// Member ids: this instance's random base plus a counter (unique among the instances
    /// without asking Redis, and kept across a Redis restart).
    next_member: i64,
    task: Option<tokio::task::JoinHandle<()>>,
    redis: Arc<Redis>,
}

impl RedisEngine {
    /// Starts the engine's tasks on `redis`'s runtime; its answers go to the logic thread
    /// through `results`.
    pub(crate) fn start(
        redis: Arc<Redis>,
        rooms: u32,
        capacity: u32,
        results: LogicSender<ChatMessage>,
    ) -> RedisEngine {
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let instance = format!("{random:016x}");
        // 2^52 ids per instance at most, below 2^62 in all: exact as a double too.
        let base = ((random >> 12) as i64 & ((1 << 50) - 1)) << 12;
        let up = Arc::new(AtomicBool::new(redis.is_connected()));
        let (tx, rx) = mpsc::unbounded_channel();
        let task = Task {
            redis: redis.clone(),
            options: Options {
                fail_fast: true,
                max_attempts: Some(1),
                timeout: Some(redis.config.command_timeout),
                ..Options::default()
            },
            scripts: Scripts {
                enter: Script::from_lua(scripts::enter()),
                leave: Script::from_lua(scripts::leave()),
                chat: Script::from_lua(scripts::chat()),
                sync: Script::from_lua(scripts::sync()),
                claim: Script::from_lua(scripts::CLAIM),
                release: Script::from_lua(scripts::RELEASE),
            },
            instance: instance.clone(),
            ttl_ms: redis.config.presence_ttl.as_millis().max(1) as u64,
            rooms,
            capacity,
            up: up.clone(),
            results: results.clone(),
            claimed: HashSet::new(),
            members: HashMap::new(),
            per_room: vec![RoomCount::default(); rooms as usize],
            subscribed: HashSet::new(),
            logged_down: false,
        };
        let forwarder = redis.subscriber.message_rx();
        redis.runtime.spawn(forward(forwarder, results));
        let handle = redis.runtime.spawn(task.run(rx));
        tracing::info!(
            "chat engine: Redis at {} (instance {instance}, presence {:?})",
            redis.config.urls.join(", "),
            redis.config.presence_ttl
        );
        RedisEngine {
            commands: tx,
            up,
            next_member: base,
            task: Some(handle),
            redis,
        }
    }

    fn up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn send(&self, command: Command) {
        let _ = self.commands.send(command);
    }
}

impl Drop for RedisEngine {
    fn drop(&mut self) {
        // Closing the channel ends the task, which gives back this instance's users and rooms.
        let (tx, _) = mpsc::unbounded_channel();
        drop(std::mem::replace(&mut self.commands, tx));
        if let Some(task) = self.task.take() {
            let _ = self
                .redis
                .block_on(async { tokio::time::timeout(Duration::from_secs(2), task).await });
        }
    }
}

impl Engine for RedisEngine {
    fn available(&self) -> bool {
        self.up()
    }

    fn claim(&mut self, session: SessionId, user_id: &Arc<str>, out: &mut Vec<Output>) {
        if !self.up() {
            out.push(Output::Claimed {
                session,
                user_id: user_id.clone(),
                result: Err(BUSY),
            });
            return;
        }
        self.send(Command::Claim {
            session,
            user_id: user_id.clone(),
        });
    }

    fn release(&mut self, user_id: &Arc<str>) {
        self.send(Command::Release {
            user_id: user_id.clone(),
        });
    }

    fn enter(&mut self, session: SessionId, user_id: &Arc<str>, room: u32, out: &mut Vec<Output>) {
        if !self.up() {
            out.push(Output::Entered {
                session,
                room,
                result: Err(BUSY),
            });
            return;
        }
        self.next_member += 1;
        self.send(Command::Enter {
            session,
            user_id: user_id.clone(),
            room,
            member_id: self.next_member,
        });
    }

    fn leave(&mut self, room: u32, member_id: i64, out: &mut Vec<Output>) {
        let published = self.up();
        if !published {
            out.push(Output::Event(RoomEvent {
                room,
                seq: None,
                kind: EventKind::Left(member_id),
            }));
        }
        self.send(Command::Leave {
            room,
            member_id,
            published,
        });
    }

    fn chat(&mut self, room: u32, user_id: &Arc<str>, message: Vec<u8>, out: &mut Vec<Output>) {
        if !self.up() {
            out.push(Output::Event(RoomEvent {
                room,
                seq: None,
                kind: EventKind::Chat {
                    user_id: user_id.clone(),
                    message,
                },
            }));
            return;
        }
        self.send(Command::Chat {
            room,
            user_id: user_id.clone(),
            message,
        });
    }
}

/// The scripts, loaded on first use (and again after a Redis restart: `NOSCRIPT`).
struct Scripts {
    enter: Script,
    leave: Script,
    chat: Script,
    sync: Script,
    claim: Script,
    release: Script,
}

/// This instance's members and entries in one room.
#[derive(Clone, Copy, Debug, Default)]
struct RoomCount {
    members: u32,
    entering: u32,
}

/// The engine task: runs the commands, refreshes, syncs after a reconnect.
struct Task {
    redis: Arc<Redis>,
    options: Options,
    scripts: Scripts,
    instance: String,
    ttl_ms: u64,
    rooms: u32,
    capacity: u32,
    up: Arc<AtomicBool>,
    results: LogicSender<ChatMessage>,
    /// The users this instance has claimed.
    claimed: HashSet<Arc<str>>,
    /// This instance's members: id → (room, user id).
    members: HashMap<i64, (u32, Arc<str>)>,
    per_room: Vec<RoomCount>,
    /// The rooms whose channel this instance is subscribed to.
    subscribed: HashSet<u32>,
    /// Whether "Redis is out of reach" was logged (once per outage).
    logged_down: bool,
}

fn room_keys(room: u32) -> Vec<String> {
    ["members", "alive", "seq", "events"]
        .iter()
        .map(|part| format!("iocp:{{room:{room}}}:{part}"))
        .collect()
}

fn channel(room: u32) -> String {
    format!("iocp:{{room:{room}}}:events")
}

fn presence_key(user_id: &str) -> String {
    format!("iocp:{{user:{user_id}}}:presence")
}

/// Runs `script` (loading it first if Redis does not have it).
async fn run(
    redis: &Redis,
    options: &Options,
    script: &Script,
    keys: Vec<String>,
    args: Vec<Value>,
) -> Result<Value, Error> {
    let started = std::time::Instant::now();
    let with = redis.client.with_options(options);
    let result = match with
        .evalsha::<Value, _, _, _>(script.sha1().clone(), keys.clone(), args.clone())
        .await
    {
        Err(e) if e.details().starts_with("NOSCRIPT") => {
            let lua = script.lua().cloned().unwrap_or_default();
            with.script_load_cluster::<(), _>(lua).await?;
            with.evalsha(script.sha1().clone(), keys, args).await
        }
        result => result,
    };
    redis.metrics.command(started.elapsed(), result.is_ok());
    result
}

/// The members in an `enter` reply (`id, "entry-seq instance user-id"` pairs), in the order
/// they entered.
fn members_of(values: &[Value]) -> Vec<RoomMember> {
    let mut members: Vec<(u64, RoomMember)> = values
        .chunks_exact(2)
        .filter_map(|pair| {
            let id: i64 = pair[0].as_str()?.parse().ok()?;
            let value = pair[1].as_str()?;
            let mut parts = value.splitn(3, ' ');
            let seq: u64 = parts.next()?.parse().ok()?;
            let _instance = parts.next()?;
            let user_id = parts.next()?;
            Some((
                seq,
                RoomMember {
                    id,
                    user_id: Arc::from(user_id),
                },
            ))
        })
        .collect();
    members.sort_by_key(|(seq, _)| *seq);
    members.into_iter().map(|(_, m)| m).collect()
}

/// A room event from its channel: `seq J id user`, `seq L id`, `seq C user message`.
fn parse_event(room: u32, payload: &[u8]) -> Option<RoomEvent> {
    let mut parts = payload.splitn(3, |&b| b == b' ');
    let seq: u64 = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let kind = parts.next()?;
    let rest = parts.next()?;
    let kind = match kind {
        b"J" => {
            let mut p = rest.splitn(2, |&b| b == b' ');
            let id = std::str::from_utf8(p.next()?).ok()?.parse().ok()?;
            let user_id = std::str::from_utf8(p.next()?).ok()?;
            EventKind::Joined(RoomMember {
                id,
                user_id: Arc::from(user_id),
            })
        }
        b"L" => EventKind::Left(std::str::from_utf8(rest).ok()?.parse().ok()?),
        b"C" => {
            let mut p = rest.splitn(2, |&b| b == b' ');
            let user_id = std::str::from_utf8(p.next()?).ok()?;
            EventKind::Chat {
                user_id: Arc::from(user_id),
                message: p.next()?.to_vec(),
            }
        }
        _ => return None,
    };
    Some(RoomEvent {
        room,
        seq: Some(seq),
        kind,
    })
}

/// The room of a channel name (`iocp:{room:N}:events`).
fn room_of(channel: &str) -> Option<u32> {
    channel
        .strip_prefix("iocp:{room:")?
        .strip_suffix("}:events")?
        .parse()
        .ok()
}

/// Hands the room events from the subscriber to the logic thread, in batches.
async fn forward(
    mut messages: tokio::sync::broadcast::Receiver<fred::types::Message>,
    results: LogicSender<ChatMessage>,
) {
    use tokio::sync::broadcast::error::{RecvError, TryRecvError};
    let mut batch = Vec::new();
    loop {
        let first = match messages.recv().await {
            Ok(message) => message,
            Err(RecvError::Lagged(n)) => {
                tracing::warn!("Redis: {n} room events dropped: the logic thread fell behind");
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let mut next = Some(first);
        while let Some(message) = next.take() {
            let event = room_of(&message.channel)
                .zip(message.value.as_bytes())
                .and_then(|(room, payload)| parse_event(room, payload));
            match event {
                Some(event) => batch.push(Output::Event(event)),
                None => tracing::warn!("Redis: a malformed room event on {}", message.channel),
            }
            if batch.len() < 1024 {
                match messages.try_recv() {
                    Ok(m) => next = Some(m),
                    Err(TryRecvError::Lagged(n)) => {
                        tracing::warn!(
                            "Redis: {n} room events dropped: the logic thread fell behind"
                        );
                    }
                    Err(_) => {}
                }
            }
        }
        let outputs = std::mem::take(&mut batch);
        let results = results.clone();
        // The logic queue may be full: wait for room off the runtime's async path.
        let sent = tokio::task::block_in_place(move || results.send(ChatMessage::Engine(outputs)));
        if sent.is_err() {
            return; // the logic thread is gone
        }
    }
}

impl Task {
    /// How long a room membership lives past its last refresh: two thirds of the TTL. The
    /// instance refreshes every third (one refresh may be missed), and the survivors sync every
    /// third too, so a dead instance's members are reaped, and their rooms told, within the TTL.
    fn member_window_ms(&self) -> u64 {
        (self.ttl_ms * 2 / 3).max(1)
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let period = Duration::from_millis((self.ttl_ms / 3).max(50));
        let mut refresh = tokio::time::interval(period);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watch = tokio::time::interval(Duration::from_millis(50));
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                n = commands.recv_many(&mut batch, 512) => {
                    if n == 0 {
                        break;
                    }
                    let commands = std::mem::take(&mut batch);
                    let outputs = self.execute(commands).await;
                    self.report(outputs);
                }
                _ = refresh.tick() => {
                    if self.redis.is_connected() {
                        let outputs = self.refresh(false).await;
                        self.report(outputs);
                    }
                }
                _ = watch.tick() => self.watch().await,
            }
        }
        self.give_back().await;
    }

    /// Notices Redis going away and coming back; on its return, registers everything anew.
    async fn watch(&mut self) {
        let connected = self.redis.is_connected();
        let was = self.up.load(Ordering::Relaxed);
        if connected == was {
            return;
        }
        if !connected {
            self.down("the connection closed");
            return;
        }
        self.redis.metrics.reconnects.inc();
        tracing::info!(
            "Redis: connected: registering {} users and {} room members anew",
            self.claimed.len(),
            self.members.len()
        );
        self.up.store(true, Ordering::Relaxed);
        let outputs = self.refresh(true).await;
        if self.up.load(Ordering::Relaxed) {
            self.redis.metrics.up.set(1);
            self.logged_down = false;
            tracing::info!("Redis: service resumed");
        }
        // (A failed refresh marked it down again: the next watch tries anew.)
        self.report(outputs);
    }

    /// Redis is out of reach: logins and entries are answered busy until it is back.
    fn down(&mut self, why: &str) {
        self.up.store(false, Ordering::Relaxed);
        self.redis.metrics.up.set(0);
        if !self.logged_down {
            self.logged_down = true;
            tracing::warn!(
                "Redis: out of reach ({why}): logins and room entries are answered busy, \
                 chat stays on this instance; reconnecting"
            );
        }
    }

    fn report(&self, outputs: Vec<Output>) {
        if outputs.is_empty() {
            return;
        }
        let results = self.results.clone();
        let _ = tokio::task::block_in_place(move || results.send(ChatMessage::Engine(outputs)));
    }

    /// Runs a batch of commands: subscriptions first, then every script at once, in order.
    async fn execute(&mut self, commands: Vec<Command>) -> Vec<Output> {
        let mut outputs = Vec::new();
        // The channels of the rooms entered, before their entry scripts run.
        let new_rooms: Vec<u32> = commands
            .iter()
            .filter_map(|c| match c {
                Command::Enter { room, .. } if !self.subscribed.contains(room) => Some(*room),
                _ => None,
            })
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let mut unreachable = HashSet::new();
        if !new_rooms.is_empty() {
            let results = self.subscribe(&new_rooms).await;
            for (room, result) in new_rooms.into_iter().zip(results) {
                match result {
                    Ok(()) => {
                        self.subscribed.insert(room);
                    }
                    Err(e) => {
                        self.down(&format!("subscribing: {e}"));
                        unreachable.insert(room);
                    }
                }
            }
        }
        let mut steps = Vec::with_capacity(commands.len());
        for command in &commands {
            let (script, keys, args): (&Script, Vec<String>, Vec<Value>) = match command {
                Command::Claim { user_id, .. } => (
                    &self.scripts.claim,
                    vec![presence_key(user_id)],
                    vec![self.instance.clone().into(), (self.ttl_ms as i64).into()],
                ),
                Command::Release { user_id } => {
                    self.claimed.remove(user_id);
                    (
                        &self.scripts.release,
                        vec![presence_key(user_id)],
                        vec![self.instance.clone().into()],
                    )
                }
                Command::Enter {
                    user_id,
                    room,
                    member_id,
                    ..
                } => {
                    self.per_room[*room as usize].entering += 1;
                    (
                        &self.scripts.enter,
                        room_keys(*room),
                        vec![
                            i64::from(self.capacity).into(),
                            member_id.to_string().into(),
                            self.instance.clone().into(),
                            user_id.to_string().into(),
                            (self.member_window_ms() as i64).into(),
                        ],
                    )
                }
                Command::Leave {
                    room,
                    member_id,
                    published,
                } => {
                    if self.members.remove(member_id).is_some() {
                        let count = &mut self.per_room[*room as usize].members;
                        *count = count.saturating_sub(1);
                    }
                    if !published {
                        steps.push(None);
                        continue;
                    }
                    (
                        &self.scripts.leave,
                        room_keys(*room),
                        vec![member_id.to_string().into()],
                    )
                }
                Command::Chat {
                    room,
                    user_id,
                    message,
                } => (
                    &self.scripts.chat,
                    room_keys(*room),
                    vec![
                        user_id.to_string().into(),
                        Value::Bytes(message.clone().into()),
                    ],
                ),
            };
            if matches!(command, Command::Enter { room, .. } if unreachable.contains(room)) {
                steps.push(None);
                continue;
            }
            steps.push(Some(run(&self.redis, &self.options, script, keys, args)));
        }
        // Every script is sent before any answer is awaited: one round trip for the batch.
        let results = futures_util::future::join_all(
            steps
                .into_iter()
                .map(|step| async move { Some(step?.await) }),
        )
        .await;
        let mut failed = None;
        for (command, result) in commands.into_iter().zip(results) {
            let result = match result {
                None => Err(None),
                Some(Ok(value)) => Ok(value),
                Some(Err(e)) => Err(Some(e)),
            };
            if let Err(Some(e)) = &result {
                failed.get_or_insert_with(|| e.to_string());
            }
            self.answer(command, result, &mut outputs);
        }
        if let Some(why) = failed {
            self.down(&why);
        }
        self.unsubscribe_idle().await;
        outputs
    }

    /// Turns a command's result into the logic's outputs, and keeps the task's own records.
    fn answer(
        &mut self,
        command: Command,
        result: Result<Value, Option<Error>>,
        outputs: &mut Vec<Output>,
    ) {
        match command {
            Command::Claim { session, user_id } => {
                let result = match result.map(|v| v.as_i64()) {
                    Ok(Some(1)) => {
                        self.claimed.insert(user_id.clone());
                        Ok(())
                    }
                    Ok(_) => Err(ResultCode::LOGIN_USER_ALREADY),
                    Err(_) => Err(BUSY),
                };
                outputs.push(Output::Claimed {
                    session,
                    user_id,
                    result,
                });
            }
            Command::Release { .. } => {}
            Command::Enter {
                session,
                user_id,
                room,
                member_id,
            } => {
                let count = &mut self.per_room[room as usize];
                count.entering = count.entering.saturating_sub(1);
                let values = match result {
                    Ok(value) => value.into_array(),
                    Err(_) => {
                        outputs.push(Output::Entered {
                            session,
                            room,
                            result: Err(BUSY),
                        });
                        return;
                    }
                };
                let seq = values.first().and_then(Value::as_i64).unwrap_or(-1);
                let result = match u64::try_from(seq) {
                    Err(_) => Err(ResultCode::ENTER_ROOM_FULL_USER),
                    Ok(seq) => {
                        count.members += 1;
                        self.members.insert(member_id, (room, user_id));
                        Ok(Entered {
                            member_id,
                            seq,
                            members: members_of(&values[1..]),
                        })
                    }
                };
                outputs.push(Output::Entered {
                    session,
                    room,
                    result,
                });
            }
            Command::Leave {
                room, member_id, ..
            } => {
                if result.is_err_and(|e| e.is_some()) {
                    // Not published: this instance's members learn of it now; the next sync
                    // takes it out of Redis.
                    outputs.push(Output::Event(RoomEvent {
                        room,
                        seq: None,
                        kind: EventKind::Left(member_id),
                    }));
                }
            }
            Command::Chat {
                room,
                user_id,
                message,
            } => {
                if result.is_err() {
                    outputs.push(Output::Event(RoomEvent {
                        room,
                        seq: None,
                        kind: EventKind::Chat { user_id, message },
                    }));
                }
            }
        }
    }

    /// Subscribes to the channels of `rooms`, one call each (in a cluster, the channels of
    /// one `SSUBSCRIBE` must share a slot), all at once.
    async fn subscribe(&self, rooms: &[u32]) -> Vec<Result<(), Error>> {
        let subscriber = &self.redis.subscriber;
        futures_util::future::join_all(rooms.iter().map(|&r| subscriber.ssubscribe(channel(r))))
            .await
    }

    /// Leaves the channels of the rooms where this instance has no member any more.
    async fn unsubscribe_idle(&mut self) {
        let idle: Vec<u32> = self
            .subscribed
            .iter()
            .copied()
            .filter(|&r| {
                let count = self.per_room[r as usize];
                count.members == 0 && count.entering == 0
            })
            .collect();
        if idle.is_empty() {
            return;
        }
        for room in &idle {
            self.subscribed.remove(room);
        }
        // One channel a call: in a cluster, the channels of one call must share a slot.
        let subscriber = &self.redis.subscriber;
        let leaves = idle.iter().map(|&r| subscriber.sunsubscribe(channel(r)));
        for result in futures_util::future::join_all(leaves).await {
            if let Err(e) = result {
                tracing::debug!("Redis: leaving an idle room's channel: {e}");
            }
        }
    }

    /// Refreshes this instance's presences and syncs every room (reaping the dead members of
    /// other instances). After a reconnect (`resync`), tells the logic where each room's order
    /// stands now.
    async fn refresh(&mut self, resync: bool) -> Vec<Output> {
        let mut outputs = Vec::new();
        if resync && !self.subscribed.is_empty() {
            // A new connection has no subscriptions: the rooms' channels are taken again
            // before their numbers are read.
            let rooms: Vec<u32> = self.subscribed.iter().copied().collect();
            if let Some(Err(e)) = self
                .subscribe(&rooms)
                .await
                .into_iter()
                .find(Result::is_err)
            {
                self.down(&format!("subscribing again: {e}"));
                return outputs;
            }
        }
        let users: Vec<Arc<str>> = self.claimed.iter().cloned().collect();
        let claims = users.iter().map(|user_id| {
            run(
                &self.redis,
                &self.options,
                &self.scripts.claim,
                vec![presence_key(user_id)],
                vec![self.instance.clone().into(), (self.ttl_ms as i64).into()],
            )
        });
        let mut by_room: Vec<Vec<Value>> = vec![Vec::new(); self.rooms as usize];
        for (id, (room, user_id)) in &self.members {
            by_room[*room as usize].push(id.to_string().into());
            by_room[*room as usize].push(user_id.to_string().into());
        }
        let syncs = by_room.into_iter().enumerate().map(|(room, mine)| {
            let mut args: Vec<Value> = vec![
                self.instance.clone().into(),
                (self.member_window_ms() as i64).into(),
            ];
            args.extend(mine);
            run(
                &self.redis,
                &self.options,
                &self.scripts.sync,
                room_keys(room as u32),
                args,
            )
        });
        let (claims, syncs) = futures_util::future::join(
            futures_util::future::join_all(claims),
            futures_util::future::join_all(syncs),
        )
        .await;
        let mut failed = None;
        for (user_id, result) in users.into_iter().zip(claims) {
            match result.map(|v| v.as_i64()) {
                Ok(Some(1)) => {}
                Ok(_) => {
                    self.claimed.remove(&user_id);
                    outputs.push(Output::Lost { user_id });
                }
                Err(e) => {
                    failed.get_or_insert(e.to_string());
                }
            }
        }
        for (room, result) in syncs.into_iter().enumerate() {
            match result.map(|v| v.as_i64()) {
                Ok(Some(seq)) if resync && self.per_room[room].members > 0 => {
                    outputs.push(Output::Resynced {
                        room: room as u32,
                        seq: seq.max(0) as u64,
                    });
                }
                Ok(_) => {}
                Err(e) => {
                    failed.get_or_insert(e.to_string());
                }
            }
        }
        if let Some(why) = failed {
            self.down(&why);
        }
        outputs
    }

    /// The logic thread is gone (the server stops): this instance's users and members are
    /// given back at once rather than when they expire.
    async fn give_back(&mut self) {
        if !self.redis.is_connected() {
            return;
        }
        let releases = self.claimed.iter().map(|user_id| {
            run(
                &self.redis,
                &self.options,
                &self.scripts.release,
                vec![presence_key(user_id)],
                vec![self.instance.clone().into()],
            )
        });
        let leaves = self.members.iter().map(|(id, (room, _))| {
            run(
                &self.redis,
                &self.options,
                &self.scripts.leave,
                room_keys(*room),
                vec![id.to_string().into()],
            )
        });
        let _ = futures_util::future::join(
            futures_util::future::join_all(releases),
            futures_util::future::join_all(leaves),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_and_channels_parse() {
        assert_eq!(room_of(&channel(7)), Some(7));
        assert_eq!(room_of("iocp:{room:x}:events"), None);
        assert_eq!(
            parse_event(3, b"5 J 42 alice"),
            Some(RoomEvent {
                room: 3,
                seq: Some(5),
                kind: EventKind::Joined(RoomMember {
                    id: 42,
                    user_id: Arc::from("alice")
                })
            })
        );
        assert_eq!(
            parse_event(3, b"6 L 42").map(|e| e.kind),
            Some(EventKind::Left(42))
        );
        assert_eq!(
            parse_event(3, b"7 C bob hello there \xff").map(|e| e.kind),
            Some(EventKind::Chat {
                user_id: Arc::from("bob"),
                message: b"hello there \xff".to_vec()
            })
        );
        assert_eq!(parse_event(3, b"x C bob hi"), None);
        assert_eq!(parse_event(3, b"8 Q 1"), None);
        let members = members_of(&[
            Value::from("9"),
            Value::from("12 inst bob"),
            Value::from("4"),
            Value::from("3 inst alice"),
        ]);
        let ids: Vec<i64> = members.iter().map(|m| m.id).collect();
        assert_eq!(ids, [4, 9]);
    }
}
