"""The in-flight limiter: how many RunPod jobs comicgen keeps at each endpoint, and whose turn is
next, shared through Redis by every worker process.

Per endpoint (`comicgen:limiter:<endpoint>:...`):

- `slots`: a sorted set of image ids holding a slot, scored by when their lease runs out (a
  worker that died holding one frees it by itself); `holders` maps an image to its endpoint
  and `owners` to its user, so a release or a lease refresh needs only the image id; `held`
  counts the slots each user holds;
- `target`: how many jobs to keep in flight, published by batches.capacity from the endpoint's
  /health and capped by RUNPOD_MAX_IN_FLIGHT (the ceiling, used alone while no target is known);
- per priority, the waiters refused a slot (`waiters:<p>`, a chunk each, expiring unless they
  keep asking), the user each belongs to (`wuser:<p>`) and how many slots it still wants
  (`wneed:<p>`: the images of its request from the first one refused). A slot goes to high
  before normal before low; within a priority, to the waiting user who holds the fewest slots,
  and between users who hold as many, to the one served least recently (`served`). So a second
  author's small batch takes the slots the first author's big one frees until both hold as
  many (or the small one needs no more), and from then on they take turns: one author's 500
  panels never make another's 10 wait behind them;
- a waiter is a Redis list key its chunk sleeps on (BLPOP): freeing a slot pushes to the lists
  of the waiters next in line, so a chunk takes a freed slot within milliseconds, not a poll.

PostgreSQL stays the source of truth: a Redis restarted empty loses the slots, and the next
acquire counts again every job PostgreSQL says is in flight (`rebuild_slots`) before it grants
anything.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

from django.conf import settings

from batches.flow import get_redis
from batches.models import IMAGE_IN_FLIGHT, ImageJob

PREFIX = "comicgen:limiter"
HOLDERS_KEY = f"{PREFIX}:holders"
PRIORITIES = ("high", "normal", "low")
# A refused waiter counts as waiting this long unless it asks again (a chunk asks at every pass,
# at least every SLOT_WAIT seconds): a chunk that died or stopped wanting a slot soon stops
# holding others back.
WAITER_TTL_SECONDS = 3
# A waiter's list outlives a chunk that went away without reading it, but not for ever.
DOORBELL_TTL_SECONDS = 60
# How long a published target stands without a fresh /health behind it.
TARGET_TTL_SECONDS = 30


def endpoint_key(endpoint: str, name: str) -> str:
    return f"{PREFIX}:{endpoint}:{name}"


# Shared Lua: the clock, the per-endpoint key names, freeing a slot, pruning what expired, the
# order users are served in, and ringing the doorbells of the waiters next in line. Keys are
# derived from the endpoint inside the script (one Redis, not a cluster), so a release needs no
# more than the image id.
_COMMON = """
local PREFIX = 'comicgen:limiter:'
local HOLDERS, OWNERS = PREFIX .. 'holders', PREFIX .. 'owners'
local PRIORITIES = {'high', 'normal', 'low'}
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local function key(ep, name) return PREFIX .. ep .. ':' .. name end

