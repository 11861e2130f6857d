"""The monitor's figures (monitoring/queries.py) on rows in known states."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
import responses
from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext

from batches.models import BatchStatus, Priority
from monitoring import queries
from tests.factories import UserFactory
from tests.monitoring.conftest import HEALTH, charge, make_batch

pytestmark = pytest.mark.django_db

S, R, P, T, C, F, X = (
    "submitted",
    "running",
    "pending",
    "retrying",
    "completed",
    "failed",
    "cancelled",
)


def test_in_flight_groups_unfinished_images_by_endpoint_priority_and_user() -> None:
    mara, jon = UserFactory(username="mara"), UserFactory(username="jon")
    make_batch(mara, [S, S, R, P, T, C, F])
    make_batch(mara, [R], priority=Priority.HIGH)
    make_batch(jon, [S, P, P], endpoint_id="ep-flux")
    make_batch(jon, [C, C, X], status=BatchStatus.COMPLETED)  # finished: not in flight

    rows = queries.in_flight()

    assert [(r.endpoint, r.priority, r.username) for r in rows] == [
        ("ep-sdxl", "high", "mara"),  # high first
        ("ep-sdxl", "normal", "mara"),  # then the most in flight
        ("ep-flux", "normal", "jon"),
    ]
    high, mara_normal, jon_normal = rows
    assert (high.submitted, high.running, high.waiting, high.in_flight) == (0, 1, 0, 1)
    assert (mara_normal.submitted, mara_normal.running, mara_normal.waiting) == (2, 1, 2)
    assert mara_normal.in_flight == 3
    assert (jon_normal.submitted, jon_normal.running, jon_normal.waiting) == (1, 0, 2)


def test_in_flight_is_empty_when_everything_finished() -> None:
    make_batch(UserFactory(), [C, F, X], status=BatchStatus.PARTIAL)

    assert queries.in_flight() == []


def test_images_by_status_counts_every_status_with_zeros() -> None:
    make_batch(UserFactory(), [S, S, R, C, C, C, F])

    counts = queries.images_by_status()

    assert counts == {P: 0, S: 2, R: 1, T: 0, C: 3, F: 1, X: 0}


def test_attempts_per_minute_tells_failed_attempts_from_successes_and_cancels(now: Any) -> None:
    batch = make_batch(UserFactory(), [C, T, F, X, C])
    completed, retrying, failed, cancelled, clean = batch.images.order_by("index")
    for image, attempts in ((completed, 2), (retrying, 1), (failed, 3), (cancelled, 1), (clean, 1)):
        image.attempts = attempts
        image.save(update_fields=["attempts"])
    minute = dt.timedelta(minutes=1)
    # Two minutes ago: the first attempt of `completed` failed, `failed` failed twice.
    charge(completed, 1, now - 2 * minute)
    charge(failed, 1, now - 2 * minute)
    charge(failed, 2, now - 2 * minute)
    # This minute: `completed` succeeded on its 2nd, `failed` gave up on its 3rd, `retrying`
    # failed its 1st, the cancel charged `cancelled`, `clean` succeeded.
    charge(completed, 2, now - dt.timedelta(seconds=5))
    charge(failed, 3, now - dt.timedelta(seconds=5))
    charge(retrying, 1, now - dt.timedelta(seconds=5))
    charge(cancelled, 1, now - dt.timedelta(seconds=5))
    charge(clean, 1, now - dt.timedelta(seconds=5))
    charge(clean, 9, now - 20 * minute, runpod_job_id="old")  # before the window

    minutes = queries.attempts_per_minute(now=now)

    assert len(minutes) == 15
    assert minutes[-1].minute == now.replace(second=0)
    assert minutes[0].minute == now.replace(second=0) - 14 * minute
    this, two_ago = minutes[-1], minutes[-3]
    assert (this.attempts, this.succeeded, this.failed, this.cancelled) == (5, 2, 2, 1)
    assert (two_ago.attempts, two_ago.succeeded, two_ago.failed, two_ago.cancelled) == (3, 0, 3, 0)
    assert sum(m.attempts for m in minutes) == 8  # the one 20 minutes ago is left out


def test_charges_per_hour_sums_the_ledger_by_hour_and_currency(now: Any) -> None:
    batch = make_batch(UserFactory(), [C, C, C])
    first, second, third = batch.images.order_by("index")
    hour = dt.timedelta(hours=1)
    charge(first, 1, now, "0.250000")
    charge(second, 1, now - dt.timedelta(minutes=1), "0.125000")
    charge(third, 1, now - 3 * hour, "1.000000")
    charge(third, 2, now - 30 * hour, "9.000000")  # before the window

    hours = queries.charges_per_hour(now=now)

    assert len(hours) == 24
    this_hour = now.replace(minute=0, second=0)
    assert hours[-1].hour == this_hour
    current = hours[-1]
    budget_currency = first.batch.user.budget.currency
    assert current.charges == 2
    assert current.amounts == {budget_currency: Decimal("0.375")}
    three_ago = hours[-4]
    assert (three_ago.hour, three_ago.charges, three_ago.amount) == (
        this_hour - 3 * hour,
        1,
        Decimal("1"),
    )
    assert sum(h.charges for h in hours) == 3


def test_recent_errors_are_the_newest_failed_attempts_with_their_reason(now: Any) -> None:
    batch = make_batch(UserFactory(username="ink"), [T, C, X])
    retrying, completed, cancelled = batch.images.order_by("index")
    retrying.attempts, retrying.error = 2, "RunPod job ended FAILED: CUDA out of memory"
    retrying.save(update_fields=["attempts", "error"])
    completed.attempts = 2
    completed.save(update_fields=["attempts"])
    cancelled.attempts, cancelled.error = 1, "Cancelled by the user."
    cancelled.save(update_fields=["attempts", "error"])
    charge(retrying, 1, now - dt.timedelta(minutes=3))
    charge(retrying, 2, now - dt.timedelta(minutes=1))
    charge(completed, 1, now - dt.timedelta(minutes=2))  # failed, then completed on its 2nd
    charge(completed, 2, now - dt.timedelta(seconds=30))  # the success: not an error
    charge(cancelled, 1, now - dt.timedelta(seconds=10))  # a cancel: not an error

    with CaptureQueriesContext(connection) as captured:
        errors = queries.recent_errors()
        details = [(e.image.index, e.attempt, e.image.error, e.batch.user.username) for e in errors]

    assert details == [
        (0, 2, "RunPod job ended FAILED: CUDA out of memory", "ink"),
        (1, 1, "", "ink"),
        (0, 1, "RunPod job ended FAILED: CUDA out of memory", "ink"),
    ]
    assert len(captured) == 1  # image, batch and owner come with the rows


@responses.activate
def test_runpod_health_is_read_once_per_period_for_every_caller() -> None:
    url = f"{settings.RUNPOD_BASE_URL}/{settings.RUNPOD_ENDPOINT_ID}/health"
    responses.get(url, json=HEALTH)

    first = queries.runpod_health()
    second = queries.runpod_health()

    assert first == second
    assert first[0]["endpoint"] == settings.RUNPOD_ENDPOINT_ID
    assert first[0]["error"] == ""
    assert first[0]["jobs"]["inQueue"] == 5
    assert first[0]["workers"]["running"] == 2
    assert len(responses.calls) == 1  # the second came from the cache
    cache.clear()
    queries.runpod_health()
    assert len(responses.calls) == 2


@responses.activate
def test_an_unreachable_runpod_is_reported_without_its_key_and_cached_too() -> None:
    url = f"{settings.RUNPOD_BASE_URL}/{settings.RUNPOD_ENDPOINT_ID}/health"
    responses.get(url, status=401, body=f"bad key {settings.RUNPOD_API_KEY}")

    health = queries.runpod_health()
    queries.runpod_health()

    assert health[0]["error"]
    assert "401" in health[0]["error"]
    assert settings.RUNPOD_API_KEY not in health[0]["error"]
    assert "jobs" not in health[0]
    assert len(responses.calls) == 1


def test_every_endpoint_of_runpod_endpoints_is_watched(settings: Any) -> None:
    settings.RUNPOD_ENDPOINT_ID = "ep-main"
    settings.RUNPOD_ENDPOINTS = {"sdxl": "ep-main", "flux": "ep-flux"}

    assert queries.runpod_endpoints() == ["ep-main", "ep-flux"]
