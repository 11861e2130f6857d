"""Redis-backed coordination between chunk tasks on every worker.

- the in-flight limiter: at most RUNPOD_MAX_IN_FLIGHT RunPod jobs at once across all workers,
  with high-priority work served before normal and low;
- chunk leases: one live task per chunk, so a redelivered or resumed task never runs beside
  the one it replaces, and the sweeper can tell a dead chunk from a busy one.

(Webhook results and a chunk's wake-ups are the webhook's mailbox: batches/webhooks.py.)

PostgreSQL stays the source of truth: losing all of this (a Redis restart) only costs time.
Slots and leases expire on their own when a worker dies.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import redis
from django.conf import settings
from redis.exceptions import LockError

from batches.models import IMAGE_IN_FLIGHT, ImageJob

PREFIX = "comicgen"
SLOTS_KEY = f"{PREFIX}:inflight"
# Present while SLOTS_KEY is known to count every job in flight. A Redis restarted empty loses
# both; the next acquire then rebuilds the set from PostgreSQL before it counts anything.
SLOTS_BUILT_KEY = f"{PREFIX}:inflight:built"
WAITING_KEYS = {"high": f"{PREFIX}:waiting:high", "normal": f"{PREFIX}:waiting:normal"}
WAITER_TTL_SECONDS = 3

# Take a slot if one is free and no higher-priority work is waiting for it. A member that
# already holds a slot keeps it (a resumed chunk re-acquiring its own images).
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local limit = tonumber(ARGV[1])
local member = ARGV[2]
local lease = tonumber(ARGV[3])
local priority = ARGV[4]
local waiter = ARGV[5]
local waiter_ttl = tonumber(ARGV[6])
if redis.call('EXISTS', KEYS[4]) == 0 then return -1 end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
if redis.call('ZSCORE', KEYS[1], member) then
  redis.call('ZADD', KEYS[1], now + lease, member)
  return 1
end
local free = limit - redis.call('ZCARD', KEYS[1])
local ahead = 0
if priority == 'normal' then
  ahead = redis.call('ZCARD', KEYS[2])
elseif priority == 'low' then
  ahead = redis.call('ZCARD', KEYS[2]) + redis.call('ZCARD', KEYS[3])
end
if free > ahead then
  redis.call('ZADD', KEYS[1], now + lease, member)
  if priority == 'high' then redis.call('ZREM', KEYS[2], waiter) end
  if priority == 'normal' then redis.call('ZREM', KEYS[3], waiter) end
  return 1
end
if priority == 'high' then redis.call('ZADD', KEYS[2], now + waiter_ttl, waiter) end
if priority == 'normal' then redis.call('ZADD', KEYS[3], now + waiter_ttl, waiter) end
return 0
"""

# Set the in-flight jobs found in PostgreSQL, unless another process rebuilt the set first.
_REBUILD = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local lease = tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'NX', now + lease, ARGV[i]) end
redis.call('SET', KEYS[2], '1')
return 1
"""

_REFRESH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local lease = tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', now + lease, ARGV[i]) end
return 1
"""


@functools.cache
def get_redis() -> redis.Redis:
    """One connection pool per process; redis-py's client is safe to share across threads."""
    return redis.Redis.from_url(
        settings.REDIS_URL, socket_connect_timeout=3, socket_timeout=10, health_check_interval=30
    )


@functools.cache
def _script(source: str) -> Any:
    return get_redis().register_script(source)


# --- the in-flight limiter -------------------------------------------------------------------


def acquire_slot(image_id: int, priority: str, waiter: str) -> bool:
    """Take one of the RUNPOD_MAX_IN_FLIGHT slots for an image's RunPod job."""
    keys = [SLOTS_KEY, WAITING_KEYS["high"], WAITING_KEYS["normal"], SLOTS_BUILT_KEY]
    args = [
        settings.RUNPOD_MAX_IN_FLIGHT,
        str(image_id),
        settings.COMICGEN_SLOT_LEASE_SECONDS,
        priority,
        waiter,
        WAITER_TTL_SECONDS,
    ]
    taken = _script(_ACQUIRE)(keys=keys, args=args)
    if taken == -1:
        rebuild_slots()
        taken = _script(_ACQUIRE)(keys=keys, args=args)
    return taken == 1


