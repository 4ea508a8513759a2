"""The Lua scripts behind ``RedisStateStore``: every multi-key change is one script, so atomic.

Two pods changing one room at once must lose nothing (issue 4), and a pod that sweeps a dead
one must not race the pod that is taking over one of its ids. Redis runs a script as one step,
so each operation below — add, remove, claim, sweep, re-assert — reads and writes all of its
keys with no other client in between. That also makes "one pod cleans a dead pod" free: the
sweep removes the dead node from the node set first, and only the script that actually removed
it goes on to clean (and reports what it removed).

Key layout (``P`` is the cluster prefix; names are ``[A-Za-z0-9_.-]``, so ``:`` never occurs
inside one and NUL separates the parts of a member token)::

    P:rooms                  set   room names with at least one member
    P:room:R:pubs / :subs    hash  connection id -> encoded PublisherInfo / SubscriberInfo
    P:nodes                  set   node ids that have written (so a sweep can find them)
    P:node:N:alive           str   heartbeat, short TTL: the node is alive while it exists
    P:node:N:members         set   "room\\0pub|sub\\0id" this node wrote (what a sweep removes)
    P:node:N:ids             set   ids this node claimed (what a sweep releases)
    P:node:N:session         str   set by the node's last re-assert; gone = Redis lost our state
    P:id:ID                  str   claim of a connection id -> owner node
    P:swept                  set   nodes swept while perhaps alive (logged when they return;
                                   at most 256: extra entries are dropped at random)

Every key gets a TTL in the same script that creates it. Keys are computed inside the scripts
(the node's members decide which room keys a sweep touches), which standalone Redis and
Sentinel allow; Redis Cluster would need every key in one slot.

Every script takes the same first four arguments: prefix, this node, room TTL (ms), heartbeat
TTL (ms); its own arguments follow from ``ARGV[5]``.
"""

from __future__ import annotations

_PRELUDE = r"""
local P = ARGV[1]
local NODE = ARGV[2]
local TTL = tonumber(ARGV[3])
local HB_TTL = tonumber(ARGV[4])
local SEP = '\0'
local SWEPT_MAX = 256

local function k_rooms() return P .. ':rooms' end
local function k_nodes() return P .. ':nodes' end
local function k_swept() return P .. ':swept' end
local function k_room(room, kind) return P .. ':room:' .. room .. ':' .. kind .. 's' end
local function k_node(node, what) return P .. ':node:' .. node .. ':' .. what end
local function k_id(id) return P .. ':id:' .. id end

local function split(token)
  local a = string.find(token, SEP, 1, true)
  local b = string.find(token, SEP, a + 1, true)
  return string.sub(token, 1, a - 1), string.sub(token, a + 1, b - 1), string.sub(token, b + 1)
end

-- A write by NODE proves it alive. Without this, a pod that died between a Redis restart and
-- its next heartbeat would leave members no sweep can find.
local function touch()
  redis.call('SET', k_node(NODE, 'alive'), NODE, 'PX', HB_TTL, 'NX')
  redis.call('SADD', k_nodes(), NODE)
  redis.call('PEXPIRE', k_nodes(), TTL)
end

local function add_member(room, kind, id, info)
  local hash = k_room(room, kind)
  redis.call('HSET', hash, id, info)
  redis.call('PEXPIRE', hash, TTL)
  redis.call('SADD', k_rooms(), room)
  redis.call('PEXPIRE', k_rooms(), TTL)
  local members = k_node(NODE, 'members')
  redis.call('SADD', members, room .. SEP .. kind .. SEP .. id)
  redis.call('PEXPIRE', members, TTL)
end

-- Only entries listed in the node's member set are the node's: a hash entry written by
-- another node under the same id (after a take-over) is left alone.
local function remove_member(node, token)
  if redis.call('SREM', k_node(node, 'members'), token) == 0 then return 0 end
  local room, kind, id = split(token)
  local removed = redis.call('HDEL', k_room(room, kind), id)
  if redis.call('EXISTS', k_room(room, 'pub'), k_room(room, 'sub')) == 0 then
    redis.call('SREM', k_rooms(), room)
  end
  return removed
end

-- Claim (or keep) an id for NODE; false when another node holds it.
local function own_id(id)
  local key = k_id(id)
  local owner = redis.call('GET', key)
  if owner and owner ~= NODE then return false end
  redis.call('SET', key, NODE, 'PX', TTL)
  local ids = k_node(NODE, 'ids')
  redis.call('SADD', ids, id)
  redis.call('PEXPIRE', ids, TTL)
  return true
end

-- Remove a dead node from every room and release its ids. Returns the member tokens it
-- removed, or false when the node is alive or another sweep got there first.
local function sweep(dead)
  if redis.call('EXISTS', k_node(dead, 'alive')) == 1 then return false end
  if redis.call('SREM', k_nodes(), dead) == 0 then return false end
  local removed = {}
  for _, token in ipairs(redis.call('SMEMBERS', k_node(dead, 'members'))) do
    if remove_member(dead, token) == 1 then removed[#removed + 1] = token end
  end
  for _, id in ipairs(redis.call('SMEMBERS', k_node(dead, 'ids'))) do
    if redis.call('GET', k_id(id)) == dead then redis.call('DEL', k_id(id)) end
  end
  redis.call('DEL', k_node(dead, 'members'), k_node(dead, 'ids'), k_node(dead, 'session'),
             k_node(dead, 'alive'))
  redis.call('SADD', k_swept(), dead)
  redis.call('PEXPIRE', k_swept(), TTL)
  -- Bounded (issue 9): every ended pod lands here and each sweep refreshes the TTL. The set
  -- only tells a returning pod to log that it was swept; its missing session key is what makes
  -- it re-assert and re-announce, so forgetting old entries loses nothing.
  local excess = redis.call('SCARD', k_swept()) - SWEPT_MAX
  if excess > 0 then redis.call('SPOP', k_swept(), excess) end
  return removed
end

-- Known nodes (other than us) whose heartbeat has expired.
local function find_dead()
  local dead = {}
  for _, node in ipairs(redis.call('SMEMBERS', k_nodes())) do
    if node ~= NODE and redis.call('EXISTS', k_node(node, 'alive')) == 0 then
      dead[#dead + 1] = node
    end
  end
  return dead
end
"""

