"""POST /api/v1/batches/{id}/pause/ and /resume/."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import transaction
from rest_framework.test import APIClient

from batches.models import Batch, BatchStatus
from budgets import pricing
from budgets import services as budget_services
from budgets.books import check_books
from tests.authoring.support import finished, submitted
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_it_pauses_a_queued_batch_and_keeps_its_reservation(api: Any, user: Any) -> None:
    batch = submitted(user, ["one", "two"])
    reserved = batch.reserved

    response = api.post(f"/api/v1/batches/{batch.pk}/pause/")

    assert response.status_code == 202
    assert response.json()["status"] == "paused"
    batch.refresh_from_db()
    assert batch.status == BatchStatus.PAUSED
    assert batch.reserved == reserved > 0
    assert check_books() == []


def test_a_paused_batch_holds_no_new_attempt(user: Any) -> None:
    batch = submitted(user, ["one"])
    Batch.objects.start(batch.pk)
    Batch.objects.filter(pk=batch.pk).update(status=BatchStatus.PAUSED)
    max_cost = pricing.attempt_max_cost(batch.images.get().params)

    with pytest.raises(budget_services.BatchPaused), transaction.atomic():
        budget_services.hold_for_attempt(batch.pk, max_cost)

    batch.refresh_from_db()
    assert batch.held == 0


def test_it_resumes_a_paused_batch_to_running(api: Any, user: Any) -> None:
    batch = submitted(user, ["one"])
    api.post(f"/api/v1/batches/{batch.pk}/pause/")

    response = api.post(f"/api/v1/batches/{batch.pk}/resume/")

    assert response.status_code == 202
    assert response.json()["status"] == "running"
    batch.refresh_from_db()
    assert batch.status == BatchStatus.RUNNING
    assert batch.started_at is not None


def test_pausing_twice_or_a_finished_batch_is_a_conflict(api: Any, user: Any) -> None:
    batch = submitted(user, ["one"])
    api.post(f"/api/v1/batches/{batch.pk}/pause/")
    done = finished(user, ["two"])

    again = api.post(f"/api/v1/batches/{batch.pk}/pause/")
    over = api.post(f"/api/v1/batches/{done.pk}/pause/")

    assert again.status_code == 409
    assert again.json()["code"] == "conflict"
    assert over.status_code == 409
    assert "completed" in over.json()["detail"]


def test_resuming_a_batch_that_is_not_paused_is_a_conflict(api: Any, user: Any) -> None:
    batch = submitted(user, ["one"])

    response = api.post(f"/api/v1/batches/{batch.pk}/resume/")

    assert response.status_code == 409
    assert response.json()["code"] == "conflict"
    assert Batch.objects.get(pk=batch.pk).status == BatchStatus.QUEUED


def test_a_batch_being_cancelled_does_not_pause(api: Any, user: Any) -> None:
    batch = submitted(user, ["one"])
    Batch.objects.start(batch.pk)
    Batch.objects.filter(pk=batch.pk).update(cancel_requested_at="2026-01-01T00:00:00Z")

    response = api.post(f"/api/v1/batches/{batch.pk}/pause/")

    assert response.status_code == 409
    assert "cancelled" in response.json()["detail"]


def test_a_paused_batch_can_be_cancelled(api: Any, user: Any) -> None:
    batch = submitted(user, ["one", "two"])
    api.post(f"/api/v1/batches/{batch.pk}/pause/")

    response = api.post(f"/api/v1/batches/{batch.pk}/cancel/")

    assert response.status_code == 202
    batch.refresh_from_db()
    assert batch.status == BatchStatus.CANCELLED
    assert batch.reserved == 0
    assert check_books() == []


def test_another_users_batch_is_not_found(api: Any) -> None:
    other = submitted(UserFactory(), ["theirs"])

    for action in ("pause", "resume"):
        response = api.post(f"/api/v1/batches/{other.pk}/{action}/")
        assert response.status_code == 404
        assert set(response.json()) == {"code", "detail"}
    assert Batch.objects.get(pk=other.pk).status == BatchStatus.QUEUED


def test_an_anonymous_caller_is_refused(user: Any) -> None:
    batch = submitted(user, ["one"])

    response = APIClient().post(f"/api/v1/batches/{batch.pk}/pause/")

    assert response.status_code == 401
    assert Batch.objects.get(pk=batch.pk).status == BatchStatus.QUEUED
