"""Reserve, hold, charge and release on real PostgreSQL, under concurrency."""

from __future__ import annotations

import datetime as dt
import threading
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone
from rest_framework.test import APIClient

from batches.models import Batch, ImageJob
from budgets import services
from budgets.books import check_books
from budgets.models import Budget, LedgerEntry
from tests.factories import UserFactory

D = Decimal


def make_batch(user: Any, images: int = 2) -> Batch:
    batch = Batch.objects.create(user=user, title="t")
    ImageJob.objects.bulk_create(
        ImageJob(
            batch=batch,
            index=i,
            prompt="p",
            seed=1,
            params={"model": "sdxl", "width": 64, "height": 64, "steps": 1, "guidance": 1},
        )
        for i in range(images)
    )
    return batch


@pytest.mark.django_db(transaction=True)
def test_twenty_concurrent_submits_never_reserve_past_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Only reservation is under test: keep the session's Celery worker (started by integration
    # tests) from running these batches and moving their money meanwhile.
    monkeypatch.setattr("batches.services.enqueue_batch", lambda batch, chunks=None: None)
    monkeypatch.setattr("batches.services.enqueue_batch_later", lambda *args: None)
    user = UserFactory()
    budget = services.get_budget(user)
    Budget.objects.filter(pk=budget.pk).update(limit=D("0.05"))
    body = {"title": "t", "images": [{"prompt": f"p{i}"} for i in range(10)]}  # ~0.0115 each
    answers: list[int] = []

    def submit() -> None:
        client = APIClient()
        client.force_authenticate(user)
        try:
            answers.append(client.post("/api/v1/batches/", body, format="json").status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=submit) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    budget.refresh_from_db()
    accepted = answers.count(202)
    assert sorted(set(answers)) == [202, 402]
    assert accepted == Batch.objects.count() >= 1
    reserved = sum(b.reserved for b in Batch.objects.all())
    assert budget.reserved == reserved
    assert budget.spent + budget.reserved <= budget.limit
    assert accepted == int(D("0.05") // Batch.objects.first().estimated_cost)


def batch_holding(user: Any, hold: Decimal) -> tuple[Batch, ImageJob]:
    """A batch reserving 0.01, holding `hold` for attempts of its first image."""
    batch = make_batch(user)
    services.reserve_for_batch(batch, D("0.01"))
    assert services.hold_for_attempt(batch.pk, hold)
    image = batch.images.first()
    assert image is not None
    return batch, image


@pytest.mark.django_db
def test_a_charge_for_one_attempt_happens_once(user: Any) -> None:
    batch, image = batch_holding(user, D("0.004"))

    first = services.charge_attempt(image, 1, D("0.001"), D("0.004"))
    second = services.charge_attempt(image, 1, D("0.001"), D("0.004"))

    assert (first, second) == (True, False)
    budget = Budget.objects.get(user=user)
    batch.refresh_from_db()
    assert budget.spent == D("0.001")
    assert budget.reserved == D("0.009")
    assert batch.actual_cost == D("0.001")
    assert batch.held == 0
    assert LedgerEntry.objects.filter(kind="charge", image=image).count() == 1


@pytest.mark.django_db
def test_two_attempts_of_one_image_charged_together_both_count_to_its_cost(user: Any) -> None:
    batch, image = batch_holding(user, D("0.008"))
    charges = [
        services.Charge(image.pk, attempt, cost, hold=D("0.004"), job_id=f"job-{attempt}")
        for attempt, cost in ((1, D("0.001")), (2, D("0.002")))
    ]

    with transaction.atomic():
        charged = services.charge_attempts(batch.pk, charges)

    assert len(charged) == 2
    image.refresh_from_db()
    batch.refresh_from_db()
    assert image.cost == batch.actual_cost == D("0.003")
    assert check_books() == []


@pytest.mark.django_db
def test_an_extension_makes_room_for_the_next_holds_when_the_budget_has_it(user: Any) -> None:
    """Every extension locks the batch and budget rows: one per pass while a batch fills its
    in-flight slots made every other pass of the batch wait."""
    batch = make_batch(user)
    services.get_budget(user)
    Budget.objects.filter(user=user).update(limit=D("1.000"))
    services.reserve_for_batch(batch, D("0.001"))

    holds = [services.hold_for_attempt(batch.pk, D("0.004")) for _ in range(5)]

    assert holds == [True] * 5
    extensions = LedgerEntry.objects.filter(batch=batch, kind="reserve").exclude(amount=D("0.001"))
    assert list(extensions.values_list("amount", flat=True)) == [D("0.019")]  # 0.003 + 4 x 0.004
    batch.refresh_from_db()
    assert (batch.reserved, batch.held) == (D("0.020"), D("0.020"))


@pytest.mark.django_db
def test_a_hold_extends_the_reservation_only_within_the_limit(user: Any) -> None:
    batch = make_batch(user)
    services.get_budget(user)
    Budget.objects.filter(user=user).update(limit=D("0.010"))
    services.reserve_for_batch(batch, D("0.004"))

    assert services.hold_for_attempt(batch.pk, D("0.003"))
    assert services.hold_for_attempt(batch.pk, D("0.005"))  # extends by 0.004
    assert not services.hold_for_attempt(batch.pk, D("0.003"))  # only 0.002 left

    budget = Budget.objects.get(user=user)
    assert budget.reserved == D("0.008")
    assert budget.spent + budget.reserved <= budget.limit


@pytest.mark.django_db
def test_release_gives_back_what_is_left_once(user: Any) -> None:
    batch = make_batch(user)
    services.reserve_for_batch(batch, D("0.01"))

    assert services.release_batch(batch, "done") == D("0.01")
    assert services.release_batch(batch, "done again") == 0

    assert Budget.objects.get(user=user).reserved == 0
    assert LedgerEntry.objects.filter(batch=batch, kind="release").count() == 1


@pytest.mark.django_db
def test_the_database_refuses_an_overspent_budget(user: Any) -> None:
    from django.db import IntegrityError

    budget = services.get_budget(user)
    with pytest.raises(IntegrityError):
        Budget.objects.filter(pk=budget.pk).update(spent=budget.limit + 1)


@pytest.mark.django_db
def test_a_new_period_starts_with_nothing_spent(user: Any) -> None:
    budget = services.get_budget(user)
    Budget.objects.filter(pk=budget.pk).update(
        spent=D("3"),
        reserved=D("1"),
        period_start=dt.date(2020, 1, 1),
        period_end=dt.date(2020, 2, 1),
    )

    budget = services.get_budget(user)

    assert budget.spent == 0
    assert budget.reserved == D("1")  # still held by running batches
    assert budget.period_start.day == 1
    assert budget.period_end > timezone.now().date()
    assert LedgerEntry.objects.filter(budget=budget, kind="period_reset").count() == 1


@pytest.mark.django_db
def test_a_limit_cannot_go_below_what_is_spent_and_reserved(user: Any) -> None:
    budget = services.get_budget(user)
    Budget.objects.filter(pk=budget.pk).update(spent=D("2"), reserved=D("1"))

    with pytest.raises(ValueError, match="below what is already spent"):
        services.set_limit(budget, D("2.5"))
    services.set_limit(budget, D("3"))

    budget.refresh_from_db()
    assert budget.limit == D("3")


@pytest.mark.django_db
def test_an_overrun_is_charged_in_full_while_the_budget_has_room_and_never_past_the_limit(
    user: Any,
) -> None:
    batch = make_batch(user)
    services.get_budget(user)
    Budget.objects.filter(user=user).update(limit=D("0.010"))
    services.reserve_for_batch(batch, D("0.004"))
    first, second = batch.images.order_by("index")

    # RunPod billed 0.001 past the hold: the budget has room, so all of it is charged.
    assert services.hold_for_attempt(batch.pk, D("0.004"))
    assert services.charge_attempt(first, 1, D("0.005"), D("0.004"), job_id="job-a")
    # 0.002 past the hold with only 0.001 left under the limit: the limit wins, loudly.
    assert services.hold_for_attempt(batch.pk, D("0.004"))
    assert services.charge_attempt(second, 1, D("0.006"), D("0.004"), job_id="job-b")

    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.cost, second.cost) == (D("0.005"), D("0.004"))
    budget = Budget.objects.get(user=user)
    assert budget.spent == D("0.009")
    assert budget.spent + budget.reserved <= budget.limit
    Batch.objects.filter(pk=batch.pk).update(status="completed")
    services.release_batch(batch, "done")
    assert check_books() == []
