//! The cluster registry: the state the nodes share (presence connections
//! and members, per-node subscriber counts, occupied channels, live nodes),
//! kept in Redis and changed only by the Lua scripts below. A script runs
//! atomically, so each transition (a user's first connection anywhere, a
//! channel's last subscriber anywhere) is decided once for the cluster; the
//! script itself publishes the member event on the bus, numbered per channel,
//! and tells the node that ran it, which sends the web hook.
//!
//! Keys (`P` is `PUSHI_CLUSTER_PREFIX`; `<c>` is `<app id>\0<channel>`):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:nodes` | zset | node → last heartbeat (Redis time, ms) |
//! | `P:pc:<c>` | hash | socket id → user id (presence connections) |
//! | `P:pu:<c>` | hash | user id → connections in the cluster |
//! | `P:pm:<c>` | hash | user id → member (flags digit + `user_info` JSON) |
//! | `P:seq:<c>` | string | member sequence number (kept a day after the last member) |
//! | `P:occ:<c>` | hash | node → local subscribers |
//! | `P:chans:<app>` | set | occupied channels |
//! | `P:us:<app>` | hash | socket id → user id (signed-in connections) |
//! | `P:uc:<app>` | hash | user id → signed-in connections in the cluster |
//! | `P:conns:<app>` | hash | node → connections counted against the app's quota |
//! | `P:n:<node>:pc`, `:occ`, `:uc`, `:apps` | set | what a node registered, for its sweep |
//! | `P:n:<node>:on`, `P:swept:<node>` | string | registered / swept (both absent: Redis lost its data) |
//!
//! This module is pure: it builds script arguments and reads replies; the
//! sender thread (`redis.rs`) runs them.

use redis::Value as Redis;
use serde_json::Value;

use crate::apps::{AppIndex, Apps};
use crate::channels::ViewMember;
use crate::ports::{RegistryOp, RegistryReply};

/// Functions every script shares (prepended to each).
const PRELUDE: &str = r#"
local P = ARGV[1]
local NODE = ARGV[2]
local function ck(kind, app, ch) return P .. ':' .. kind .. ':' .. app .. '\0' .. ch end
local function publish(t) redis.call('PUBLISH', P .. ':bus', cjson.encode(t)) end
local function join(node, app, ch, sock, user, member, limit)
  local pc = ck('pc', app, ch)
  if redis.call('HEXISTS', pc, sock) == 1 then return 0 end
  local pu = ck('pu', app, ch)
  if limit > 0 and redis.call('HEXISTS', pu, user) == 0 and redis.call('HLEN', pu) >= limit then return -1 end
  redis.call('HSET', pc, sock, user)
  redis.call('SADD', P .. ':n:' .. node .. ':pc', app .. '\0' .. ch .. '\0' .. sock)
  if redis.call('HINCRBY', pu, user, 1) > 1 then return 0 end
  redis.call('HSET', ck('pm', app, ch), user, member)
  local sk = ck('seq', app, ch)
  redis.call('PERSIST', sk)
  publish({k = 'ma', app = app, ch = ch, u = user, m = member, seq = redis.call('INCR', sk)})
  return 1
end
local function leave(node, app, ch, sock)
  local pc = ck('pc', app, ch)
  local user = redis.call('HGET', pc, sock)
  if not user then return false end
  redis.call('HDEL', pc, sock)
  redis.call('SREM', P .. ':n:' .. node .. ':pc', app .. '\0' .. ch .. '\0' .. sock)
  local pu = ck('pu', app, ch)
  if redis.call('HINCRBY', pu, user, -1) > 0 then return false end
  redis.call('HDEL', pu, user)
  local pm = ck('pm', app, ch)
  local member = redis.call('HGET', pm, user) or '0null'
  redis.call('HDEL', pm, user)
  local sk = ck('seq', app, ch)
  local seq = redis.call('INCR', sk)
  if redis.call('HLEN', pu) == 0 then redis.call('EXPIRE', sk, 86400) end
  publish({k = 'mr', app = app, ch = ch, u = user, seq = seq})
  return {user, member}
