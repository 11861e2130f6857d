"""Money under faults, on the real stack: lost /run answers, a worker killed between RunPod
accepting a job and comicgen recording it (with webhooks on and off), Redis restarted empty while
jobs run, cancel and retry in a loop. Each test ends with the books check and the ledger held
against what the emulator bills, job by job, and prints what it injected."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from batches.models import Batch, BatchStatus, ImageStatus
from budgets.models import LedgerEntry
from tests.batches.test_pipeline import finished, submit
from tests.conftest import Stack, wait_for
from tests.support.books import assert_books_match_the_bill

pytestmark = pytest.mark.integration


def images_of(batch_id: int) -> Any:
    return Batch.objects.get(pk=batch_id).images.all()


def test_lost_run_answers_are_adopted_from_webhooks_and_charged_once(live: Any, api: Any) -> None:
    live.emulator.configure(latency=0.2, workers=8, ambiguous_run_rate=0.3)
    created = submit(api, [f"uncertain harbour {n}" for n in range(20)])

    batch = wait_for(lambda: finished(created["id"]), timeout=90)

    stats = live.emulator.stats()
    print(f"injected: {stats['jobs']['ambiguous']} /run answers lost (500 or dropped) of 20")
    assert stats["jobs"]["ambiguous"] > 0
    assert batch.status == BatchStatus.COMPLETED
    assert stats["runs_per_input"]["duplicates"] == 0  # no job was submitted twice
    assert all(image.attempts == 1 for image in batch.images.all())
    assert_books_match_the_bill(live.emulator)


def kill_between_run_and_record(live: Stack, prompt: str, api: Any) -> int:
    """Submit one panel whose /run answer is held back, SIGKILL the worker once RunPod (the
    emulator) has created the job and before the worker hears its id, then start a new one."""
    live.emulator.configure(latency=0.2, run_answer_delay=3.0)
    created = submit(api, [prompt])
    live.emulator.wait_until(lambda stats: stats["jobs"]["submitted"] >= 1, timeout=30)
    image = images_of(created["id"]).get()
    assert (image.status, image.runpod_job_id) == (ImageStatus.SUBMITTED, "")
    live.worker.kill()
    live.high_worker.kill()
    live.emulator.configure(run_answer_delay=0)
    print("injected: worker SIGKILLed after RunPod created the job, before /run answered")
    live.restart_workers()
    return int(created["id"])


def test_a_worker_killed_between_run_and_recording_the_job_adopts_it_from_its_webhook(
    live: Any, api: Any
) -> None:
    batch_id = kill_between_run_and_record(live, "the vault at midnight", api)

    batch = wait_for(lambda: finished(batch_id), timeout=90)

    assert batch.status == BatchStatus.COMPLETED
    image = batch.images.get()
    assert image.attempts == 1
    assert live.emulator.stats()["runs_per_input"]["duplicates"] == 0
    assert_books_match_the_bill(live.emulator)


@pytest.fixture
def webhooks_off(live: Stack) -> Iterator[Stack]:
    """The stack's workers restarted with no COMICGEN_PUBLIC_URL: jobs followed by /status."""
    original = live.env
    live.restart_workers({**original, "COMICGEN_PUBLIC_URL": ""})
    yield live
    live.restart_workers(original)


def test_with_webhooks_off_a_job_lost_with_its_worker_is_charged_its_maximum(
    webhooks_off: Any, api: Any
) -> None:
    batch_id = kill_between_run_and_record(webhooks_off, "the vault without webhooks", api)

    batch = wait_for(lambda: finished(batch_id), timeout=90)

    # Nothing can name the lost job: the panel is generated again (RunPod has no idempotency
    # key), and the lost attempt is charged the most it could cost, so the ledger still shows
    # at least what RunPod bills.
    assert batch.status == BatchStatus.COMPLETED
    image = batch.images.get()
    assert (image.attempts, image.attempts_this_round) == (2, 1)
    lost = LedgerEntry.objects.get(image=image, attempt=1, kind="charge")
    assert lost.runpod_job_id == ""
    assert lost.amount > 0
    figures = assert_books_match_the_bill(webhooks_off.emulator, exact=False)
    assert figures["ledger_ms"] > figures["billed_ms"]