#: Refresh our heartbeat; ARGV[5] = "1" to look for dead nodes too (one round trip for both).
#: Returns {session exists (0|1), we were swept meanwhile (0|1), dead nodes (when asked)}.
HEARTBEAT = r"""
redis.call('SET', k_node(NODE, 'alive'), NODE, 'PX', HB_TTL)
redis.call('SADD', k_nodes(), NODE)
redis.call('PEXPIRE', k_nodes(), TTL)
local session = redis.call('EXISTS', k_node(NODE, 'session'))
local swept = redis.call('SREM', k_swept(), NODE)
local dead = {}
if ARGV[5] == '1' then dead = find_dead() end
return {session, swept, dead}
"""

#: Extend the TTL of every key this node keeps alive (room keys shared with others included).
REFRESH = r"""
for _, key in ipairs({k_rooms(), k_nodes(), k_node(NODE, 'members'), k_node(NODE, 'ids'),
                      k_node(NODE, 'session')}) do
  redis.call('PEXPIRE', key, TTL)
end
local seen = {}
for _, token in ipairs(redis.call('SMEMBERS', k_node(NODE, 'members'))) do
  local room, kind = split(token)
  local hash = k_room(room, kind)
  if not seen[hash] then
    seen[hash] = true
    redis.call('PEXPIRE', hash, TTL)
  end
end
for _, id in ipairs(redis.call('SMEMBERS', k_node(NODE, 'ids'))) do
  if redis.call('GET', k_id(id)) == NODE then
    redis.call('PEXPIRE', k_id(id), TTL)
  else
    redis.call('SREM', k_node(NODE, 'ids'), id)
  end
end
return 1
"""

#: Known nodes (other than us) whose heartbeat has expired.
FIND_DEAD = r"""
return find_dead()
"""

#: ARGV[5] = dead node. Returns the removed member tokens, or nil (alive / already swept).
SWEEP = r"""
return sweep(ARGV[5])
"""

#: ARGV[5..8] = room, kind ("pub" | "sub"), id, encoded info.
ADD = r"""
touch()
add_member(ARGV[5], ARGV[6], ARGV[7], ARGV[8])
return 1
"""

#: ARGV[5..7] = room, kind, id. Returns 1 if a hash entry was removed.
REMOVE = r"""
return remove_member(NODE, ARGV[5] .. SEP .. ARGV[6] .. SEP .. ARGV[7])
"""