end
local function occupy(node, app, ch, count)
  local occ = ck('occ', app, ch)
  local entry = app .. '\0' .. ch
  local before = redis.call('HLEN', occ)
  if count > 0 then
    redis.call('HSET', occ, node, count)
    redis.call('SADD', P .. ':n:' .. node .. ':occ', entry)
  else
    redis.call('HDEL', occ, node)
    redis.call('SREM', P .. ':n:' .. node .. ':occ', entry)
  end
  local after = redis.call('HLEN', occ)
  if before == 0 and after > 0 then redis.call('SADD', P .. ':chans:' .. app, ch) return 1 end
  if before > 0 and after == 0 then redis.call('SREM', P .. ':chans:' .. app, ch) return 2 end
  return 0
end
local function user_on(node, app, user, sock)
  if redis.call('HSETNX', P .. ':us:' .. app, sock, user) == 0 then return 0 end
  redis.call('SADD', P .. ':n:' .. node .. ':uc', app .. '\0' .. user .. '\0' .. sock)
  if redis.call('HINCRBY', P .. ':uc:' .. app, user, 1) > 1 then return 0 end
  publish({k = 'uo', app = app, u = user})
  return 1
end
local function user_off(node, app, sock)
  local user = redis.call('HGET', P .. ':us:' .. app, sock)
  if not user then return 0 end
  redis.call('HDEL', P .. ':us:' .. app, sock)
  redis.call('SREM', P .. ':n:' .. node .. ':uc', app .. '\0' .. user .. '\0' .. sock)
  if redis.call('HINCRBY', P .. ':uc:' .. app, user, -1) > 0 then return 0 end
  redis.call('HDEL', P .. ':uc:' .. app, user)
  publish({k = 'uf', app = app, u = user})
  return 1
end
local function connections(node, app, count)
  if count > 0 then
    redis.call('HSET', P .. ':conns:' .. app, node, count)
    redis.call('SADD', P .. ':n:' .. node .. ':apps', app)
  else
    redis.call('HDEL', P .. ':conns:' .. app, node)
    redis.call('SREM', P .. ':n:' .. node .. ':apps', app)
  end
end
local function split(entry)
  return string.match(entry, '^([^%z]*)%z([^%z]*)%z?(.*)$')
end
local function members(app, ch)
  return {tonumber(redis.call('GET', ck('seq', app, ch)) or '0'), redis.call('HGETALL', ck('pm', app, ch))}
end
local function sum(t) local n = 0 for _, v in ipairs(t) do n = n + tonumber(v) end return n end
"#;

/// A presence join: ARGV 3.. app, channel, socket, user, member, limit.
const JOIN: &str = r#"
local app, ch = ARGV[3], ARGV[4]
local status = join(NODE, app, ch, ARGV[5], ARGV[6], ARGV[7], tonumber(ARGV[8]))
local m = members(app, ch)
return {status, m[1], m[2]}
"#;

/// A presence leave: ARGV 3.. app, channel, socket.
const LEAVE: &str = r#"
local r = leave(NODE, ARGV[3], ARGV[4], ARGV[5])
if r then return 1 end
return 0
"#;

/// This node's subscriber count: ARGV 3.. app, channel, count, notify
/// (1: publish the cluster's total for `subscription_count`).
const OCCUPY: &str = r#"
local app, ch = ARGV[3], ARGV[4]
local r = occupy(NODE, app, ch, tonumber(ARGV[5]))
if ARGV[6] == '1' then
  publish({k = 'sc', app = app, ch = ch, n = sum(redis.call('HVALS', ck('occ', app, ch)))})
end
return r
"#;

/// REST calls accepted by this node: ARGV 3.. app, second, calls. Returns
/// the cluster's calls in that second.
const API_CALLS: &str = r#"
local k = P .. ':rl:' .. ARGV[3] .. ':' .. ARGV[4]
local n = redis.call('INCRBY', k, tonumber(ARGV[5]))
redis.call('EXPIRE', k, 3)
return n
"#;