def restart_redis_empty() -> None:
    redis_dir = os.environ.get("COMICGEN_TEST_REDIS_DIR")
    if not redis_dir:
        pytest.fail("COMICGEN_TEST_REDIS_DIR is not set: run the suite with `make test`")
    port = os.environ["REDIS_URL"].rsplit(":", 1)[1].split("/")[0]
    subprocess.run(["redis-cli", "-p", port, "shutdown", "nosave"], check=False)
    time.sleep(1.0)
    subprocess.run(
        ["redis-server", "--bind", "127.0.0.1", "--port", port, "--dir", redis_dir,
         "--daemonize", "yes", "--save", "", "--appendonly", "no",
         "--pidfile", f"{redis_dir}/redis.pid", "--logfile", f"{redis_dir}/redis.log"],
        check=True,
    )  # fmt: skip


def test_redis_restarted_empty_keeps_the_in_flight_cap(
    redis_restarted: Any, api: Any, settings: Any
) -> None:
    live = redis_restarted
    cap = settings.RUNPOD_MAX_IN_FLIGHT  # what the test worker runs with
    live.emulator.configure(latency=1.5, workers=32)
    created = submit(api, [f"crowded street {n}" for n in range(3 * cap)])
    live.emulator.wait_until(lambda stats: stats["in_flight"] >= cap, timeout=30)

    restart_redis_empty()
    print(f"injected: Redis restarted empty with {cap} jobs in flight")
    peak = 0
    deadline = time.monotonic() + 120
    while not finished(created["id"]) and time.monotonic() < deadline:
        peak = max(peak, live.emulator.stats()["in_flight"])
        time.sleep(0.05)

    batch = wait_for(lambda: finished(created["id"]), timeout=30)
    print(f"in flight at RunPod after the restart: at most {peak} (cap {cap})")
    assert peak <= cap
    assert batch.status == BatchStatus.COMPLETED
    assert_books_match_the_bill(live.emulator)


def test_cancel_then_retry_in_a_loop_charges_every_job_that_ran_once(live: Any, api: Any) -> None:
    live.emulator.configure(latency=1.0, workers=6)
    created = submit(api, [f"restless panel {n}" for n in range(12)])
    batch_id = created["id"]
    for round_no in range(3):
        # Jobs running on the GPUs: cancelling them now bills the time they ran.
        live.emulator.wait_until(lambda stats: stats["in_flight"] >= 2, timeout=60)
        time.sleep(0.3)
        assert api.post(f"/api/v1/batches/{batch_id}/cancel/").status_code == 202
        batch = wait_for(lambda: finished(batch_id), timeout=60)
        print(f"round {round_no}: cancelled with {batch.status_counts()}")
        if batch.status == BatchStatus.COMPLETED:
            break
        assert api.post(f"/api/v1/batches/{batch_id}/retry/").status_code == 202
    else:
        batch = wait_for(lambda: finished(batch_id), timeout=90)

    cancelled_mid_run = LedgerEntry.objects.filter(
        batch_id=batch_id, kind="charge", billed_ms__gt=0, image__status="cancelled"
    )
    print(f"{cancelled_mid_run.count()} cancelled panels charged for the time their job ran")
    assert LedgerEntry.objects.filter(batch_id=batch_id, kind="charge").count() > 12
    assert_books_match_the_bill(live.emulator)


def test_a_panel_that_always_fails_retried_twice_is_charged_three_rounds(
    live: Any, api: Any, settings: Any
) -> None:
    attempts = settings.COMICGEN_MAX_ATTEMPTS
    created = submit(api, ["a cursed page [fail:always]", "a fine page"])
    batch_id = created["id"]
    for _round in range(2):
        assert wait_for(lambda: finished(batch_id), timeout=60).status == BatchStatus.PARTIAL
        assert api.post(f"/api/v1/batches/{batch_id}/retry/").status_code == 202
    batch = wait_for(lambda: finished(batch_id), timeout=60)

    assert batch.status == BatchStatus.PARTIAL
    cursed = batch.images.get(prompt__startswith="a cursed")
    charges = LedgerEntry.objects.filter(image=cursed, kind="charge").order_by("attempt")
    assert list(charges.values_list("attempt", flat=True)) == list(range(1, 3 * attempts + 1))
    assert all(charge.amount > 0 for charge in charges)
    assert cursed.cost == sum(charge.amount for charge in charges)
    assert_books_match_the_bill(live.emulator)
