"""Redis-backed coordination between chunk tasks on every worker.

- chunk leases: one live task per chunk, so a redelivered or resumed task never runs beside
  the one it replaces, and the sweeper can tell a dead chunk from a busy one;
- chunk tasks' broker priorities, and handing a worker thread over to a task that waits for
  one (a chunk task holds its thread while it runs).

(Webhook results and a chunk's wake-ups are the webhook's mailbox: batches/webhooks.py.)

PostgreSQL stays the source of truth: losing all of this (a Redis restart) only costs time.
Leases expire on their own when a worker dies. The in-flight limiter is in batches/limiter.py.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import redis
from celery import signature
from django.conf import settings
from redis.exceptions import LockError

PREFIX = "comicgen"
PROCESS_CHUNK_TASK = "batches.tasks.process_chunk_task"
# Kombu's Redis transport keeps one list per queue and priority step (0, 3, 6, 9; 0 is served
# first): the queue's own name for 0, the name, this separator and the step for the others.
BROKER_PRIORITY_STEPS = (0, 3, 6, 9)
BROKER_PRIORITY_SEPARATOR = "\x06\x16"
# One chunk at a time hands its thread over per queue, for this long: a task waiting for a
# thread frees one, not every idle chunk of the worker at once.
HANDOVER_TURN_MS = 100


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


# --- worker threads ----------------------------------------------------------------------------


def chunk_task_priority(chunk_no: int) -> int:
    """The broker priority of a chunk's task (Redis transport: 0 is served first, then 3, 6,
    9). A batch's first chunks go before the later chunks of batches already waiting: a chunk
    task holds a worker thread while it runs, so without this a 10-panel batch would wait in
    the broker behind all 50 chunk tasks of another author's 500-panel batch, and the limiter's
    turn-taking between authors could not begin until most of that batch was done."""
    return 0 if chunk_no == 0 else 3 if chunk_no == 1 else 6 if chunk_no < 4 else 9


def send_by_name(name: str, args: tuple[Any, ...], queue: str | None = None) -> None:
    """Send a task whose result nobody reads, by name (the web process does not import
    batches.tasks, which imports the chunk engine). No queue: Celery's default queue.

    ignore_result goes with the message: Celery does not know a task sent by name, so the
    task's own ignore_result does not apply, and outside a worker Celery would subscribe the
    sending thread to the task's result channel in Redis (a round trip, and under ASGI a new
    connection, since every request has a thread of its own)."""
    routing = {"queue": queue} if queue else {}
    signature(name, args=args, ignore_result=True, **routing).apply_async()


def chunk_signature(batch_id: int, chunk_no: int, queue: str) -> Any:
    """The task that runs a chunk, on its batch's priority queue (the name is the contract
    between this module and batches.tasks, which imports this one)."""
    return signature(
        PROCESS_CHUNK_TASK, args=(batch_id, chunk_no), immutable=True, queue=queue,
        priority=chunk_task_priority(chunk_no),
    )  # fmt: skip


def thread_wanted(queue: str, chunk_no: int) -> bool:
    """Whether this chunk's task should give its worker thread to a task that waits for one in
    the broker ahead of it: a task of a better priority (another batch's first chunks) waits in
    `queue`, and no other chunk handed its thread over for this queue in the last
    HANDOVER_TURN_MS."""
    own = chunk_task_priority(chunk_no)
    lists = [queue if step == 0 else f"{queue}{BROKER_PRIORITY_SEPARATOR}{step}"
             for step in BROKER_PRIORITY_STEPS if step < own]  # fmt: skip
    if not lists:
        return False
    client = get_redis()
    pipe = client.pipeline(transaction=False)
    for name in lists:
        pipe.llen(name)
    if not any(pipe.execute()):
        return False
    turn = f"{PREFIX}:handover:{queue}"
    return bool(client.set(turn, "1", nx=True, px=HANDOVER_TURN_MS))


def send_chunk_again(batch_id: int, chunk_no: int, queue: str) -> None:
    """Queue a chunk that handed its thread over (its lease already released, its queued
    marker set by the caller). A message that cannot be sent drops the marker, and the
    sweeper resumes the chunk on its next pass."""
    try:
        chunk_signature(batch_id, chunk_no, queue).apply_async()
    except Exception:
        unmark_chunks_queued(batch_id, [chunk_no])
        raise