/// Occupied channels: ARGV 3.. app, prefix.
const CHANNELS: &str = r#"
local app, prefix = ARGV[3], ARGV[4]
local out = {}
for _, ch in ipairs(redis.call('SMEMBERS', P .. ':chans:' .. app)) do
  if string.sub(ch, 1, #prefix) == prefix then
    table.insert(out, ch)
    table.insert(out, sum(redis.call('HVALS', ck('occ', app, ch))))
    table.insert(out, redis.call('HLEN', ck('pu', app, ch)))
  end
end
return out
"#;

/// One channel: ARGV 3.. app, channel.
const CHANNEL: &str = r#"
local app, ch = ARGV[3], ARGV[4]
return {sum(redis.call('HVALS', ck('occ', app, ch))), redis.call('HLEN', ck('pu', app, ch))}
"#;

/// A new connection under the app's quota: ARGV 3.. app, limit. 1: admitted.
const ADMIT: &str = r#"
local h = P .. ':conns:' .. ARGV[3]
if sum(redis.call('HVALS', h)) >= tonumber(ARGV[4]) then return 0 end
redis.call('HINCRBY', h, NODE, 1)
redis.call('SADD', P .. ':n:' .. NODE .. ':apps', ARGV[3])
return 1
"#;

/// A connection counted by [`ADMIT`] closed: ARGV 3.. app.
const RELEASE: &str = r#"
local h = P .. ':conns:' .. ARGV[3]
if redis.call('HINCRBY', h, NODE, -1) <= 0 then connections(NODE, ARGV[3], 0) end
return 1
"#;

/// A sign-in: ARGV 3.. app, user, socket, watched user ids. Returns the
/// watched users online anywhere.
const SIGN_IN: &str = r#"
local app = ARGV[3]
user_on(NODE, app, ARGV[4], ARGV[5])
local online = {}
for i = 6, #ARGV do
  if redis.call('HEXISTS', P .. ':uc:' .. app, ARGV[i]) == 1 then table.insert(online, ARGV[i]) end
end
return online
"#;

/// A signed-in connection closed: ARGV 3.. app, socket.
const SIGN_OUT: &str = r#"
return user_off(NODE, ARGV[3], ARGV[4])
"#;

/// A presence channel's members: ARGV 3.. app, channel.
const MEMBERS: &str = r#"
return members(ARGV[3], ARGV[4])
"#;

/// Everything a node holds: ARGV 3 = presence entries n, then n × (app,
/// channel, socket, user, member), then occupancy entries m, then m ×
/// (app, channel, count). What the registry has under this node and is not
/// listed is removed. Returns the web hooks to send.
const SYNC: &str = r#"
local hooks = {}
-- Neither registered nor swept: Redis lost its data, and the hooks of what
-- is registered again were sent before.
local fresh = redis.call('EXISTS', P .. ':n:' .. NODE .. ':on') == 0 and redis.call('EXISTS', P .. ':swept:' .. NODE) == 0
redis.call('SET', P .. ':n:' .. NODE .. ':on', '1')
redis.call('DEL', P .. ':swept:' .. NODE)
local i = 3
local n = tonumber(ARGV[i]) i = i + 1
local want = {}
local given = {}
for _ = 1, n do
  local e = {ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]}
  i = i + 5
  want[e[1] .. '\0' .. e[2] .. '\0' .. e[3]] = true
  table.insert(given, e)
end
for _, entry in ipairs(redis.call('SMEMBERS', P .. ':n:' .. NODE .. ':pc')) do
  if not want[entry] then
    local app, ch, sock = split(entry)
    local r = leave(NODE, app, ch, sock)
    if r then
      for _, v in ipairs({app, 'member_removed', ch, r[1], r[2]}) do table.insert(hooks, v) end
    end
    redis.call('SREM', P .. ':n:' .. NODE .. ':pc', entry)
  end
end
for _, e in ipairs(given) do
  if join(NODE, e[1], e[2], e[3], e[4], e[5], 0) == 1 and not fresh then
    for _, v in ipairs({e[1], 'member_added', e[2], e[4], e[5]}) do table.insert(hooks, v) end
  end
end
local m = tonumber(ARGV[i]) i = i + 1
local occupied = {}
local counts = {}
for _ = 1, m do
  local e = {ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])}
  i = i + 3
  occupied[e[1] .. '\0' .. e[2]] = true
  table.insert(counts, e)
