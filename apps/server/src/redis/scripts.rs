//! The Lua scripts that make each of the engine's steps atomic. A room's scripts take the
//! room's four keys, which share one hash tag (one cluster slot): `KEYS[1]` its members (hash),
//! `KEYS[2]` their deadlines (sorted set), `KEYS[3]` its event counter, `KEYS[4]` its shard
//! channel. Every change of a room publishes its event, numbered by the counter, from inside
//! the script: the numbers and the order of the channel agree. Member ids stay strings (Lua's
//! numbers are doubles). Times are the server's (`TIME`), so the instances' clocks do not
//! matter.

/// The helpers every room script starts with: the server's time in ms, and `reap`, which
/// removes the members whose instance stopped refreshing them (each one's `Left` published).
const ROOM_PRELUDE: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function publish(event)
  local seq = redis.call('INCR', KEYS[3])
  redis.call('SPUBLISH', KEYS[4], seq .. ' ' .. event)
  return seq
end
local function reap(now)
  local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
  for _, id in ipairs(dead) do
    redis.call('ZREM', KEYS[2], id)
    if redis.call('HDEL', KEYS[1], id) == 1 then
      publish('L ' .. id)
    end
  end
end
"#;

/// Enter: `ARGV` capacity, member id, instance, user id, membership window (ms). Returns `{-1}` if the room
/// is full, else `{seq, id1, value1, id2, value2, ...}`: the newcomer's `Joined` number and
/// every member (`entry-seq instance user-id`).
pub(super) fn enter() -> String {
    format!(
        "{ROOM_PRELUDE}{}",
        r#"
local now = now_ms()
reap(now)
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[1]) then
  return {-1}
end
local seq = publish('J ' .. ARGV[2] .. ' ' .. ARGV[4])
redis.call('HSET', KEYS[1], ARGV[2], seq .. ' ' .. ARGV[3] .. ' ' .. ARGV[4])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[5]), ARGV[2])
local reply = {seq}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all do
  reply[#reply + 1] = all[i]
end
return reply
"#
    )
}

/// Leave: `ARGV` member id. Returns the `Left` event's number, or 0 if it was no member.
pub(super) fn leave() -> String {
    format!(
        "{ROOM_PRELUDE}{}",
        r#"
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  return publish('L ' .. ARGV[1])
end
return 0
"#
    )
}

/// Chat: `ARGV` user id, message (bytes). Returns the event's number.
pub(super) fn chat() -> String {
    format!(
        "{ROOM_PRELUDE}{}",
        r#"
return publish('C ' .. ARGV[1] .. ' ' .. ARGV[2])
"#
    )
}

/// Sync an instance's members of a room, every refresh and after a reconnect: `ARGV`
/// instance, membership window (ms), then member id, user id pairs (this instance's members now). Reaps the
/// dead; removes this instance's members that are not in the list (they left while Redis was
/// away); adds those missing (Redis lost them, or reaped them while this instance was cut
/// off); pushes every listed member's deadline on. Returns the room's last event number.
pub(super) fn sync() -> String {
    format!(
        "{ROOM_PRELUDE}{}",
        r#"
local now = now_ms()
reap(now)
local mine = {}
for i = 3, #ARGV, 2 do
  mine[ARGV[i]] = true
end
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local instance = string.match(all[i + 1], '^%d+ (%S+) ')
  if instance == ARGV[1] and not mine[all[i]] then
    redis.call('HDEL', KEYS[1], all[i])
    redis.call('ZREM', KEYS[2], all[i])
    publish('L ' .. all[i])
  end
end
for i = 3, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 0 then
    local seq = publish('J ' .. ARGV[i] .. ' ' .. ARGV[i + 1])
    redis.call('HSET', KEYS[1], ARGV[i], seq .. ' ' .. ARGV[1] .. ' ' .. ARGV[i + 1])
  end
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[i])
end
return tonumber(redis.call('GET', KEYS[3]) or '0')
"#
    )
}

/// Claim (or refresh) a user's presence: `KEYS[1]` its key; `ARGV` instance, ttl (ms).
/// Returns 1 if this instance has it now, 0 if another has.
pub(super) const CLAIM: &str = r#"
local owner = redis.call('GET', KEYS[1])
if owner == false or owner == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"#;

/// Release a user's presence if this instance has it: `KEYS[1]` its key; `ARGV` instance.
pub(super) const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;
