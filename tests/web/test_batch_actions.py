"""Cancel and retry from the batch page (POST forms calling the services)."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from batches.models import Batch, BatchStatus, ImageStatus
from budgets.services import get_budget

pytestmark = pytest.mark.django_db


def messages_on(client: Client, url: str) -> str:
    return client.get(url).content.decode()


def test_cancel_stops_a_queued_batch_and_releases_its_reservation(
    author_client: Client, user: Any, batch_factory: Any
) -> None:
    batch = batch_factory(user, ["a", "b"])

    response = author_client.post(f"/batches/{batch.pk}/cancel/")

    assert response.status_code == 302
    assert response["Location"] == f"/batches/{batch.pk}/"
    batch.refresh_from_db()
    assert batch.status == BatchStatus.CANCELLED
    assert set(batch.images.values_list("status", flat=True)) == {ImageStatus.CANCELLED}
    assert get_budget(user).reserved == 0
    html = messages_on(author_client, response["Location"])
    assert "2 waiting panels cancelled" in html
    # Cancelled is not failed, and not done: the page says what happened and what a retry does.
    assert "0 of 2 panels done, 2 cancelled" in html
    assert "Retry 2 cancelled panels" in html
    assert "failed" not in html.split('id="panel-grid"')[0].split('id="batch-progress"')[1]


def test_cancelling_a_finished_batch_says_why_not(
    author_client: Client, user: Any, batch_factory: Any
) -> None:
    batch = batch_factory(user, ["a"])
    Batch.objects.filter(pk=batch.pk).update(status=BatchStatus.COMPLETED)

    response = author_client.post(f"/batches/{batch.pk}/cancel/", follow=True)

    assert "The batch is already completed; there is nothing to cancel." in (
        response.content.decode()
    )


def test_retry_requeues_the_failed_panels_only(
    author_client: Client, user: Any, batch_factory: Any
) -> None:
    batch = batch_factory(user, ["good", "bad"])
    batch.images.filter(index=0).update(status=ImageStatus.COMPLETED, attempts=1)
    batch.images.filter(index=1).update(status=ImageStatus.FAILED, attempts=3, error="boom")
    Batch.objects.filter(pk=batch.pk).update(status=BatchStatus.PARTIAL, reserved=0)

    response = author_client.post(f"/batches/{batch.pk}/retry/", follow=True)

    batch.refresh_from_db()
    assert batch.status == BatchStatus.RUNNING
    assert batch.images.get(index=0).status == ImageStatus.COMPLETED
    requeued = batch.images.get(index=1)
    assert (requeued.status, requeued.attempts_this_round, requeued.error) == (
        ImageStatus.PENDING,
        0,
        "",
    )
    assert "1 panel requeued." in response.content.decode()


def test_retrying_a_running_batch_is_refused_with_a_message(
    author_client: Client, user: Any, batch_factory: Any
) -> None:
    batch = batch_factory(user, ["a"])

    response = author_client.post(f"/batches/{batch.pk}/retry/", follow=True)

    assert "The batch is still running; retry it once it has finished." in (
        response.content.decode()
    )


def test_actions_go_back_to_a_local_next_url_only(
    staff_client: Client, user: Any, batch_factory: Any
) -> None:
    batch = batch_factory(user, ["a"])
    admin_url = f"/admin/batches/batch/{batch.pk}/change/"

    local = staff_client.post(f"/batches/{batch.pk}/cancel/", {"next": admin_url})
    offsite = staff_client.post(f"/batches/{batch.pk}/retry/", {"next": "https://evil.example/"})

    assert local["Location"] == admin_url
    assert offsite["Location"] == f"/batches/{batch.pk}/"


def test_actions_are_post_only(author_client: Client, user: Any, batch_factory: Any) -> None:
    batch = batch_factory(user, ["a"])

    assert author_client.get(f"/batches/{batch.pk}/cancel/").status_code == 405
    batch.refresh_from_db()
    assert batch.status == BatchStatus.QUEUED