end
for _, entry in ipairs(redis.call('SMEMBERS', P .. ':n:' .. NODE .. ':occ')) do
  if not occupied[entry] then
    local app, ch = split(entry)
    if occupy(NODE, app, ch, 0) == 2 then
      for _, v in ipairs({app, 'channel_vacated', ch, '', ''}) do table.insert(hooks, v) end
    end
  end
end
for _, e in ipairs(counts) do
  if occupy(NODE, e[1], e[2], e[3]) == 1 and not fresh then
    for _, v in ipairs({e[1], 'channel_occupied', e[2], '', ''}) do table.insert(hooks, v) end
  end
end
local u = tonumber(ARGV[i]) i = i + 1
local signed = {}
local users = {}
for _ = 1, u do
  local e = {ARGV[i], ARGV[i + 1], ARGV[i + 2]}
  i = i + 3
  signed[e[1] .. '\0' .. e[2] .. '\0' .. e[3]] = true
  table.insert(users, e)
end
for _, entry in ipairs(redis.call('SMEMBERS', P .. ':n:' .. NODE .. ':uc')) do
  if not signed[entry] then
    local app, _, sock = split(entry)
    user_off(NODE, app, sock)
    redis.call('SREM', P .. ':n:' .. NODE .. ':uc', entry)
  end
end
for _, e in ipairs(users) do user_on(NODE, e[1], e[2], e[3]) end
local c = tonumber(ARGV[i]) i = i + 1
local counted = {}
for _ = 1, c do
  counted[ARGV[i]] = true
  connections(NODE, ARGV[i], tonumber(ARGV[i + 1]))
  i = i + 2
end
for _, app in ipairs(redis.call('SMEMBERS', P .. ':n:' .. NODE .. ':apps')) do
  if not counted[app] then connections(NODE, app, 0) end
end
return hooks
"#;

/// The heartbeat and the sweep: ARGV 3.. dead-after ms, entries per call.
/// Records this node's heartbeat (1 first: the node was not registered, so
/// it must send everything it holds); then takes up to `batch` entries of
/// one node silent for longer than `dead-after` and removes them, and the
/// node itself once it has none left. Returns {registered, more, hooks...}.
const HEARTBEAT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local added = redis.call('ZADD', P .. ':nodes', now, NODE)
local out = {added, 0}
local dead = redis.call('ZRANGEBYSCORE', P .. ':nodes', '-inf', now - tonumber(ARGV[3]), 'LIMIT', 0, 2)
local victim = nil
for _, d in ipairs(dead) do if d ~= NODE then victim = d break end end
if not victim then return out end
local batch = tonumber(ARGV[4])
local pcs = redis.call('SPOP', P .. ':n:' .. victim .. ':pc', batch)
for _, entry in ipairs(pcs) do
  local app, ch, sock = split(entry)
  local r = leave(victim, app, ch, sock)
  if r then
    for _, v in ipairs({app, 'member_removed', ch, r[1], r[2]}) do table.insert(out, v) end
  end
end
local left = batch - #pcs
if left > 0 then
  local occs = redis.call('SPOP', P .. ':n:' .. victim .. ':occ', left)
  for _, entry in ipairs(occs) do
    local app, ch = split(entry)
    if occupy(victim, app, ch, 0) == 2 then
      for _, v in ipairs({app, 'channel_vacated', ch, '', ''}) do table.insert(out, v) end
    end
  end
  left = left - #occs
end
if left > 0 then
  local ucs = redis.call('SPOP', P .. ':n:' .. victim .. ':uc', left)
  for _, entry in ipairs(ucs) do
    local app, _, sock = split(entry)
    user_off(victim, app, sock)
  end
  left = left - #ucs
end
if left > 0 then
  local apps = redis.call('SPOP', P .. ':n:' .. victim .. ':apps', left)
  for _, app in ipairs(apps) do redis.call('HDEL', P .. ':conns:' .. app, victim) end
  left = left - #apps
