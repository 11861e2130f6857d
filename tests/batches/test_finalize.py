"""finalize_batch: a batch whose images have all ended gets the status they add up to, gives back
what is left of its reservation once, and is announced; one with work left is not touched."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from batches import services
from batches.models import Batch, BatchStatus, ImageJob
from budgets.books import check_books
from budgets.models import LedgerEntry
from budgets.services import get_budget, reserve_for_batch
from tests.factories import make_batch, make_image

pytestmark = pytest.mark.django_db


def reserved_batch(statuses: list[str], **traits: Any) -> Batch:
    """A running batch with one image in each given status and 0.01 reserved for it."""
    batch = make_batch(running=True, **traits)
    for index, status in enumerate(statuses):
        make_image(batch=batch, index=index, **({} if status == "pending" else {status: True}))
    reserve_for_batch(batch, Decimal("0.01"))
    return batch


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        (["completed", "completed"], BatchStatus.COMPLETED),
        (["completed", "failed"], BatchStatus.PARTIAL),
        (["completed", "cancelled"], BatchStatus.PARTIAL),
        (["failed", "failed"], BatchStatus.FAILED),
        (["failed", "cancelled"], BatchStatus.FAILED),
        (["cancelled", "cancelled"], BatchStatus.CANCELLED),
    ],
)
def test_a_batch_whose_images_all_ended_gets_the_status_they_add_up_to(
    statuses: list[str], expected: str
) -> None:
    batch = reserved_batch(statuses)

    assert services.finalize_batch(batch.pk) == expected
    batch.refresh_from_db()
    assert (batch.status, batch.reserved, batch.held) == (expected, 0, 0)
    assert batch.finished_at is not None


def test_a_cancelled_batch_with_some_panels_done_ends_cancelled() -> None:
    batch = reserved_batch(["completed", "cancelled"], cancel_requested_at=None)
    Batch.objects.request_cancel(batch.pk, "Stop.")
    assert services.finalize_batch(batch.pk) == BatchStatus.CANCELLED


def test_its_reservation_goes_back_to_the_budget_once() -> None:
    batch = reserved_batch(["completed"])
    budget = get_budget(batch.user)
    assert budget.reserved == Decimal("0.01")

    services.finalize_batch(batch.pk)
    services.finalize_batch(batch.pk)  # a replayed chord callback

    budget.refresh_from_db()
    assert budget.reserved == 0
    releases = LedgerEntry.objects.filter(batch=batch, kind=LedgerEntry.Kind.RELEASE)
    assert [entry.amount for entry in releases] == [Decimal("0.01")]
    assert check_books() == []


@pytest.mark.parametrize("open_status", ["pending", "on_runpod", "running", "retrying"])
def test_a_batch_with_an_image_still_open_is_left_running(open_status: str) -> None:
    batch = reserved_batch(["completed", open_status])

    assert services.finalize_batch(batch.pk) is None
    batch.refresh_from_db()
    assert batch.status == BatchStatus.RUNNING
    assert batch.reserved == Decimal("0.01")


def test_a_deleted_batch_is_nothing_to_finish() -> None:
    batch = reserved_batch(["completed"])
    batch_id = batch.pk
    ImageJob.objects.filter(batch_id=batch_id).delete()
    batch.delete()
    assert services.finalize_batch(batch_id) is None
