"""Settle the session's stack between integration tests: the next test starts on a worker with
nothing left of the previous one.

The Celery workers, beat and the announcer threads outlive each test. Without this, a test's
chunk tasks, retries (held by the worker until their countdown ends), its enqueue task (on the
"high" queue) or a sweep could still be working on its batches while the next test starts and
its teardown TRUNCATEs the tables under them; a whole-database books check of the next test
could see them half-way.

How "nothing left" is read, cheaply (a few Redis commands, no `celery inspect`):
- the broker's queue lists are empty: kombu's Redis transport keeps one list per queue and
  priority step (batches/flow.py);
- kombu's `unacked` hash is empty: with acks_late, a task stays there from delivery until it
  has run, and a task waiting for its retry countdown or ETA is delivered and unacked too;
- no chunk lease is held in Redis (a chunk task renews its lease while it runs).
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

# kombu.transport.redis.Channel.unacked_key: delivered, not yet acknowledged messages.
UNACKED_KEY = "unacked"
UNACKED_INDEX_KEY = "unacked_index"
LEASE_PATTERN = "comicgen:chunk:*:lease"
# Bounded: most tests end with their batches finished and settle in one look.
SETTLE_TIMEOUT = 20.0


def queue_keys() -> list[str]:
    """Every broker list a task of this project can wait in."""
    from django.conf import settings

    from batches.flow import BROKER_PRIORITY_SEPARATOR, BROKER_PRIORITY_STEPS
    from batches.models import Priority

    queues = {*Priority.values, settings.CELERY_TASK_DEFAULT_QUEUE, "celery"}
    return [
        queue if step == 0 else f"{queue}{BROKER_PRIORITY_SEPARATOR}{step}"
        for queue in sorted(queues)
        for step in BROKER_PRIORITY_STEPS
    ]


def unacked_tags() -> set[bytes]:
    """The delivery tags of every task delivered and not yet acknowledged."""
    from batches.flow import get_redis

    return set(get_redis().hkeys(UNACKED_KEY))


def leftover_work(dead: set[bytes] | frozenset[bytes] = frozenset()) -> dict[str, int]:
    """What the workers still have to do: queued tasks, delivered-but-unfinished tasks, chunk
    leases. All zero when the stack is idle. `dead`: deliveries to workers a test killed,
    which stay unacknowledged until the broker's visibility timeout (an hour) and are nobody's
    work meanwhile."""
    from batches.flow import get_redis

    client = get_redis()
    pipe = client.pipeline(transaction=False)
    for key in queue_keys():
        pipe.llen(key)
    pipe.hkeys(UNACKED_KEY)
    *lengths, unacked = pipe.execute()
    leases = sum(1 for _ in client.scan_iter(LEASE_PATTERN, count=1000))
    return {"queued": sum(lengths), "unacked": len(set(unacked) - dead), "leases": leases}


def purge_broker() -> None:
    """Drop every queued and unacknowledged task (after the workers were killed: what they held
    would otherwise come back to the restarted workers)."""
    from batches.flow import get_redis

    get_redis().delete(*queue_keys(), UNACKED_KEY, UNACKED_INDEX_KEY)


def cancel_open_batches() -> int:
    """Cancel, through the product's own cancel service, every batch the test left unfinished,
    so its chunk tasks stop at their next look instead of running to the end."""
    from batches import services
    from batches.models import BATCH_TERMINAL, Batch

    cancelled = 0
    for batch in Batch.objects.exclude(status__in=BATCH_TERMINAL).exclude(
        cancel_requested_at__isnull=False
    ):
        try:
            services.cancel_batch(batch, "The test ended.")
            cancelled += 1
        except services.StateConflict:  # it finished meanwhile
            pass
    return cancelled


def wait_until_idle(
    timeout: float, dead: set[bytes] | frozenset[bytes] = frozenset()
) -> dict[str, int] | None:
    """None once the workers have nothing left; what is left if they still have after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        left = leftover_work(dead)
        if not any(left.values()):
            return None
        if time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


@dataclass
class SettleReport:
    """What settling cost the session, printed at its end (conftest's terminal summary)."""

    tests: int = 0
    seconds: float = 0.0
    cancelled: int = 0
    restarts: list[str] = field(default_factory=list)
    slowest: list[tuple[float, str]] = field(default_factory=list)

    def add(self, test: str, seconds: float, cancelled: int) -> None:
        self.tests += 1
        self.seconds += seconds
        self.cancelled += cancelled
        self.slowest = sorted([*self.slowest, (seconds, test)], reverse=True)[:5]

    def lines(self) -> list[str]:
        if not self.tests:
            return []
        lines = [
            f"stack settled after {self.tests} integration tests: {self.seconds:.2f} s in all, "
            f"{self.seconds / self.tests * 1000:.0f} ms a test; {self.cancelled} batches "
            f"cancelled at a test's end; workers restarted {len(self.restarts)} times"
        ]
        lines += [f"  {seconds:.2f} s  {test}" for seconds, test in self.slowest if seconds > 0.05]
        lines += [f"  restarted after {test}" for test in self.restarts]
        return lines


REPORT = SettleReport()


def settle_stack(stack: Any, test: str, timeout: float = SETTLE_TIMEOUT) -> None:
    """Cancel what the test left unfinished, then wait (bounded) until the workers have nothing
    left; if they still have, SIGKILL and restart them on an empty broker, and say so."""
    started = time.monotonic()
    cancelled = 0
    left: dict[str, int] | None
    try:
        cancelled = cancel_open_batches()
        left = wait_until_idle(timeout, stack.dead_deliveries)
    except Exception as error:  # a test that broke PostgreSQL or Redis for good
        left = {"error": 1}
        print(f"settling the stack after {test} failed: {error!r}")
    if left:
        print(f"WARNING: the stack did not settle {timeout:.0f} s after {test} ({left}): "
              "restarting the workers")  # fmt: skip
        stack.worker.kill()
        stack.high_worker.kill()
        try:
            purge_broker()
            stack.dead_deliveries.clear()
        finally:
            stack.restart_workers()
        REPORT.restarts.append(test)
    REPORT.add(test, time.monotonic() - started, cancelled)


def pause(process: Any) -> None:
    """SIGSTOP a ServiceProcess (it keeps its state and sockets; SIGCONT resumes it)."""
    if process.process and process.process.poll() is None:
        os.kill(process.process.pid, signal.SIGSTOP)


def resume(process: Any) -> None:
    if process.process and process.process.poll() is None:
        os.kill(process.process.pid, signal.SIGCONT)
