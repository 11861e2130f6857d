"""The shared in-flight limit on real Redis: it counts jobs across workers, and a Redis that
restarted empty counts again, from PostgreSQL, the jobs that are still running."""

from __future__ import annotations

from typing import Any

import pytest

from batches import flow
from batches.models import ImageStatus
from tests.budgets.test_budget_services import make_batch


@pytest.mark.django_db
def test_the_limit_holds_across_callers(user: Any, settings: Any) -> None:
    settings.RUNPOD_MAX_IN_FLIGHT = 2
    assert flow.acquire_slot(1, "normal", "a")
    assert flow.acquire_slot(2, "normal", "b")
    assert not flow.acquire_slot(3, "normal", "c")
    flow.release_slot(1)
    assert flow.acquire_slot(3, "normal", "c")


@pytest.mark.django_db
def test_after_redis_loses_its_keys_jobs_still_running_are_counted_again(
    user: Any, settings: Any
) -> None:
    settings.RUNPOD_MAX_IN_FLIGHT = 2
    batch = make_batch(user, images=3)
    running, submitted, waiting = batch.images.order_by("index")
    running.status, submitted.status = ImageStatus.RUNNING, ImageStatus.SUBMITTED
    running.save(update_fields=["status"])
    submitted.save(update_fields=["status"])
    assert flow.acquire_slot(running.pk, "normal", "a")
    assert flow.acquire_slot(submitted.pk, "normal", "a")

    flow.get_redis().flushdb()  # as a Redis restarted with no data

    assert not flow.acquire_slot(waiting.pk, "normal", "b")
    flow.release_slot(running.pk)  # its job ended
    assert flow.acquire_slot(waiting.pk, "normal", "b")


@pytest.mark.django_db
def test_a_rebuild_happens_once_however_many_callers_race_for_it(user: Any) -> None:
    flow.get_redis().flushdb()
    assert flow.rebuild_slots() is True
    assert flow.rebuild_slots() is False
