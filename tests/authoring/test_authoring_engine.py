"""The authors' tools on the real stack: API -> Celery -> the RunPod emulator -> PostgreSQL,
each test ending with the books and the emulator's bill."""

from __future__ import annotations

import time
from typing import Any

import pytest

from batches.models import IMAGE_IN_FLIGHT, Batch, BatchStatus, ImageJob, ImageStatus
from budgets.models import LedgerEntry
from tests.batches.test_pipeline import finished, submit
from tests.conftest import wait_for
from tests.support.books import assert_books_match_the_bill

pytestmark = pytest.mark.integration


def test_a_blank_panel_is_charged_and_redrawn_with_new_seeds_until_it_is_not(
    live: Any, api: Any
) -> None:
    created = submit(api, ["steady", "refused by the safety checker [blank:2]"])

    batch = wait_for(lambda: finished(created["id"]), timeout=60)

    assert batch.status == BatchStatus.COMPLETED
    image = batch.images.get(index=1)
    assert (image.status, image.attempts) == (ImageStatus.COMPLETED, 3)
    charges = LedgerEntry.objects.filter(image=image, kind="charge").order_by("attempt")
    assert list(charges.values_list("attempt", flat=True)) == [1, 2, 3]
    assert all(charge.amount > 0 and charge.billed_ms for charge in charges)
    assert image.cost == sum(charge.amount for charge in charges)
    # Three distinct inputs: each retry went out with a new seed.
    stats = live.emulator.stats()
    assert stats["runs_per_input"]["duplicates"] == 0
    assert stats["jobs"].get("COMPLETED") == 4  # RunPod completed all four: two were blank
    assert batch.images.get(index=0).attempts == 1
    assert_books_match_the_bill(live.emulator)


def test_a_blank_panel_that_stays_blank_fails_with_the_reason(live: Any, api: Any) -> None:
    created = submit(api, ["always refused [blank:9]"])

    batch = wait_for(lambda: finished(created["id"]), timeout=60)

    image = batch.images.get()
    assert (batch.status, image.status, image.attempts) == ("failed", "failed", 3)
    assert "blank image" in image.error
    assert "gave up after 3 attempts" in image.error
    assert_books_match_the_bill(live.emulator)


def test_a_paused_batch_submits_nothing_while_its_running_jobs_finish(live: Any, api: Any) -> None:
    live.emulator.configure(latency=1.0)
    created = submit(api, [f"panel {n}" for n in range(30)])
    images = ImageJob.objects.filter(batch_id=created["id"])
    wait_for(lambda: images.exclude(runpod_job_id="").exists(), timeout=30)

    response = api.post(f"/api/v1/batches/{created['id']}/pause/")

    assert response.status_code == 202
    wait_for(lambda: not images.filter(status__in=IMAGE_IN_FLIGHT).exists(), timeout=30)
    submitted = live.emulator.stats()["jobs"]["submitted"]
    assert 0 < submitted < 30
    time.sleep(3)  # a chunk that still submitted would have done so by now
    assert live.emulator.stats()["jobs"]["submitted"] == submitted
    batch = Batch.objects.get(pk=created["id"])
    assert batch.status == BatchStatus.PAUSED
    assert batch.reserved > 0  # the reservation stays
    counts = batch.status_counts()
    assert counts["completed"] == submitted  # every job on RunPod finished and was stored
    assert counts["pending"] == 30 - submitted

    assert api.post(f"/api/v1/batches/{created['id']}/resume/").status_code == 202
    live.emulator.configure(latency=0.05)
    batch = wait_for(lambda: finished(created["id"]), timeout=90)

    assert batch.status == BatchStatus.COMPLETED
    assert live.emulator.stats()["runs_per_input"]["duplicates"] == 0
    assert_books_match_the_bill(live.emulator)


def test_a_redraw_runs_through_the_engine_and_is_charged_once(live: Any, api: Any) -> None:
    created = submit(api, ["Mara opens the vault door", "close-up of her face"])
    wait_for(lambda: finished(created["id"]), timeout=60)
    first = ImageJob.objects.get(batch_id=created["id"], index=0)
    first_file = first.image.name

    response = api.post(
        f"/api/v1/batches/{created['id']}/images/0/redraw/",
        {"prompt": "Mara slams the vault door"},
        format="json",
    )

    assert response.status_code == 202
    assert Batch.objects.get(pk=created["id"]).status == BatchStatus.RUNNING
    batch = wait_for(lambda: finished(created["id"]), timeout=60)
    assert batch.status == BatchStatus.COMPLETED
    image = batch.images.get(index=0)
    assert (image.status, image.attempts, image.version) == (ImageStatus.COMPLETED, 2, 2)
    assert image.image.name
    assert image.image.name != first_file
    charges = LedgerEntry.objects.filter(image=image, kind="charge")
    attempts = charges.order_by("attempt").values_list("attempt", flat=True)
    assert list(attempts) == [1, 2]  # the redraw charged once
    assert batch.images.get(index=1).attempts == 1  # the other panel untouched
    detail = api.get(f"/api/v1/batches/{batch.pk}/").json()["images"][0]
    assert [take["prompt"] for take in detail["versions"]] == [
        "Mara opens the vault door",
        "Mara slams the vault door",
    ]
    assert batch.reserved == 0
    assert live.emulator.stats()["runs_per_input"]["duplicates"] == 0
    assert_books_match_the_bill(live.emulator)
