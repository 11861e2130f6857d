"""The Batch admin: progress in the list, live progress on the change page, bulk actions."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from batches.models import Batch, BatchStatus, ImageStatus

pytestmark = pytest.mark.django_db


def test_the_list_shows_status_and_progress(
    staff_client: Client, user: Any, batch_factory: Any
) -> None:
    batch = batch_factory(user, ["a", "b", "c"], title="Admin chapter")
    batch.images.filter(index=0).update(status=ImageStatus.COMPLETED)

    html = staff_client.get("/admin/batches/batch/").content.decode()

    assert "Admin chapter" in html
    assert 'class="badge badge--queued"' in html
    assert "1/3" in html
    assert 'class="progress"' in html


def test_the_change_page_shows_the_live_progress_and_tiles(
    staff_client: Client, user: Any, batch_factory: Any
) -> None:
    batch = batch_factory(user, ["first", "second"])
    change_url = f"/admin/batches/batch/{batch.pk}/change/"

    html = staff_client.get(change_url).content.decode()

    assert f'ws-connect="/ws/batches/{batch.pk}/page/?next=' in html
    assert 'id="batch-progress"' in html
    assert html.count('class="tile tile--pending"') == 2
    assert f'<input type="hidden" name="next" value="{change_url}">' in html
    assert "django_htmx/htmx-2.min.js" in html
    # The live section sits before the admin's own form, never nested inside it.
    assert html.index('id="batch-progress"') < html.index('id="batch_form"')


def test_cancel_selected_batches(staff_client: Client, user: Any, batch_factory: Any) -> None:
    running = batch_factory(user, ["a"])
    done = batch_factory(user, ["b"])
    Batch.objects.filter(pk=done.pk).update(status=BatchStatus.COMPLETED)

    response = staff_client.post(
        "/admin/batches/batch/",
        {"action": "cancel_selected", "_selected_action": [running.pk, done.pk]},
        follow=True,
    )

    running.refresh_from_db()
    assert running.status == BatchStatus.CANCELLED
    html = response.content.decode()
    assert "Cancelling 1 batch(es)." in html
    assert f"Already finished, left alone: #{done.pk}." in html


def test_retry_failed_images(staff_client: Client, user: Any, batch_factory: Any) -> None:
    batch = batch_factory(user, ["ok", "bad"])
    batch.images.filter(index=0).update(status=ImageStatus.COMPLETED)
    batch.images.filter(index=1).update(status=ImageStatus.FAILED)
    Batch.objects.filter(pk=batch.pk).update(status=BatchStatus.PARTIAL, reserved=0)

    response = staff_client.post(
        "/admin/batches/batch/",
        {"action": "retry_failed", "_selected_action": [batch.pk]},
        follow=True,
    )

    batch.refresh_from_db()
    assert batch.status == BatchStatus.RUNNING
    assert batch.images.get(index=1).status == ImageStatus.PENDING
    assert "1 image(s) requeued." in response.content.decode()
