"""Redis-backed coordination between chunk tasks on every worker.

- the in-flight limiter: at most RUNPOD_MAX_IN_FLIGHT RunPod jobs at once across all workers,
  with high-priority work served before normal and low;
- chunk leases: one live task per chunk, so a redelivered or resumed task never runs beside
  the one it replaces, and the sweeper can tell a dead chunk from a busy one;
- webhook results and wake-ups: a webhook stores the job's result and wakes the chunk waiting
  for it, so a chunk sleeps instead of polling.

PostgreSQL stays the source of truth: losing all of this (a Redis restart) only costs time.
Slots and leases expire on their own when a worker dies.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
from typing import Any

import redis
from django.conf import settings

from batches.models import IMAGE_IN_FLIGHT, ImageJob

PREFIX = "comicgen"
SLOTS_KEY = f"{PREFIX}:inflight"
# Present while SLOTS_KEY is known to count every job in flight. A Redis restarted empty loses
# both; the next acquire then rebuilds the set from PostgreSQL before it counts anything.
SLOTS_BUILT_KEY = f"{PREFIX}:inflight:built"
WAITING_KEYS = {"high": f"{PREFIX}:waiting:high", "normal": f"{PREFIX}:waiting:normal"}
WAITER_TTL_SECONDS = 3
RESULT_TTL_SECONDS = 1800  # RunPod keeps results 30 minutes; so do we

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

# Extend a lease only if we still own it (compare-and-set on the owner token).
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
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
    """Exclusive ownership of one chunk by one task, for as long as it keeps renewing it."""

    def __init__(self, batch_id: int, chunk_no: int, owner: str) -> None:
        self.key = _chunk_key(batch_id, chunk_no, "lease")
        self.queued_key = _chunk_key(batch_id, chunk_no, "queued")
        self.owner = owner

    def acquire(self) -> bool:
        client = get_redis()
        taken = bool(
            client.set(self.key, self.owner, nx=True, ex=settings.COMICGEN_CHUNK_LEASE_SECONDS)
        )
        if taken:
            client.delete(self.queued_key)
        return taken

    def renew(self) -> bool:
        return bool(
            _script(_RENEW)(
                keys=[self.key], args=[self.owner, settings.COMICGEN_CHUNK_LEASE_SECONDS * 1000]
            )
        )

    def release(self) -> None:
        _script(_RELEASE)(keys=[self.key], args=[self.owner])


def mark_chunks_queued(batch_id: int, chunk_numbers: list[int]) -> None:
    """Remember that a task for each chunk waits in the broker, so the sweeper leaves them be.
    The marker outlives any sane queueing delay but not a lost broker message for ever."""
    pipe = get_redis().pipeline(transaction=False)
    ttl = settings.CELERY_VISIBILITY_TIMEOUT
    for chunk_no in chunk_numbers:
        pipe.set(_chunk_key(batch_id, chunk_no, "queued"), "1", ex=ttl)
    pipe.execute()


def unmark_chunks_queued(batch_id: int, chunk_numbers: list[int]) -> None:
    """Undo mark_chunks_queued when the task could not be sent after all (the sweeper then
    enqueues the chunks on its next pass instead of when the marks expire)."""
    keys = [_chunk_key(batch_id, chunk_no, "queued") for chunk_no in chunk_numbers]
    if keys:
        get_redis().delete(*keys)


def chunk_is_owned(batch_id: int, chunk_no: int) -> bool:
    """True while a task runs the chunk or waits in the broker to run it."""
    keys = [_chunk_key(batch_id, chunk_no, kind) for kind in ("lease", "queued")]
    return bool(get_redis().exists(*keys))


# --- webhook results and wake-ups ------------------------------------------------------------


def webhook_token(batch_id: int, chunk_no: int, image_id: int, attempt: int) -> str:
    """The unguessable part of an attempt's webhook URL (RunPod signs nothing)."""
    message = f"webhook:{batch_id}:{chunk_no}:{image_id}:{attempt}".encode()
    return hmac.new(settings.SECRET_KEY.encode(), message, hashlib.sha256).hexdigest()[:32]


def webhook_token_matches(
    batch_id: int, chunk_no: int, image_id: int, attempt: int, given: str
) -> bool:
    """Whether a webhook URL's token is this attempt's: constant time, over bytes, whatever
    characters the URL carried (compare_digest refuses a non-ASCII str)."""
    expected = webhook_token(batch_id, chunk_no, image_id, attempt)
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode())


def _wake_key(batch_id: int, chunk_no: int) -> str:
    return _chunk_key(batch_id, chunk_no, "wake")


def deliver_result(batch_id: int, chunk_no: int, job_id: str, payload: dict[str, Any]) -> None:
    """Keep a webhook's result for the chunk following that job, and wake the chunk. Called
    only for a job the chunk recorded, so at most one result waits per attempt in flight."""
    wake = _wake_key(batch_id, chunk_no)
    pipe = get_redis().pipeline(transaction=False)
    pipe.set(f"{PREFIX}:result:{job_id}", json.dumps(payload), ex=RESULT_TTL_SECONDS)
    pipe.rpush(wake, job_id)
    pipe.expire(wake, RESULT_TTL_SECONDS)
    pipe.execute()


def wake_chunk(batch_id: int, chunk_no: int) -> None:
    """Interrupt a chunk's wait (a cancel, a retry) without a result."""
    get_redis().rpush(_wake_key(batch_id, chunk_no), "")


def take_results(job_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Webhook results stored for these jobs, removed as they are taken."""
    if not job_ids:
        return {}
    keys = [f"{PREFIX}:result:{job_id}" for job_id in job_ids]
    client = get_redis()
    values = client.mget(keys)
    found = {job_id: json.loads(v) for job_id, v in zip(job_ids, values, strict=True) if v}
    if found:
        client.delete(*(f"{PREFIX}:result:{job_id}" for job_id in found))
    return found


def wait_for_wake(batch_id: int, chunk_no: int, timeout: float) -> None:
    """Sleep until a webhook or a cancel wakes the chunk, or `timeout` seconds pass."""
    client = get_redis()
    key = _wake_key(batch_id, chunk_no)
    if timeout > 0 and client.blpop([key], timeout=max(timeout, 0.01)):
        # Drain the rest: one pass of the loop handles every result that arrived.
        client.delete(key)
