"""Holds, charges and releases racing from many threads on one budget: no deadlock, no
overspend, and the books balance afterwards. Real PostgreSQL, one connection per thread."""

from __future__ import annotations

import random
import threading
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, transaction
from django.db.models import F

from batches.models import Batch, ImageJob, ImageStatus
from budgets import services
from budgets.books import check_books
from budgets.models import Budget
from tests.budgets.test_budget_services import make_batch
from tests.factories import UserFactory

D = Decimal
HOLD = D("0.004")


def run_attempts(
    batch_id: int, image_ids: list[int], seed: int, errors: list[BaseException]
) -> None:
    """What chunk loops do to money: hold an attempt's maximum, then charge what it ran (less
    than the hold, or more: an overrun), or give the hold back (a /run refused)."""
    rng = random.Random(seed)
    try:
        for image_id in image_ids:
            for _attempt in range(3):
                if not services.hold_for_attempt(batch_id, HOLD):
                    break
                ImageJob.objects.filter(pk=image_id).update(
                    status=ImageStatus.SUBMITTED, attempts=F("attempts") + 1, hold=HOLD
                )
                image = ImageJob.objects.get(pk=image_id)
                outcome = rng.random()
                if outcome < 0.2:  # refused before it ran: the hold comes back
                    with transaction.atomic():
                        ImageJob.objects.filter(pk=image_id).update(
                            status=ImageStatus.RETRYING, hold=0
                        )
                        services.release_hold(batch_id, HOLD)
                    continue
                cost = HOLD + D("0.0005") if outcome > 0.9 else D("0.001")  # 10 % overrun
                with transaction.atomic():
                    ImageJob.objects.filter(pk=image_id).update(status=ImageStatus.RETRYING, hold=0)
                    job_id = f"job-{image_id}-{image.attempts}"
                    assert services.charge_attempt(image, image.attempts, cost, HOLD, job_id=job_id)
            ImageJob.objects.filter(pk=image_id).update(status=ImageStatus.COMPLETED)
    except BaseException as error:  # reported to the test's thread
        errors.append(error)
    finally:
        connection.close()


@pytest.mark.django_db(transaction=True)
def test_holds_charges_and_releases_racing_on_one_budget_never_overspend(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    user: Any = UserFactory()
    budget = services.get_budget(user)
    Budget.objects.filter(pk=budget.pk).update(limit=D("0.07"))
    batches = [make_batch(user, images=6) for _ in range(4)]
    for batch in batches:
        services.reserve_for_batch(batch, D("0.012"))
    errors: list[BaseException] = []
    threads = []
    for number, batch in enumerate(batches):
        image_ids = list(batch.images.values_list("pk", flat=True))
        for half in (image_ids[:3], image_ids[3:]):
            threads.append(
                threading.Thread(target=run_attempts, args=(batch.pk, half, number, errors))
            )

    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    for batch in batches:
        Batch.objects.filter(pk=batch.pk).update(status="completed")
        services.release_batch(batch, "done")
    budget.refresh_from_db()
    print(f"8 threads, 4 batches: spent {budget.spent} of {budget.limit}")
    assert budget.spent > 0
    assert budget.spent <= budget.limit
    assert budget.reserved == 0
    assert check_books([user.pk]) == []  # its own books: the session may hold others