-- HDEL/ZREM in slices: Lua's unpack() fails past a few thousand arguments.
local function remove_all(command, target, members)
  for i = 1, #members, 1000 do
    redis.call(command, target, unpack(members, i, math.min(i + 999, #members)))
  end
end

-- A slot left the set: forget its holder and count it off its user's share.
local function forget_slot(ep, member)
  redis.call('HDEL', HOLDERS, member)
  local owner = redis.call('HGET', OWNERS, member)
  if owner then
    redis.call('HDEL', OWNERS, member)
    if redis.call('HINCRBY', key(ep, 'held'), owner, -1) <= 0 then
      redis.call('HDEL', key(ep, 'held'), owner)
    end
  end
end

local function prune(ep)
  for _, p in ipairs(PRIORITIES) do
    local waiters = key(ep, 'waiters:' .. p)
    local gone = redis.call('ZRANGEBYSCORE', waiters, '-inf', now)
    if #gone > 0 then
      remove_all('HDEL', key(ep, 'wuser:' .. p), gone)
      remove_all('HDEL', key(ep, 'wneed:' .. p), gone)
      redis.call('ZREMRANGEBYSCORE', waiters, '-inf', now)
    end
  end
  local slots = key(ep, 'slots')
  local expired = redis.call('ZRANGEBYSCORE', slots, '-inf', now)
  for _, member in ipairs(expired) do forget_slot(ep, member) end
  if #expired > 0 then redis.call('ZREMRANGEBYSCORE', slots, '-inf', now) end
end

local function target_of(ep, ceiling)
  local published = tonumber(redis.call('GET', key(ep, 'target')))
  if published == nil or published > ceiling then return ceiling end
  return published
end

-- Whose turn it is: the user holding the fewest slots first, then the one served least
-- recently (so users holding as many take turns).
local function rank(ep, user)
  local held = tonumber(redis.call('HGET', key(ep, 'held'), user)) or 0
  local served = tonumber(redis.call('HGET', key(ep, 'served'), user)) or 0
  return {held, served}
end
local function before(a, b)
  return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2])
end

-- The waiting chunks of a priority grouped by user, those users in turn order, their ranks,
-- how many slots each user's waiters still want, and each waiter's own need.
local function waiting_users(ep, p)
  local owners = redis.call('HGETALL', key(ep, 'wuser:' .. p))
  local by_user, order, ranks, needs, wneeds = {}, {}, {}, {}, {}
  for i = 1, #owners, 2 do
    local user = owners[i + 1]
    if not by_user[user] then
      by_user[user] = {}
      table.insert(order, user)
      ranks[user] = rank(ep, user)
      needs[user] = 0
    end
    table.insert(by_user[user], owners[i])
    local need = tonumber(redis.call('HGET', key(ep, 'wneed:' .. p), owners[i])) or 1
    wneeds[owners[i]] = need
    needs[user] = needs[user] + need
  end
  table.sort(order, function(a, b)
    if before(ranks[a], ranks[b]) then return true end
    if before(ranks[b], ranks[a]) then return false end
    return a < b
  end)
  return by_user, order, ranks, needs, wneeds
end

-- Ring the doorbells of the waiters n free slots would go to: priorities in turn, and within
-- one the slots handed out as acquire grants them, one at a time to the user who comes first
-- (each counted to its share), each to that user's waiters in turn, a waiter for as many as it
-- still wants. (One doorbell per user per round woke chunks of a user behind another that the
-- grant then refused, and left the slots idle until the right chunk looked again.)
local function ring(ep, n)
  local ttl = tonumber(ARGV[#ARGV])
  for _, p in ipairs(PRIORITIES) do
    if n <= 0 then return end
    local by_user, order, ranks, needs, wneeds = waiting_users(ep, p)
    local at, left, granted = {}, {}, 0
    while n > 0 do
      local best
      for _, user in ipairs(order) do
        if needs[user] > 0 and (best == nil or before(ranks[user], ranks[best])) then
          best = user
        end
      end
      if best == nil then break end
      local index = at[best] or 1
      local waiter = by_user[best][index]
      if left[best] == nil then
        redis.call('RPUSH', waiter, '')
        redis.call('EXPIRE', waiter, ttl)
        left[best] = wneeds[waiter]
      end
      left[best] = left[best] - 1
      if left[best] <= 0 then
        at[best], left[best] = index + 1, nil
      end
      needs[best] = needs[best] - 1
      -- Served just now, after anyone the rest of this call serves before it.
      granted = granted + 1
      ranks[best] = {ranks[best][1] + 1, 1e15 + granted}
      n = n - 1
    end
  end
end
"""

# ARGV: endpoint, lease, priority, waiter, waiter ttl, user, ceiling, image ids..., doorbell
# ttl. Grants slots to the images in order and returns how many it granted (the first n), or
# -1 when the slot set must be rebuilt first. At the first image refused, the waiter is
# registered and the rest are left. A free slot goes to this caller only when no waiter comes
# first: a waiter of a higher priority, or another user of this priority who holds fewer slots
# (or as many, and was served less recently), for as many slots as that user still wants up to
# the difference in shares. (Counted as one slot whatever it wanted, a user 20 slots behind and
# waiting for 10 got only one of each two or more slots freed together.) Each grant counts to
# this user's share before the next image is weighed.
_ACQUIRE = (
    _COMMON
    + """
local ep, lease = ARGV[1], tonumber(ARGV[2])
local priority, waiter, waiter_ttl = ARGV[3], ARGV[4], tonumber(ARGV[5])
local user, ceiling = ARGV[6], tonumber(ARGV[7])
if redis.call('EXISTS', key(ep, 'built')) == 0 then return -1 end
prune(ep)
local slots = key(ep, 'slots')
-- What the other waiters are does not change during this call (only this user's share does):
-- the slots the higher priorities' waiters still want are counted once (priority is strict:
-- every one of them comes first), and this priority's users ranked once.
local higher = 0
for _, p in ipairs(PRIORITIES) do
  if p == priority then break end
  for _, other in ipairs(redis.call('ZRANGE', key(ep, 'waiters:' .. p), 0, -1)) do
    higher = higher + (tonumber(redis.call('HGET', key(ep, 'wneed:' .. p), other)) or 1)
  end
end
local order, ranks, needs
local granted = 0
for i = 8, #ARGV - 1 do
  local member = ARGV[i]
  if redis.call('ZSCORE', slots, member) then
    redis.call('ZADD', slots, now + lease, member)
  else
    local free = target_of(ep, ceiling) - redis.call('ZCARD', slots)
    local ahead = higher
    if free > ahead then
      if not order then
        local _by_user
        _by_user, order, ranks, needs = waiting_users(ep, priority)
      end
      local mine = rank(ep, user)
      for _, other in ipairs(order) do
        if other ~= user and before(ranks[other], mine) then
          -- The slots that user takes before this one's turn comes: as many as it still wants,
          -- up to the difference in shares, and at least one (a tie it wins by having been
          -- served less recently).
          ahead = ahead + math.max(1, math.min(needs[other], mine[1] - ranks[other][1]))
        end
      end
    end
    if free <= ahead then
      redis.call('ZADD', key(ep, 'waiters:' .. priority), now + waiter_ttl, waiter)
      redis.call('HSET', key(ep, 'wuser:' .. priority), waiter, user)
      -- This image and the ones after it in the request.
      redis.call('HSET', key(ep, 'wneed:' .. priority), waiter, #ARGV - i)
      return granted
    end
    redis.call('ZADD', slots, now + lease, member)
    redis.call('HSET', HOLDERS, member, ep)
    redis.call('HSET', OWNERS, member, user)
    redis.call('HINCRBY', key(ep, 'held'), user, 1)
    redis.call('HSET', key(ep, 'served'), user, redis.call('INCR', key(ep, 'seq')))
    redis.call('ZREM', key(ep, 'waiters:' .. priority), waiter)
    redis.call('HDEL', key(ep, 'wuser:' .. priority), waiter)
    redis.call('HDEL', key(ep, 'wneed:' .. priority), waiter)
    redis.call('INCR', key(ep, 'granted'))
  end
  granted = granted + 1
end
return granted
"""
)

# ARGV: default endpoint, ceiling, image ids..., doorbell ttl. Frees each slot wherever it is
# held, then at each endpoint that freed one rings the doorbells of as many waiters as there are
# free slots.
_RELEASE = (
    _COMMON
    + """
local default, ceiling = ARGV[1], tonumber(ARGV[2])
local freed, endpoints = {}, {}
for i = 3, #ARGV - 1 do
  local member = ARGV[i]
  local ep = redis.call('HGET', HOLDERS, member) or default
  if redis.call('ZREM', key(ep, 'slots'), member) == 1 then
    redis.call('INCR', key(ep, 'released'))
  end
  forget_slot(ep, member)
  if not freed[ep] then
    freed[ep] = true
    table.insert(endpoints, ep)
  end
end
for _, ep in ipairs(endpoints) do
  prune(ep)
  ring(ep, target_of(ep, ceiling) - redis.call('ZCARD', key(ep, 'slots')))
end
return 1
"""
)

# ARGV: waiter, priority, ceiling, endpoints..., doorbell ttl. A chunk that stops asking (it
# ended, or handed its thread over) takes its waiter out of line at each endpoint it waited at,
# and rings the doorbells of the waiters its place made room for: its need would otherwise hold
# back that many freed slots until the waiter expired.
_FORGET = (
    _COMMON
    + """
local waiter, priority, ceiling = ARGV[1], ARGV[2], tonumber(ARGV[3])
for i = 4, #ARGV - 1 do
  local ep = ARGV[i]
  if redis.call('ZREM', key(ep, 'waiters:' .. priority), waiter) == 1 then
    redis.call('HDEL', key(ep, 'wuser:' .. priority), waiter)
    redis.call('HDEL', key(ep, 'wneed:' .. priority), waiter)
    prune(ep)
    ring(ep, target_of(ep, ceiling) - redis.call('ZCARD', key(ep, 'slots')))
  end
end
return 1
"""
)

# ARGV: endpoint, target, target ttl, ceiling, doorbell ttl. Publish a new target and ring the
# doorbells of waiters it makes room for.
_PUBLISH = (
    _COMMON
    + """
local ep = ARGV[1]
redis.call('SET', key(ep, 'target'), ARGV[2], 'EX', tonumber(ARGV[3]))
prune(ep)
ring(ep, target_of(ep, tonumber(ARGV[4])) - redis.call('ZCARD', key(ep, 'slots')))
return 1
"""
)

# ARGV: endpoint, lease, then an image id and its user for each job. Count the in-flight jobs
# PostgreSQL knows, each to its user's share, unless another process rebuilt the set first.
_REBUILD = """
local ep = ARGV[1]
local prefix = 'comicgen:limiter:' .. ep .. ':'
if redis.call('EXISTS', prefix .. 'built') == 1 then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local lease = tonumber(ARGV[2])
for i = 3, #ARGV, 2 do
  if redis.call('ZADD', prefix .. 'slots', 'NX', now + lease, ARGV[i]) == 1 then
    redis.call('HSET', 'comicgen:limiter:holders', ARGV[i], ep)
    redis.call('HSET', 'comicgen:limiter:owners', ARGV[i], ARGV[i + 1])
    redis.call('HINCRBY', prefix .. 'held', ARGV[i + 1], 1)
  end
end
redis.call('SET', prefix .. 'built', '1')
return 1
"""

# ARGV: lease, default endpoint, image ids... Extend the leases of slots still held.
_REFRESH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local lease = tonumber(ARGV[1])
for i = 3, #ARGV do
  local ep = redis.call('HGET', 'comicgen:limiter:holders', ARGV[i]) or ARGV[2]
  redis.call('ZADD', 'comicgen:limiter:' .. ep .. ':slots', 'XX', now + lease, ARGV[i])
end
return 1
"""


@functools.cache
def _script(source: str) -> Any:
    return get_redis().register_script(source)


def default_endpoint() -> str:
    return str(settings.RUNPOD_ENDPOINT_ID)


def image_endpoint(image: ImageJob) -> str:
    """The RunPod endpoint an image's jobs run on: its own (its model's), else, for a panel
    from before endpoints were per model, its batch's, else the configured one. (A batch of
    several models names no one endpoint: its endpoint_id is "mixed".) The one place that says
    so for the limiter (the rebuild counts each job at its endpoint)."""
    return image.endpoint_id or image.batch.endpoint_id or default_endpoint()


# --- the limiter -------------------------------------------------------------------------------


def acquire_slots(
    endpoint: str, image_ids: list[int], priority: str, user_id: int, waiter: str
) -> int:
    """Take in-flight slots at an endpoint for these images' RunPod jobs, in order, in one
    round trip; returns how many were granted (the first n of `image_ids`). It stops at the
    first image refused: the endpoint is at its target, or higher-priority work or another
    user's turn comes first. The refused `waiter` (a Redis list key the caller then sleeps on
    with BLPOP) is pushed to when a slot frees for it. An image that holds a slot keeps it."""
    from batches import capacity  # capacity reads this module's keys

    if not image_ids:
        return 0
    capacity.follow(endpoint)
    args = [
        endpoint, settings.COMICGEN_SLOT_LEASE_SECONDS, priority, waiter, WAITER_TTL_SECONDS,
        str(user_id), settings.RUNPOD_MAX_IN_FLIGHT, *map(str, image_ids), DOORBELL_TTL_SECONDS,
    ]  # fmt: skip
    granted = _script(_ACQUIRE)(keys=[], args=args)
    if granted == -1:
        rebuild_slots(endpoint)
        granted = _script(_ACQUIRE)(keys=[], args=args)
    return max(0, int(granted))


def release_slots(image_ids: Iterable[int], endpoint: str | None = None) -> None:
    """Free these images' slots (wherever each is held; `endpoint` only names where to look when
    a holder record is gone) and wake the waiters next in line: one round trip for a whole
    pass's endings."""
    members = [str(image_id) for image_id in image_ids]
    if members:
        args = [endpoint or default_endpoint(), settings.RUNPOD_MAX_IN_FLIGHT]
        _script(_RELEASE)(keys=[], args=[*args, *members, DOORBELL_TTL_SECONDS])


def forget_waiter(waiter: str, priority: str, endpoints: Iterable[str]) -> None:
    """Take a waiter out of line at these endpoints (its chunk stopped asking), and wake the
    waiters next in line for what it would have held back."""
    names = sorted(set(endpoints))
    if names:
        args = [waiter, priority, settings.RUNPOD_MAX_IN_FLIGHT, *names, DOORBELL_TTL_SECONDS]
        _script(_FORGET)(keys=[], args=args)


def refresh_slots(image_ids: list[int], endpoint: str | None = None) -> None:
    """Extend the leases of these images' slots (jobs still running), at whichever endpoint."""
    if image_ids:
        args = [settings.COMICGEN_SLOT_LEASE_SECONDS, endpoint or default_endpoint()]
        _script(_REFRESH)(keys=[], args=[*args, *map(str, image_ids)])


def rebuild_slots(endpoint: str) -> bool:
    """Count again every job PostgreSQL says is in flight at this endpoint (after Redis lost the
    set), so the limit still holds for jobs that were running when Redis restarted. False when
    another process had rebuilt it first."""
    in_flight = ImageJob.objects.filter(status__in=IMAGE_IN_FLIGHT).select_related("batch")
    jobs = in_flight.only("pk", "endpoint_id", "batch__endpoint_id", "batch__user_id")
    args: list[Any] = [endpoint, settings.COMICGEN_SLOT_LEASE_SECONDS]
    for image in jobs:
        if image_endpoint(image) == endpoint:
            args += [str(image.pk), str(image.batch.user_id)]
    return bool(_script(_REBUILD)(keys=[], args=args))


def publish_target(endpoint: str, target: int) -> None:
    """Set how many jobs the endpoint should hold (batches.capacity decides), and wake waiters
    a larger target makes room for."""
    args = [
        endpoint, int(target), TARGET_TTL_SECONDS, settings.RUNPOD_MAX_IN_FLIGHT,
        DOORBELL_TTL_SECONDS,
    ]  # fmt: skip
    _script(_PUBLISH)(keys=[], args=args)


def snapshot(endpoint: str) -> dict[str, Any]:
    """What the limiter holds for an endpoint now: in flight, the published target, waiters by
    priority and slots granted and released so far (for the control law and for metrics)."""
    pipe = get_redis().pipeline(transaction=False)
    pipe.zcard(endpoint_key(endpoint, "slots"))
    pipe.get(endpoint_key(endpoint, "target"))
    pipe.get(endpoint_key(endpoint, "granted"))
    pipe.get(endpoint_key(endpoint, "released"))
    for priority in PRIORITIES:
        pipe.zcard(endpoint_key(endpoint, f"waiters:{priority}"))
    in_flight, target, granted, released, *waiting = pipe.execute()
    return {
        "in_flight": int(in_flight),
        "target": int(target) if target is not None else None,
        "granted": int(granted or 0),
        "released": int(released or 0),
        "waiting": dict(zip(PRIORITIES, map(int, waiting), strict=True)),
    }