#: ARGV[5] = id, ARGV[6] = "1" if a dead owner may be swept here.
#: Returns {claimed (0|1), swept node or nil, removed tokens or nil}.
#: An id held by a node whose heartbeat expired is taken over at once (after sweeping that
#: node, which the caller then announces), so a client reconnecting with the same id after
#: its pod was killed is not refused until the next periodic sweep.
CLAIM = r"""
local key = k_id(ARGV[5])
local owner = redis.call('GET', key)
local dead, removed = false, false
if owner and owner ~= NODE then
  if ARGV[6] ~= '1' or redis.call('EXISTS', k_node(owner, 'alive')) == 1 then
    return {0, false, false}
  end
  removed = sweep(owner)
  if not removed then return {0, false, false} end
  dead = owner
  if redis.call('GET', key) == owner then redis.call('DEL', key) end
end
touch()
own_id(ARGV[5])
return {1, dead, removed}
"""

#: ARGV[5] = id. Deletes the claim only if we own it. Returns 1 if deleted.
RELEASE = r"""
redis.call('SREM', k_node(NODE, 'ids'), ARGV[5])
if redis.call('GET', k_id(ARGV[5])) == NODE then
  redis.call('DEL', k_id(ARGV[5]))
  return 1
end
return 0
"""

#: Make Redis hold exactly our local truth for this node.
#: ARGV[5] = session token, ARGV[6] = n, then n × (room, kind, id, info), then m, then m ids
#: claimed without being members yet. Returns {removed tokens, conflicting ids}: members of
#: ours Redis had but we no longer host, and ids another node holds now (we were swept and the
#: id was taken over; that node's entry wins).
RECONCILE = r"""
touch()
redis.call('SET', k_node(NODE, 'session'), ARGV[5], 'PX', TTL)
local members = k_node(NODE, 'members')
local ids = k_node(NODE, 'ids')
local want, want_ids, conflicts = {}, {}, {}
local i = 7
for _ = 1, tonumber(ARGV[6]) do
  local room, kind, id, info = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  i = i + 4
  local token = room .. SEP .. kind .. SEP .. id
  if own_id(id) then
    add_member(room, kind, id, info)
    want[token] = true
    want_ids[id] = true
  else
    conflicts[#conflicts + 1] = id
    redis.call('SREM', members, token)
  end
end
local m = tonumber(ARGV[i])
i = i + 1
for _ = 1, m do
  local id = ARGV[i]
  i = i + 1
  if own_id(id) then want_ids[id] = true else conflicts[#conflicts + 1] = id end
end
local removed = {}
for _, token in ipairs(redis.call('SMEMBERS', members)) do
  if not want[token] and remove_member(NODE, token) == 1 then removed[#removed + 1] = token end
end
for _, id in ipairs(redis.call('SMEMBERS', ids)) do
  if not want_ids[id] then
    redis.call('SREM', ids, id)
    if redis.call('GET', k_id(id)) == NODE then redis.call('DEL', k_id(id)) end
  end
end
return {removed, conflicts}
"""

#: ARGV[5] = room, or "" for every room. Returns {{room, HGETALL pubs, HGETALL subs}, ...}:
#: one consistent snapshot, whatever other pods do meanwhile.
READ = r"""
local function one(room)
  return {room, redis.call('HGETALL', k_room(room, 'pub')),
          redis.call('HGETALL', k_room(room, 'sub'))}
end
if ARGV[5] ~= '' then return {one(ARGV[5])} end
local out = {}
for _, room in ipairs(redis.call('SMEMBERS', k_rooms())) do out[#out + 1] = one(room) end
return out
"""

SCRIPTS: dict[str, str] = {
    name: _PRELUDE + body
    for name, body in {
        "heartbeat": HEARTBEAT,
        "refresh": REFRESH,
        "find_dead": FIND_DEAD,
        "sweep": SWEEP,
        "add": ADD,
        "remove": REMOVE,
        "claim": CLAIM,
        "release": RELEASE,
        "reconcile": RECONCILE,
        "read": READ,
    }.items()
}

#: Separates room, kind and id in a member token.
SEP = "\0"


def split_token(token: str) -> tuple[str, str, str]:
    room, kind, connection_id = token.split(SEP, 2)
    return room, kind, connection_id