end
if left > 0 then
  redis.call('ZREM', P .. ':nodes', victim)
  redis.call('DEL', P .. ':n:' .. victim .. ':on')
  redis.call('SET', P .. ':swept:' .. victim, '1', 'EX', 86400)
  redis.call('PUBLISH', P .. ':bus', cjson.encode({k = 'nd', node = victim}))
else
  out[2] = 1
end
return out
"#;

/// A node leaving for good (graceful stop): forget it at once.
const BYE: &str = r#"
redis.call('ZREM', P .. ':nodes', NODE)
redis.call('DEL', P .. ':n:' .. NODE .. ':on')
return 1
"#;

/// Which script an operation runs; the sender loads each once per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    /// [`RegistryOp::PresenceJoin`].
    Join,
    /// [`RegistryOp::PresenceLeave`].
    Leave,
    /// [`RegistryOp::Occupancy`].
    Occupy,
    /// [`RegistryOp::Channels`].
    Channels,
    /// [`RegistryOp::Channel`].
    Channel,
    /// [`RegistryOp::Members`].
    Members,
    /// [`RegistryOp::ApiCalls`].
    ApiCalls,
    /// [`RegistryOp::Admit`].
    Admit,
    /// [`RegistryOp::Release`].
    Release,
    /// [`RegistryOp::SignIn`].
    SignIn,
    /// [`RegistryOp::SignOut`].
    SignOut,
    /// [`RegistryOp::Sync`].
    Sync,
    /// The sender's heartbeat and sweep.
    Heartbeat,
    /// A graceful stop.
    Bye,
}

impl Script {
    /// Every script, in the order [`Script::index`] numbers them.
    pub const ALL: [Script; 14] = [
        Script::ApiCalls,
        Script::Join,
        Script::Leave,
        Script::Occupy,
        Script::Channels,
        Script::Channel,
        Script::Members,
        Script::Admit,
        Script::Release,
        Script::SignIn,
        Script::SignOut,
        Script::Sync,
        Script::Heartbeat,
        Script::Bye,
    ];

    /// Position in [`Script::ALL`].
    pub fn index(self) -> usize {
        Script::ALL.iter().position(|s| *s == self).unwrap_or(0)
    }

    /// The script's full source (the prelude and its body).
    pub fn source(self) -> String {
        let body = match self {
            Script::Join => JOIN,
            Script::Leave => LEAVE,
            Script::Occupy => OCCUPY,
            Script::Channels => CHANNELS,
            Script::Channel => CHANNEL,
            Script::Members => MEMBERS,
            Script::ApiCalls => API_CALLS,
            Script::Admit => ADMIT,
            Script::Release => RELEASE,
            Script::SignIn => SIGN_IN,
            Script::SignOut => SIGN_OUT,
            Script::Sync => SYNC,
            Script::Heartbeat => HEARTBEAT,
            Script::Bye => BYE,
        };
        format!("{PRELUDE}{body}")
    }
}

/// A member as the registry stores it: a flags digit (1: numeric id,
/// 2: peer) and the `user_info` JSON.
pub fn member_text(m: &ViewMember) -> String {
    let flags = u8::from(m.numeric) | (u8::from(m.peer) << 1);
    format!("{flags}{}", m.info)
}

/// Reads [`member_text`]; a malformed record gives a null `user_info`.
pub fn parse_member(text: &str) -> ViewMember {
    let flags = text.bytes().next().map_or(0, |b| b.wrapping_sub(b'0'));
    let info = text.get(1..).and_then(|t| serde_json::from_str(t).ok()).unwrap_or(Value::Null);
    ViewMember { info, numeric: flags & 1 != 0, peer: flags & 2 != 0 }
}