def rebuild_slots() -> bool:
    """Count again every job PostgreSQL says is in flight (after Redis lost the set), so the
    limit still holds for jobs that were running when Redis restarted. False when another
    process had rebuilt it first."""
    in_flight = ImageJob.objects.filter(status__in=IMAGE_IN_FLIGHT).values_list("pk", flat=True)
    args = [settings.COMICGEN_SLOT_LEASE_SECONDS, *map(str, in_flight)]
    return bool(_script(_REBUILD)(keys=[SLOTS_KEY, SLOTS_BUILT_KEY], args=args))


def refresh_slots(image_ids: list[int]) -> None:
    if image_ids:
        _script(_REFRESH)(
            keys=[SLOTS_KEY], args=[settings.COMICGEN_SLOT_LEASE_SECONDS, *map(str, image_ids)]
        )


def release_slot(image_id: int) -> None:
    get_redis().zrem(SLOTS_KEY, str(image_id))


# --- chunk leases and queue markers ----------------------------------------------------------


def _chunk_key(batch_id: int, chunk_no: int, kind: str) -> str:
    return f"{PREFIX}:chunk:{batch_id}:{chunk_no}:{kind}"


class ChunkLease:
    """Exclusive ownership of one chunk by one task, for as long as it keeps renewing it: a
    redis-py Lock that never blocks, whose token is the task's `owner`, so only the owner can
    extend or release it and a lapsed lease is free for the sweeper's resumed task."""

    def __init__(self, batch_id: int, chunk_no: int, owner: str) -> None:
        self.key = _chunk_key(batch_id, chunk_no, "lease")
        self.queued_key = _chunk_key(batch_id, chunk_no, "queued")
        self.owner = owner
        self.lock = get_redis().lock(
            self.key,
            timeout=settings.COMICGEN_CHUNK_LEASE_SECONDS,
            blocking=False,
            thread_local=False,
        )
        # The owner's token, so a lease object made again for the same owner (a test, or code
        # that did not keep the first) can renew and release what the owner holds.
        self.lock.local.token = owner.encode()

    def acquire(self) -> bool:
        taken = bool(self.lock.acquire(token=self.owner))
        if taken:
            get_redis().delete(self.queued_key)
        return taken

    def renew(self) -> bool:
        """Extend the lease to a full term again; False once another task owns it (ours
        lapsed: the worker stalled past the lease)."""
        try:
            return bool(self.lock.extend(settings.COMICGEN_CHUNK_LEASE_SECONDS, replace_ttl=True))
        except LockError:
            return False

    def release(self) -> None:
        # A lease that lapsed may belong to another task now: it is theirs to release.
        with contextlib.suppress(LockError):
            self.lock.release()


def mark_chunks_queued(batch_id: int, chunk_numbers: list[int]) -> None:
    """Remember that a task for each chunk waits in the broker, so the sweeper leaves them be.
    The marker outlives any sane queueing delay but not a lost broker message for ever."""
    pipe = get_redis().pipeline(transaction=False)
    ttl = settings.CELERY_VISIBILITY_TIMEOUT
    for chunk_no in chunk_numbers:
        pipe.set(_chunk_key(batch_id, chunk_no, "queued"), "1", ex=ttl)
    pipe.execute()


def chunk_is_owned(batch_id: int, chunk_no: int) -> bool:
    """True while a task runs the chunk or waits in the broker to run it."""
    keys = [_chunk_key(batch_id, chunk_no, kind) for kind in ("lease", "queued")]
    return bool(get_redis().exists(*keys))
