"""Faults beyond dead workers and Redis: PostgreSQL dropping connections, finalize and chunk
tasks delivered twice, retry countdowns against the broker's visibility timeout, and a storm of
concurrent submits sharing one Idempotency-Key. Each test prints what it injected."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from celery.utils.time import get_exponential_backoff_interval
from django.conf import settings
from django.db import connection
from rest_framework.authtoken.models import Token

from batches import services, tasks
from batches.models import Batch, BatchStatus
from budgets.models import LedgerEntry
from comicgen.celery import app as celery_app
from tests.batches.test_pipeline import finished, submit
from tests.conftest import wait_for
from tests.reliability.test_worker_and_redis_failures import assert_settled_once

pytestmark = pytest.mark.integration


def completed_count(batch_id: int) -> int:
    return Batch.objects.get(pk=batch_id).images.filter(status="completed").count()


def test_postgres_dropping_the_workers_connections_mid_batch_charges_nothing_twice(
    live: Any, api: Any
) -> None:
    live.emulator.configure(latency=0.3, workers=6)
    created = submit(api, [f"flooded archive {n}" for n in range(30)])
    wait_for(lambda: completed_count(created["id"]) >= 3, timeout=60)

    # Every backend but this test's own: the worker's (mid-chunk, some mid-transaction),
    # the high worker's, beat's and daphne's. Several rounds, so some land inside a charge.
    terminated = rounds = 0
    while rounds < 4 and not finished(created["id"]):
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            terminated += cursor.fetchone()[0]
        rounds += 1
        time.sleep(0.6)
    print(f"injected: {terminated} PostgreSQL backends terminated in {rounds} rounds")
    assert terminated > 0

    batch = wait_for(lambda: finished(created["id"]), timeout=90)
    assert_settled_once(batch, live.emulator)


def test_finalize_run_twice_on_a_finished_batch_changes_nothing(live: Any, api: Any) -> None:
    created = submit(api, ["closing panel one", "closing panel two", "closing panel three"])
    batch = wait_for(lambda: finished(created["id"]), timeout=60)
    assert batch.status == BatchStatus.COMPLETED
    ledger_before = list(
        LedgerEntry.objects.filter(batch=batch).values_list("id", "kind", "amount")
    )

    results = [services.finalize_batch(batch.pk), services.finalize_batch(batch.pk)]
    # And the Celery task, twice, on the real worker (as a replayed chord callback would run).
    results += [
        tasks.finalize_batch_task.apply_async(args=([], batch.pk), queue="normal").get(timeout=30)
        for _ in range(2)
    ]
    print("injected: finalize_batch x2 in-process and finalize_batch_task x2 on the worker")

    assert results == [BatchStatus.COMPLETED] * 4
    after = Batch.objects.get(pk=batch.pk)
    assert (after.status, after.finished_at, after.actual_cost, after.reserved) == (
        batch.status, batch.finished_at, batch.actual_cost, batch.reserved,
    )  # fmt: skip
    ledger_after = list(LedgerEntry.objects.filter(batch=batch).values_list("id", "kind", "amount"))
    assert ledger_after == ledger_before
    assert LedgerEntry.objects.filter(batch=batch, kind="release").count() == 1


def test_a_chunk_task_delivered_twice_concurrently_generates_nothing_twice(
    live: Any, api: Any
) -> None:
    live.emulator.configure(latency=0.4, workers=4)
    created = submit(api, [f"double exposure {n}" for n in range(20)])  # chunks 0 and 1
    wait_for(lambda: Batch.objects.get(pk=created["id"]).status == BatchStatus.RUNNING, timeout=30)

    # Two more copies of each chunk task, all at once, beside the chord's own.
    duplicates = [
        tasks.process_chunk_task.apply_async(args=(created["id"], chunk_no), queue="normal")
        for chunk_no in (0, 1)
        for _ in range(2)
    ]
    print(f"injected: {len(duplicates)} extra deliveries of the batch's 2 chunk tasks")

    summaries = [result.get(timeout=90) for result in duplicates]
    batch = wait_for(lambda: finished(created["id"]), timeout=90)
    assert_settled_once(batch, live.emulator)
    assert all(image.attempts == 1 for image in batch.images.all())
    assert all(summary.get("skipped") or summary.get("done") for summary in summaries), summaries
    assert live.emulator.stats()["jobs"]["submitted"] == 20


def test_no_retry_countdown_reaches_the_visibility_timeout() -> None:
    """With a Redis broker, a message not acknowledged within the visibility timeout is handed
    to another worker; a retry is a new message with an ETA, held unacknowledged by the worker
    that waits for it, so a countdown longer than the timeout is delivered again, and again
    (kombu's Redis transport restores it). Every autoretry countdown must therefore stay below
    it, with room to spare for the task's own run. A chunk task that runs longer than the
    timeout is redelivered too; the chunk lease makes that copy leave at once (test above)."""
    timeout = settings.CELERY_VISIBILITY_TIMEOUT
    assert celery_app.conf.broker_transport_options["visibility_timeout"] == timeout
    assert timeout >= tasks.RETRY_BACKOFF_MAX * 2
    for task in (tasks.process_chunk_task, tasks.finalize_batch_task):
        assert task.retry_backoff_max <= tasks.RETRY_BACKOFF_MAX
        longest = max(
            get_exponential_backoff_interval(
                factor=int(max(1.0, task.retry_backoff)),
                retries=retries,
                maximum=task.retry_backoff_max,
                full_jitter=False,
            )  # fmt: skip
            for retries in range(task.max_retries + 1)
        )
        print(f"injected: none; {task.name} longest countdown {longest}s < visibility {timeout}s")
        assert longest < timeout
    # The image retry backoff is waited inside the chunk task, never as a Celery countdown.
    assert timeout > settings.COMICGEN_RETRY_MAX_DELAY
    # No task is enqueued with an explicit countdown or ETA anywhere in the code.
    root = Path(settings.BASE_DIR)
    for path in [*root.glob("batches/**/*.py"), *root.glob("budgets/**/*.py")]:
        source = path.read_text()
        assert "countdown=" not in source, path
        assert "eta=" not in source, path


def test_twenty_concurrent_submits_with_one_idempotency_key_make_one_batch(
    live: Any, user: Any
) -> None:
    token = Token.objects.create(user=user)
    body = {
        "title": "Raced chapter",
        "params": {"width": 128, "height": 128, "steps": 4},
        "images": [{"prompt": "one panel, twenty clicks"}],
    }
    key = "chapter-7-first-submit"
    barrier = threading.Barrier(20)
    answers: list[tuple[int, Any]] = []

    def post() -> None:
        session = requests.Session()
        session.headers.update({"Authorization": f"Token {token.key}", "Idempotency-Key": key})
        barrier.wait()
        response = session.post(f"{live.web_url}/api/v1/batches/", json=body, timeout=30)
        answers.append((response.status_code, response.json().get("id")))

    threads = [threading.Thread(target=post) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    codes = sorted(code for code, _ in answers)
    print(f"injected: 20 concurrent POSTs with one Idempotency-Key; answers {codes}")

    assert len(answers) == 20
    assert {code for code, _ in answers} <= {200, 202}
    assert codes.count(202) == 1
    assert len({batch_id for _, batch_id in answers}) == 1
    assert Batch.objects.filter(user=user, idempotency_key=key).count() == 1
    batch = wait_for(lambda: finished(answers[0][1]), timeout=60)
    assert batch.status == BatchStatus.COMPLETED
    assert live.emulator.stats()["jobs"]["submitted"] == 1