/// The script and arguments after `P` and `NODE` for an operation; apps by id.
pub fn encode(op: &RegistryOp, apps: &Apps) -> (Script, Vec<String>) {
    let id = |app: &AppIndex| apps.get(*app).id.clone();
    match op {
        RegistryOp::PresenceJoin { app, channel, socket_id, user_id, member, limit } => (
            Script::Join,
            vec![id(app), channel.clone(), socket_id.clone(), user_id.clone(), member_text(member), limit.to_string()],
        ),
        RegistryOp::PresenceLeave { app, channel, socket_id } => {
            (Script::Leave, vec![id(app), channel.clone(), socket_id.clone()])
        }
        RegistryOp::Occupancy { app, channel, count, notify } => {
            (Script::Occupy, vec![id(app), channel.clone(), count.to_string(), u8::from(*notify).to_string()])
        }
        RegistryOp::ApiCalls { app, second, calls } => {
            (Script::ApiCalls, vec![id(app), second.to_string(), calls.to_string()])
        }
        RegistryOp::Channels { app, prefix } => (Script::Channels, vec![id(app), prefix.clone()]),
        RegistryOp::Channel { app, channel } => (Script::Channel, vec![id(app), channel.clone()]),
        RegistryOp::Members { app, channel } => (Script::Members, vec![id(app), channel.clone()]),
        RegistryOp::Admit { app, limit } => (Script::Admit, vec![id(app), limit.to_string()]),
        RegistryOp::Release { app } => (Script::Release, vec![id(app)]),
        RegistryOp::SignIn { app, user_id, socket_id, watchlist } => {
            let mut args = vec![id(app), user_id.clone(), socket_id.clone()];
            args.extend(watchlist.iter().cloned());
            (Script::SignIn, args)
        }
        RegistryOp::SignOut { app, socket_id } => (Script::SignOut, vec![id(app), socket_id.clone()]),
        RegistryOp::Sync { presence, occupancy, users, connections } => {
            let mut args = vec![presence.len().to_string()];
            for (app, channel, socket, user, member) in presence {
                args.extend([id(app), channel.clone(), socket.clone(), user.clone(), member_text(member)]);
            }
            args.push(occupancy.len().to_string());
            for (app, channel, count) in occupancy {
                args.extend([id(app), channel.clone(), count.to_string()]);
            }
            args.push(users.len().to_string());
            for (app, user, socket) in users {
                args.extend([id(app), user.clone(), socket.clone()]);
            }
            args.push(connections.len().to_string());
            for (app, count) in connections {
                args.extend([id(app), count.to_string()]);
            }
            (Script::Sync, args)
        }
    }
}

