"""Fixtures: real PostgreSQL and Redis (started by scripts/test.sh), and for integration tests
a real Celery worker, daphne and the RunPod emulator, all as separate processes."""

from __future__ import annotations

import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from tests.factories import UserFactory
from tests.support.emulator import EmulatorProcess, free_port
from tests.support.processes import ServiceProcess, celery_beat, celery_worker, daphne
from tests.support.settle import (
    REPORT,
    pause,
    resume,
    settle_stack,
    unacked_tags,
    wait_until_idle,
)

# What the worker process runs with: short delays so failure paths finish in seconds.
WORKER_SETTINGS = {
    "COMICGEN_MAX_ATTEMPTS": "3",
    "COMICGEN_RETRY_BASE_DELAY": "0.2",
    "COMICGEN_RETRY_MAX_DELAY": "1.0",
    "COMICGEN_SWEEP_INTERVAL": "2",
    "COMICGEN_CHUNK_LEASE_SECONDS": "4",
    "COMICGEN_SLOT_LEASE_SECONDS": "10",
    "COMICGEN_ORPHAN_GRACE_SECONDS": "5",
    "RUNPOD_POLL_INTERVAL": "0.3",
    "RUNPOD_WEBHOOK_POLL_INTERVAL": "3",
    "RUNPOD_MAX_IN_FLIGHT": "12",
}


@pytest.fixture
def user(db: Any) -> Any:
    return UserFactory()


