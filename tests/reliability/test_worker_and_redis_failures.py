"""Machines die mid-batch: the batch still finishes, nothing is generated or charged twice."""

from __future__ import annotations

import os
import subprocess
import time
from decimal import Decimal
from typing import Any

import pytest

from batches.models import Batch, BatchStatus, ImageStatus
from budgets.models import Budget, LedgerEntry
from tests.batches.test_pipeline import finished, submit
from tests.conftest import wait_for
from tests.support.books import assert_books_match_the_bill
from tests.support.emulator import EmulatorProcess

pytestmark = pytest.mark.integration


def assert_settled_once(batch: Batch, emulator: EmulatorProcess) -> None:
    """Every panel stored, generated once, charged once; the books balance against the bill."""
    stats = emulator.stats()
    assert batch.status == BatchStatus.COMPLETED
    assert batch.images.exclude(status=ImageStatus.COMPLETED).count() == 0
    assert stats["runs_per_input"]["duplicates"] == 0
    charges = LedgerEntry.objects.filter(batch=batch, kind="charge")
    assert charges.count() == batch.images.count()
    assert sum((c.amount for c in charges), Decimal("0")) == batch.actual_cost
    budget = Budget.objects.get(user=batch.user)
    assert budget.reserved == 0
    assert budget.spent == batch.actual_cost
    assert budget.spent <= budget.limit
    assert_books_match_the_bill(emulator)


def test_a_worker_killed_mid_chunk_resumes_without_generating_twice(live: Any, api: Any) -> None:
    live.emulator.configure(latency=0.5, workers=6)
    created = submit(api, [f"panel under fire {n}" for n in range(40)])
    wait_for(
        lambda: Batch.objects.get(pk=created["id"]).images.filter(status="completed").count() >= 5,
        timeout=60,
    )
    in_flight = Batch.objects.get(pk=created["id"]).images.filter(runpod_job_id__gt="").count()

    live.worker.kill()  # SIGKILL: no acks, no cleanup, leases left to expire
    killed_at = time.monotonic()
    time.sleep(1.0)  # jobs on RunPod finish meanwhile; their webhooks find no chunk running
    live.restart_worker()

    batch = wait_for(lambda: finished(created["id"]), timeout=120)
    print(
        f"injected: SIGKILL with {in_flight} jobs in flight; batch finished "
        f"{time.monotonic() - killed_at:.1f}s after the kill"
    )
    assert_settled_once(batch, live.emulator)
    assert all(image.attempts == 1 for image in batch.images.all())


def test_a_redis_restart_mid_batch_loses_no_image(redis_restarted: Any, api: Any) -> None:
    live = redis_restarted
    redis_dir = os.environ.get("COMICGEN_TEST_REDIS_DIR")
    if not redis_dir:
        pytest.fail("COMICGEN_TEST_REDIS_DIR is not set: run the suite with `make test`")
    port = os.environ["REDIS_URL"].rsplit(":", 1)[1].split("/")[0]
    live.emulator.configure(latency=0.4, workers=6)
    created = submit(api, [f"stormy harbour {n}" for n in range(30)])
    wait_for(
        lambda: Batch.objects.get(pk=created["id"]).images.filter(status="completed").count() >= 5,
        timeout=60,
    )

    # Redis loses everything: broker queue, chord counters, leases, slots, webhook results.
    subprocess.run(["redis-cli", "-p", port, "shutdown", "nosave"], check=False)
    time.sleep(1.5)
    subprocess.run(
        [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            port,
            "--dir",
            redis_dir,
            "--daemonize",
            "yes",
            "--save",
            "",
            "--appendonly",
            "no",
            "--pidfile",
            f"{redis_dir}/redis.pid",
            "--logfile",
            f"{redis_dir}/redis.log",
        ],
        check=True,
    )
    print("injected: Redis shut down (nosave) and restarted empty")

    try:
        batch = wait_for(lambda: finished(created["id"]), timeout=90)
    except AssertionError:
        print(Batch.objects.get(pk=created["id"]).status_counts())
        print(f"worker log: {live.worker.log_path} exit code: {live.worker.process.poll()}")
        raise
    assert_settled_once(batch, live.emulator)
