"""POST /api/v1/batches/{id}/cancel/ and /retry/, on the real stack."""

from __future__ import annotations

from typing import Any

import pytest

from batches.models import Batch, BatchStatus, ImageStatus
from budgets.books import check_books
from budgets.models import Budget, LedgerEntry
from tests.batches.test_pipeline import finished, submit
from tests.conftest import wait_for

pytestmark = pytest.mark.integration


def test_cancel_stops_pending_and_running_work(live: Any, api: Any, user: Any) -> None:
    live.emulator.configure(latency=1.0, workers=4)
    created = submit(api, [f"long panel {n}" for n in range(30)])
    wait_for(
        lambda: (
            Batch.objects.get(pk=created["id"]).images.filter(runpod_job_id__gt="").count() >= 4
        ),
        timeout=30,
    )

    response = api.post(f"/api/v1/batches/{created['id']}/cancel/")

    assert response.status_code == 202
    batch = wait_for(lambda: finished(created["id"]), timeout=30)
    assert batch.status == BatchStatus.CANCELLED
    counts = batch.status_counts()
    assert counts["cancelled"] >= 20
    assert counts["cancelled"] + counts["completed"] == 30
    stats = live.emulator.stats()
    assert stats["jobs"].get("CANCELLED", 0) >= 1  # running jobs were cancelled on RunPod too
    assert stats["jobs"]["submitted"] < 30  # the rest never reached it
    budget = Budget.objects.get(user=user)
    assert budget.reserved == 0
    assert budget.spent == batch.actual_cost

    again = api.post(f"/api/v1/batches/{created['id']}/cancel/")
    assert again.status_code == 409
    assert again.json()["code"] == "conflict"


def test_retry_requeues_only_the_failed_images(live: Any, api: Any) -> None:
    # Fails the worker's 3 attempts, then works on the 4th: only a retry can finish it.
    created = submit(api, ["good one", "stubborn [fail:3]", "good two"])
    batch = wait_for(lambda: finished(created["id"]), timeout=60)
    assert batch.status == BatchStatus.PARTIAL
    before = {image.prompt: (image.attempts, image.image.name) for image in batch.images.all()}

    response = api.post(f"/api/v1/batches/{created['id']}/retry/")

    assert response.status_code == 202
    assert response.json()["status"] == "running"
    batch = wait_for(lambda: finished(created["id"]), timeout=60)
    assert batch.status == BatchStatus.COMPLETED
    after = {image.prompt: image for image in batch.images.all()}
    assert after["stubborn [fail:3]"].status == ImageStatus.COMPLETED
    stubborn = after["stubborn [fail:3]"]
    # A fresh set of attempts, numbered on from the first three: each attempt is charged once.
    assert (stubborn.attempts, stubborn.attempts_this_round) == (4, 1)
    charged = LedgerEntry.objects.filter(image=stubborn, kind="charge")
    assert list(charged.order_by("attempt").values_list("attempt", flat=True)) == [1, 2, 3, 4]
    assert stubborn.cost == sum(charged.values_list("amount", flat=True)) > 0
    assert check_books() == []
    for prompt in ("good one", "good two"):
        assert (after[prompt].attempts, after[prompt].image.name) == before[prompt]
    assert live.emulator.stats()["runs_per_input"]["duplicates"] == 0


def test_retry_of_a_running_or_clean_batch_is_a_conflict(live: Any, api: Any) -> None:
    created = submit(api, ["fine"])
    batch = wait_for(lambda: finished(created["id"]), timeout=30)
    assert batch.status == BatchStatus.COMPLETED

    response = api.post(f"/api/v1/batches/{created['id']}/retry/")

    assert response.status_code == 409
    assert "No failed or cancelled images" in response.json()["detail"]


@pytest.mark.django_db
def test_another_users_batch_is_a_404_for_every_action(api: Any) -> None:
    from rest_framework.test import APIClient

    from tests.factories import UserFactory

    other = APIClient()
    other.force_authenticate(UserFactory())
    batch_id = submit(other, ["not yours"])["id"]

    for method, path in [
        ("get", ""),
        ("post", "cancel/"),
        ("post", "retry/"),
        ("get", "download/"),
    ]:
        response = getattr(api, method)(f"/api/v1/batches/{batch_id}/{path}")
        assert response.status_code == 404, path
    assert Batch.objects.get(pk=batch_id).status == BatchStatus.QUEUED


@pytest.mark.django_db
def test_cancelling_a_large_queued_batch_costs_a_few_queries_not_one_per_image(
    api: Any, django_assert_max_num_queries: Any
) -> None:
    batch_id = submit(api, [f"panel {n}" for n in range(300)])["id"]

    with django_assert_max_num_queries(40):
        response = api.post(f"/api/v1/batches/{batch_id}/cancel/")

    assert response.status_code == 202
    batch = Batch.objects.get(pk=batch_id)
    assert batch.status == BatchStatus.CANCELLED
    assert batch.images.filter(status=ImageStatus.CANCELLED).count() == 300
