"""Money on the real pipeline: the ledger adds up, and a budget running dry stops the batch."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.db.models import Sum

from batches.models import Batch, BatchStatus, ImageStatus
from budgets.books import check_books
from budgets.models import Budget, LedgerEntry
from budgets.services import get_budget
from tests.batches.test_pipeline import finished, submit
from tests.conftest import wait_for

pytestmark = pytest.mark.integration


def ledger_total(batch: Batch, kind: str) -> Decimal:
    return LedgerEntry.objects.filter(batch=batch, kind=kind).aggregate(s=Sum("amount"))[
        "s"
    ] or Decimal(0)


def test_reserve_charge_and_release_add_up_with_failures_retries_and_a_cancel(
    live: Any, api: Any, user: Any
) -> None:
    live.emulator.configure(latency=0.3, workers=4)
    created = submit(
        api, ["one [fail:1]", "two", "three [fail:always]", *[f"p{n}" for n in range(12)]]
    )

    def failed_once_and_four_done() -> bool:
        # The cancel must come after "one"'s failed attempt was charged: with 4 GPUs, the other
        # chunk's jobs may be first in RunPod's queue, and four panels can be done before "one"
        # has run at all (it would then be cancelled in the queue, rightly charged nothing).
        images = Batch.objects.get(pk=created["id"]).images
        one_failed = LedgerEntry.objects.filter(
            image__batch_id=created["id"], image__prompt="one [fail:1]", kind="charge", attempt=1
        ).exists()
        return one_failed and images.filter(status="completed").count() >= 4

    wait_for(failed_once_and_four_done, timeout=60)
    api.post(f"/api/v1/batches/{created['id']}/cancel/")
    batch = wait_for(lambda: finished(created["id"]), timeout=60)

    charges = ledger_total(batch, "charge")
    assert ledger_total(batch, "reserve") == charges + ledger_total(batch, "release")
    assert charges == batch.actual_cost == sum(image.cost for image in batch.images.all())
    assert batch.reserved == batch.held == 0
    budget = Budget.objects.get(user=user)
    assert budget.spent == charges
    assert budget.reserved == 0
    # Every attempt that ran is billed once: completed, failed and cancelled ones alike.
    attempts_charged = LedgerEntry.objects.filter(batch=batch, kind="charge").count()
    assert attempts_charged == len(
        set(LedgerEntry.objects.filter(batch=batch, kind="charge").values_list("image", "attempt"))
    )
    assert batch.images.get(prompt="one [fail:1]").cost > 0


def test_a_budget_that_runs_dry_cancels_the_rest_and_never_overspends(
    live: Any, api: Any, user: Any
) -> None:
    # Each attempt holds its maximum cost (its 20 s timeout plus the 5 s overrun margin, 0.00775
    # at the 4090 price) while it runs; at 2 s per image, a few charges leave too little room
    # for the next attempt's hold.
    live.emulator.configure(latency=2.0, workers=4)
    get_budget(user)
    Budget.objects.filter(user=user).update(limit=Decimal("0.0095"))

    created = submit(api, [f"expensive panel {n}" for n in range(10)])
    try:
        batch = wait_for(lambda: finished(created["id"]), timeout=40)
    except AssertionError:
        b = Batch.objects.get(pk=created["id"])
        print(b.status_counts(), b.reserved, b.held, Budget.objects.get(user=user).__dict__)
        print(list(b.images.values_list("status", "attempts", "runpod_job_id", "hold", "error")))
        print(live.worker.log_path)
        raise

    assert batch.status == BatchStatus.PARTIAL
    completed = batch.images.filter(status=ImageStatus.COMPLETED).count()
    cancelled = batch.images.filter(status=ImageStatus.CANCELLED)
    assert completed >= 1
    assert cancelled.count() >= 1
    assert completed + cancelled.count() == 10
    assert all("budget" in image.error for image in cancelled)
    budget = Budget.objects.get(user=user)
    print(f"injected: limit {budget.limit}; spent {budget.spent} on {completed} panels")
    assert budget.spent <= budget.limit
    assert budget.reserved == 0
    assert budget.spent == batch.actual_cost
    assert check_books() == []
