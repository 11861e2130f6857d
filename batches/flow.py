"""Redis-backed coordination between chunk tasks on every worker.

- chunk leases: one live task per chunk, so a redelivered or resumed task never runs beside
  the one it replaces, and the sweeper can tell a dead chunk from a busy one.

(Webhook results and a chunk's wake-ups are the webhook's mailbox: batches/webhooks.py.)

PostgreSQL stays the source of truth: losing all of this (a Redis restart) only costs time.
Leases expire on their own when a worker dies. The in-flight limiter is in batches/limiter.py.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import redis
from django.conf import settings
from redis.exceptions import LockError

PREFIX = "comicgen"


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
