"""Redis-backed coordination between chunk tasks on every worker.

- chunk leases: one live task per chunk, so a redelivered or resumed task never runs beside
  the one it replaces, and the sweeper can tell a dead chunk from a busy one;
- webhook results and wake-ups: a webhook stores the job's result and wakes the chunk waiting
  for it, so a chunk sleeps instead of polling.

PostgreSQL stays the source of truth: losing all of this (a Redis restart) only costs time.
Leases expire on their own when a worker dies. The in-flight limiter is in batches/limiter.py.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
from typing import Any

import redis
from django.conf import settings

PREFIX = "comicgen"
RESULT_TTL_SECONDS = 1800  # RunPod keeps results 30 minutes; so do we

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