@pytest.fixture
def api(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture(autouse=True)
def _no_dead_connection() -> None:
    """Start each test with a usable PostgreSQL connection in this process, as Django does at
    the start of each request: the fault tests terminate backends, and a connection they ended
    would fail the next test that reads anything. (Only outside a transaction: inside one,
    closing would lose it.)"""
    from django.db import connection

    if (
        connection.connection is not None
        and not connection.in_atomic_block
        and not connection.is_usable()
    ):
        connection.close()


@pytest.fixture(scope="session", autouse=True)
def _flush_retried_on_deadlock() -> Iterator[None]:
    """The session's worker outlives each integration test: after a batch ends, its last chunk
    tasks and the announcer thread may still be writing (a seq row, then the images' seqs) when
    the next transactional test's teardown TRUNCATEs every table, in the opposite order, and
    PostgreSQL may pick the TRUNCATE as a deadlock's victim. The flush is tried again then; the
    worker's writes to rows being truncated are harmless."""
    from django.db import OperationalError
    from django.db.backends.postgresql.operations import DatabaseOperations

    real_flush = DatabaseOperations.execute_sql_flush

    def flush(self: DatabaseOperations, sql_list: list[str]) -> None:
        for attempt in range(1, 4):
            try:
                return real_flush(self, sql_list)
            except OperationalError as error:
                if "deadlock detected" not in str(error) or attempt == 3:
                    raise
                time.sleep(0.2)

    DatabaseOperations.execute_sql_flush = flush  # type: ignore[method-assign,assignment]
    yield
    DatabaseOperations.execute_sql_flush = real_flush  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def _clean_redis_keys() -> Iterator[None]:
    """comicgen's own Redis keys (leases, slots, results) never leak from one test into the next.
    Celery's keys are left alone: the worker is shared by the session."""
    yield
    from batches.flow import get_redis

    client = get_redis()
    keys = list(client.scan_iter("comicgen:*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture(autouse=True)
def _media_root(tmp_path_factory: pytest.TempPathFactory, settings: Any) -> None:
    settings.MEDIA_ROOT = os.environ.get("MEDIA_ROOT") or str(tmp_path_factory.mktemp("media"))


@dataclass
class Stack:
    """The running processes of one test session, for integration tests."""

    emulator: EmulatorProcess
    worker: ServiceProcess
    high_worker: ServiceProcess
    beat: ServiceProcess
    web: ServiceProcess
    web_url: str
    env: dict[str, str]
    beat_dir: str
    # What killed workers had been delivered: unacknowledged until the broker's visibility
    # timeout, and nobody's work meanwhile (tests/support/settle.py does not wait for them).
    dead_deliveries: set[bytes] = field(default_factory=set)

    def restart_worker(self) -> None:
        self.worker.kill()
        # The high worker's own deliveries count among them too: it runs only short enqueue
        # tasks, and settling then does not wait for one of those.
        self.dead_deliveries |= unacked_tags()
        self.worker = celery_worker(self.env).start()

    def restart_workers(self, env: dict[str, str] | None = None) -> None:
        """SIGKILL both workers and start them again, with `env` from now on if given."""
        self.worker.kill()
        self.high_worker.kill()
        self.dead_deliveries |= unacked_tags()
        self.env = env or self.env
        self.worker = celery_worker(self.env).start()
        self.high_worker = high_priority_worker(self.env).start()

    def restart_web(self) -> None:
        """A fresh daphne: after a test restarted Redis, the old one's channel-layer pool can
        stall the next socket's connect for seconds (pages fall back to polling meanwhile),
        which would make the next test's timing depend on the one before it."""
        port = int(self.web_url.rsplit(":", 1)[1])
        self.web.stop()
        self.web = daphne(self.env, port).start()


def high_priority_worker(env: dict[str, str]) -> ServiceProcess:
    return celery_worker(env, queues="high", concurrency=2)


@pytest.fixture(scope="session")
def stack(django_db_setup: Any, django_db_blocker: Any) -> Iterator[Stack]:
    """Emulator, daphne and a Celery worker, all on the test database and this Redis."""
    database = settings.DATABASES["default"]
    db_url = (
        f"postgres://{database['USER']}:{database['PASSWORD']}@{database['HOST']}:"
        f"{database['PORT']}/{database['NAME']}"
    )
    emulator = EmulatorProcess(workers=16, latency=0.05, webhook_retry_delay=0.5)
    emulator.start()
    web_port = free_port()
    web_url = f"http://127.0.0.1:{web_port}"
    env = {
        **os.environ,
        **WORKER_SETTINGS,
        "DATABASE_URL": db_url,
        "RUNPOD_BASE_URL": emulator.base_url,
        "RUNPOD_ENDPOINT_ID": emulator.endpoint_id,
        "RUNPOD_API_KEY": emulator.api_key,
        "COMICGEN_PUBLIC_URL": web_url,
        "MEDIA_ROOT": str(settings.MEDIA_ROOT),
        "DJANGO_SETTINGS_MODULE": "comicgen.settings",
        # The real processes pool their connections, as in production (scripts/test.sh turns
        # pooling off for the test process itself only).
        "COMICGEN_DB_POOL_SIZE": "20",
    }
    beat_dir = tempfile.mkdtemp(prefix="comicgen-beat-")
    web = daphne(env, web_port).start()
    worker = celery_worker(env).start()
    # As in the Procfile: a small worker only for the high queue, so urgent work never waits
    # for a thread behind long normal chunks.
    high_worker = high_priority_worker(env).start()
    beat = celery_beat(env, beat_dir).start()
    running = Stack(emulator, worker, high_worker, beat, web, web_url, env, beat_dir)
    global _session_stack
    _session_stack = running
    yield running
    _session_stack = None
    resume(running.beat)  # in case a test's teardown never ran
    running.beat.stop()
    running.high_worker.stop()
    running.worker.stop()
    running.web.stop()
    emulator.stop()
    # Connections of the stopped processes may linger a moment; the test database is dropped next.
    from django.db import connection

    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


# The session's stack once an integration test has started it (see _stack_keeps_off).
_session_stack: Stack | None = None


@pytest.fixture
def live(stack: Stack, transactional_db: Any, settings: Any, request: Any) -> Iterator[Stack]:
    """An integration test: the stack, a clean emulator, and committed data the worker sees.
    Before and after it, the stack is settled (tests/support/settle.py): the workers have
    nothing left of any other test, and after it, nothing left of this one (its unfinished
    batches are cancelled) before its teardown empties the tables."""
    settle_stack(stack, f"(before) {request.node.nodeid}")
    # Every setting back to the stack's start-up values, not only those listed below: a test
    # that changed another one (scaling, latency scale, result ttl) and failed before its own
    # teardown restored it would otherwise leave it to the tests after it.
    stack.emulator.reset(restore_config=True)
    stack.emulator.configure(
        latency=0.05,
        jitter=0,
        fail_rate=0,
        http_error_rate=0,
        rate_limit_run=0,
        rate_limit_status=0,
        drop_webhooks=0,
        ambiguous_run_rate=0,
        ambiguous_run_next=0,
        run_answer_delay=0,
        workers=16,
    )
    settings.RUNPOD_BASE_URL = stack.emulator.base_url
    settings.RUNPOD_ENDPOINT_ID = stack.emulator.endpoint_id
    settings.RUNPOD_API_KEY = stack.emulator.api_key
    settings.MEDIA_ROOT = stack.env["MEDIA_ROOT"]
    for name, value in WORKER_SETTINGS.items():
        setattr(settings, name, type(getattr(settings, name))(value))
    fresh_connection()
    yield stack
    # A connection the test's faults ended would fail the cancels; a new one costs little.
    fresh_connection()
    settle_stack(stack, request.node.nodeid)


def _is_transactional(request: Any) -> bool:
    if "transactional_db" in request.fixturenames:
        return True
    marker = request.node.get_closest_marker("django_db")
    if marker is None:
        return False
    return bool(marker.kwargs.get("transaction", marker.args[0] if marker.args else False))


@pytest.fixture(autouse=True)
def _stack_keeps_off(request: Any) -> Iterator[None]:
    """A transactional test that is not an integration test commits rows the session's stack
    (started by an earlier integration test) can see, and run alone it has no stack at all. Its
    beat is paused meanwhile, and the test starts once the workers are idle: otherwise the
    sweeper (every COMICGEN_SWEEP_INTERVAL s) took the test's queued batches for lost ones and
    ran them on the emulator, holding money on the test's images under it (a books check once
    found one "holding 0.007750 while completed")."""
    stack = _session_stack
    if stack is None or "live" in request.fixturenames or not _is_transactional(request):
        yield
        return
    pause(stack.beat)
    try:
        left = wait_until_idle(5.0, stack.dead_deliveries)  # a sweep ends in milliseconds
        if left:
            print(f"WARNING: the stack is not idle before {request.node.nodeid}: {left}")
        yield
    finally:
        resume(stack.beat)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    """COMICGEN_TEST_SHUFFLE=<seed>: run the tests in a random order (seeded, so a failing
    order can be run again), across files and across pytest-django's grouping of database
    tests, to catch a test that depends on what ran before it. (pytest-randomly is not a
    dependency.)"""
    seed = os.environ.get("COMICGEN_TEST_SHUFFLE")
    if seed:
        random.Random(int(seed)).shuffle(items)
        config.get_terminal_writer().line(f"COMICGEN_TEST_SHUFFLE={seed}: tests in random order")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """What settling the stack between integration tests cost (tests/support/settle.py)."""
    for line in REPORT.lines():
        terminalreporter.write_line(line)


def fresh_connection() -> None:
    """Give the test body a new PostgreSQL connection of its own. In the full suite a browser
    test's connection has been found ended under it ("terminating connection due to
    administrator command") by the time the test first used it; a connection opened by the
    test itself has not been."""
    from django.db import connection

    if not connection.in_atomic_block:
        connection.close()


@pytest.fixture
def redis_restarted(live: Stack) -> Iterator[Stack]:
    """For a test that restarts Redis: the web process is restarted after it (see
    Stack.restart_web)."""
    yield live
    live.restart_web()


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 0.2) -> Any:
    """Poll until predicate() is truthy; fail with what it last returned."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met in {timeout}s (last value: {value!r})")
