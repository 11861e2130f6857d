"""End to end on the real stack: panels complete on an emulator that takes time like a GPU,
and the next estimate is learned from them and close to what the next batch costs."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from batches.models import Batch, BatchStatus
from budgets import estimates
from budgets.books import check_books
from tests.conftest import wait_for
from tests.support.books import assert_books_match_the_bill

pytestmark = pytest.mark.integration

# The emulator's reference image (768 x 768, 25 steps) takes this long; others scale with it.
REFERENCE_SECONDS = 1.0
HISTORY = {"width": 768, "height": 768, "steps": 25}
OTHER_SIZE = {"width": 1024, "height": 1024, "steps": 30}


@pytest.fixture
def gpu_like(live: Any) -> Iterator[Any]:
    live.emulator.configure(latency_scale="pixels", latency=REFERENCE_SECONDS, jitter=0)
    yield live
    live.emulator.configure(latency_scale="fixed")


def body(count: int, params: dict[str, int], prefix: str) -> dict[str, Any]:
    return {
        "title": prefix,
        "params": params,
        "images": [{"prompt": f"{prefix} {n}"} for n in range(count)],
    }


def run(api: Any, count: int, params: dict[str, int], prefix: str) -> Batch:
    response = api.post("/api/v1/batches/", body(count, params, prefix), format="json")
    assert response.status_code == 202, response.json()
    batch = wait_for(lambda: finished(response.json()["id"]), timeout=90)
    assert batch.status == BatchStatus.COMPLETED
    return batch


def finished(batch_id: int) -> Batch | None:
    batch = Batch.objects.get(pk=batch_id)
    return batch if batch.is_terminal else None


def test_after_enough_panels_the_estimate_is_measured_and_matches_the_next_batch(
    gpu_like: Any, api: Any
) -> None:
    before = api.post("/api/v1/batches/estimate/", body(10, OTHER_SIZE, "next"), format="json")
    assert before.json()["basis"]["kind"] == "catalogue"

    run(api, estimates.MIN_SAMPLES + 5, HISTORY, "history")
    estimate = api.post(
        "/api/v1/batches/estimate/", body(10, OTHER_SIZE, "next"), format="json"
    ).json()
    batch = run(api, 10, OTHER_SIZE, "next")

    assert estimate["basis"]["kind"] == "measured"
    assert estimate["basis"]["samples"] == estimates.MIN_SAMPLES + 5
    expected = Decimal(estimate["expected_cost"])
    # The batch was priced and reserved on the same learned figure, and cost about that.
    assert batch.expected_cost == expected
    assert batch.estimate_basis["kind"] == "measured"
    assert abs(batch.actual_cost / expected - 1) < Decimal("0.10"), (batch.actual_cost, expected)
    # The catalogue's figure is kept for a GPU it describes: within 2x of this emulator's.
    catalogue = Decimal(before.json()["expected_cost"])
    assert Decimal("0.5") < batch.actual_cost / catalogue < 2
    assert check_books() == []
    assert_books_match_the_bill(gpu_like.emulator)