fn int(v: &Redis) -> Option<i64> {
    match v {
        Redis::Int(n) => Some(*n),
        Redis::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Redis::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn text(v: &Redis) -> Option<String> {
    match v {
        Redis::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Redis::SimpleString(s) => Some(s.clone()),
        Redis::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

fn array(v: &Redis) -> Option<&[Redis]> {
    match v {
        Redis::Array(items) | Redis::Set(items) => Some(items),
        _ => None,
    }
}

fn member_list(v: &Redis) -> Option<Vec<(String, ViewMember)>> {
    let flat = array(v)?;
    flat.chunks_exact(2).map(|pair| Some((text(&pair[0])?, parse_member(&text(&pair[1])?)))).collect()
}

/// Reads a script's reply as the answer to `op`'s kind; None when it does not fit.
pub fn decode(script: Script, reply: &Redis) -> Option<RegistryReply> {
    Some(match script {
        Script::Join => {
            let r = array(reply)?;
            let status = int(r.first()?)?;
            let seq = int(r.get(1)?)? as u64;
            RegistryReply::Joined { added: status == 1, full: status == -1, seq, members: member_list(r.get(2)?)? }
        }
        Script::Leave => RegistryReply::Left { removed: int(reply)? == 1 },
        Script::Occupy => RegistryReply::Occupancy(match int(reply)? {
            1 => Some(true),
            2 => Some(false),
            _ => None,
        }),
        Script::Channels => {
            let flat = array(reply)?;
            let rows = flat.chunks_exact(3).map(|r| Some((text(&r[0])?, int(&r[1])? as u64, int(&r[2])? as u64)));
            RegistryReply::Channels(rows.collect::<Option<_>>()?)
        }
        Script::Channel => {
            let r = array(reply)?;
            RegistryReply::Channel { subscriptions: int(r.first()?)? as u64, users: int(r.get(1)?)? as u64 }
        }
        Script::Members => {
            let r = array(reply)?;
            RegistryReply::Members { seq: int(r.first()?)? as u64, members: member_list(r.get(1)?)? }
        }
        Script::ApiCalls => RegistryReply::Calls(int(reply)?.max(0) as u64),
        Script::Admit => RegistryReply::Admitted(int(reply)? == 1),
        Script::SignIn => RegistryReply::Online(array(reply)?.iter().map(text).collect::<Option<_>>()?),
        Script::Release | Script::SignOut => RegistryReply::Done,
        Script::Sync => RegistryReply::Synced {
            hooks: hooks(reply, 0).into_iter().map(|h| (h.app_id.clone(), h.event_json())).collect(),
        },
        Script::Heartbeat | Script::Bye => RegistryReply::Synced { hooks: Vec::new() },
    })
}

/// A web hook a script decided (a sweep, a re-synchronisation): app id,
/// event name, channel, user id and member record ("" when not a member event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptHook {
    /// The app's id.
    pub app_id: String,
    /// `member_removed`, `member_added`, `channel_vacated`, `channel_occupied`.
    pub event: String,
    /// The channel.
    pub channel: String,
    /// The user (member events).
    pub user_id: String,
    /// The member record (member events).
    pub member: String,
}

impl ScriptHook {
    /// The Pusher web hook event (`user_id` a number when it was sent as one).
    pub fn event_json(&self) -> Value {
        if self.user_id.is_empty() {
            return serde_json::json!({ "name": self.event, "channel": self.channel });
        }
        let number = parse_member(&self.member).numeric.then(|| self.user_id.parse::<serde_json::Number>().ok());
        let user_id = number.flatten().map_or_else(|| Value::String(self.user_id.clone()), Value::Number);
        serde_json::json!({ "name": self.event, "channel": self.channel, "user_id": user_id })
    }
}

/// Reads a flat list of hooks (groups of five) from `skip` on.
pub fn hooks(reply: &Redis, skip: usize) -> Vec<ScriptHook> {
    let Some(flat) = array(reply) else { return Vec::new() };
    flat.get(skip..)
        .unwrap_or_default()
        .chunks_exact(5)
        .filter_map(|h| {
            Some(ScriptHook {
                app_id: text(&h[0])?,
                event: text(&h[1])?,
                channel: text(&h[2])?,
                user_id: text(&h[3])?,
                member: text(&h[4])?,
            })
        })
        .collect()
}

/// The heartbeat's reply: (this node was not registered, more to sweep).
pub fn heartbeat_flags(reply: &Redis) -> (bool, bool) {
    let r = array(reply).unwrap_or_default();
    let flag = |i: usize| r.get(i).and_then(int).unwrap_or(0) == 1;
    (flag(0), flag(1))
}

/// A member event a script published on the bus (JSON, unlike the binary
/// envelopes): app id, channel, user, the member when added, and seq.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberEvent {
    /// The app's id.
    pub app_id: String,
    /// The channel.
    pub channel: String,
    /// The user.
    pub user_id: String,
    /// Added (Some) or removed.
    pub member: Option<ViewMember>,
    /// The channel's sequence number after the change.
    pub seq: u64,
}

/// A user's first signed-in connection anywhere (online) or its last gone.
#[derive(Debug, Clone, PartialEq)]
pub struct UserEvent {
    /// The app's id.
    pub app_id: String,
    /// The user.
    pub user_id: String,
    /// Came online (true) or went offline.
    pub online: bool,
}

/// What a registry script published on the bus.
#[derive(Debug, Clone, PartialEq)]
pub enum ScriptEvent {
    /// A presence member change.
    Member(MemberEvent),
    /// A user came online or went offline (watchlists).
    User(UserEvent),
    /// A channel's subscriber count in the cluster: app id, channel, count.
    Count(String, String, u64),
}

/// Reads a script-published bus message; None for anything else (a dead
/// node's notice, unknown kinds from newer nodes).
pub fn decode_script_event(bytes: &[u8]) -> Option<ScriptEvent> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    let kind = v.get("k")?.as_str()?;
    if kind == "sc" {
        let (app, ch) = (v.get("app")?.as_str()?, v.get("ch")?.as_str()?);
        return Some(ScriptEvent::Count(app.to_string(), ch.to_string(), v.get("n")?.as_u64()?));
    }
    if kind == "uo" || kind == "uf" {
        return Some(ScriptEvent::User(UserEvent {
            app_id: v.get("app")?.as_str()?.to_string(),
            user_id: v.get("u")?.as_str()?.to_string(),
            online: kind == "uo",
        }));
    }
    decode_member_event(&v).map(ScriptEvent::Member)
}

fn decode_member_event(v: &Value) -> Option<MemberEvent> {
    let kind = v.get("k")?.as_str()?;
    let member = match kind {
        "ma" => Some(parse_member(v.get("m")?.as_str()?)),
        "mr" => None,
        _ => return None,
    };
    Some(MemberEvent {
        app_id: v.get("app")?.as_str()?.to_string(),
        channel: v.get("ch")?.as_str()?.to_string(),
        user_id: v.get("u")?.as_str()?.to_string(),
        member,
        seq: v.get("seq")?.as_u64()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn members_keep_their_flags_and_info() {
        for (numeric, peer) in [(false, false), (true, false), (false, true), (true, true)] {
            let m = ViewMember { info: json!({"name": "Ann", "n": [1, 2]}), numeric, peer };
            assert_eq!(parse_member(&member_text(&m)), m);
        }
        assert_eq!(parse_member(""), ViewMember { info: Value::Null, numeric: false, peer: false });
        assert_eq!(parse_member("3{bad").info, Value::Null);
    }

    #[test]
    fn replies_are_read_by_kind() {
        let b = |s: &str| Redis::BulkString(s.as_bytes().to_vec());
        let joined = Redis::Array(vec![Redis::Int(1), Redis::Int(7), Redis::Array(vec![b("u1"), b("1{\"a\":1}")])]);
        let Some(RegistryReply::Joined { added, full, seq, members }) = decode(Script::Join, &joined) else {
            panic!("a join reply")
        };
        assert_eq!((added, full, seq, members[0].0.as_str(), members[0].1.numeric), (true, false, 7, "u1", true));
        let full = Redis::Array(vec![Redis::Int(-1), Redis::Int(7), Redis::Array(vec![])]);
        assert!(matches!(decode(Script::Join, &full), Some(RegistryReply::Joined { full: true, .. })));
        assert_eq!(decode(Script::Occupy, &Redis::Int(2)), Some(RegistryReply::Occupancy(Some(false))));
        let rows = Redis::Array(vec![b("presence-a"), Redis::Int(3), Redis::Int(2)]);
        assert_eq!(decode(Script::Channels, &rows), Some(RegistryReply::Channels(vec![("presence-a".into(), 3, 2)])));
        assert_eq!(decode(Script::Join, &Redis::Int(1)), None);
    }

    #[test]
    fn hooks_and_member_events_are_read() {
        let b = |s: &str| Redis::BulkString(s.as_bytes().to_vec());
        let reply = Redis::Array(vec![
            Redis::Int(0),
            Redis::Int(1),
            b("app"),
            b("member_removed"),
            b("presence-x"),
            b("42"),
            b("1null"),
            b("app"),
            b("channel_vacated"),
            b("presence-x"),
            b(""),
            b(""),
        ]);
        assert_eq!(heartbeat_flags(&reply), (false, true));
        let h = hooks(&reply, 2);
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].event_json(), json!({"name": "member_removed", "channel": "presence-x", "user_id": 42}));
        assert_eq!(h[1].event_json(), json!({"name": "channel_vacated", "channel": "presence-x"}));
        let e = decode_script_event(br#"{"k":"ma","app":"a","ch":"presence-x","u":"u1","m":"0{\"n\":1}","seq":4}"#);
        let Some(ScriptEvent::Member(e)) = e else { panic!("a member event") };
        assert_eq!((e.seq, e.member.map(|m| m.info)), (4, Some(json!({"n": 1}))));
        let u = decode_script_event(br#"{"k":"uf","app":"a","u":"u1"}"#);
        assert_eq!(u, Some(ScriptEvent::User(UserEvent { app_id: "a".into(), user_id: "u1".into(), online: false })));
        assert!(decode_script_event(br#"{"k":"nd","node":"x"}"#).is_none());
        assert!(decode_script_event(b"PB\x01").is_none());
    }
}
