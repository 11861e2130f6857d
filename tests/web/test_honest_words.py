"""What the author pages say matches what happened: cancelled is not finished, a retry names
what it requeues, RunPod's queue is not rendering, and the time left counts retry backoffs."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from batches import eta, fragments
from batches.models import Batch, BatchStatus, ImageStatus

pytestmark = pytest.mark.django_db


def _set(batch: Batch, statuses: dict[int, str], **fields: Any) -> None:
    for index, status in statuses.items():
        batch.images.filter(index=index).update(status=status, **fields)


def _header(client: Client, batch: Batch) -> str:
    html = client.get(f"/batches/{batch.pk}/").content.decode()
    return html[html.index('id="batch-progress"') : html.index('id="panel-grid"')]


def test_a_cancelled_batch_says_how_many_panels_are_done_and_how_many_were_cancelled(
    author_client: Client, user: Any, batch_factory: Any
) -> None:
    batch = batch_factory(user, [f"panel {n}" for n in range(40)])
    _set(batch, dict.fromkeys(range(8), ImageStatus.COMPLETED))
    _set(batch, dict.fromkeys(range(8, 40), ImageStatus.CANCELLED), error="Cancelled by the user.")
    Batch.objects.filter(pk=batch.pk).update(status=BatchStatus.CANCELLED)

    header = _header(author_client, batch)

    assert "8 of 40 panels done, 32 cancelled" in header
    assert "40 of 40" not in header
    assert "Retry 32 cancelled panels" in header
    assert "failed" not in header


def test_the_retry_button_names_failed_and_cancelled_panels(
    author_client: Client, user: Any, batch_factory: Any
) -> None:
    batch = batch_factory(user, ["a", "b", "c", "d", "e"])
    _set(batch, {0: ImageStatus.COMPLETED, 1: ImageStatus.FAILED})
    _set(batch, dict.fromkeys(range(2, 5), ImageStatus.CANCELLED))
    Batch.objects.filter(pk=batch.pk).update(status=BatchStatus.CANCELLED)

    header = _header(author_client, batch)

    assert "1 of 5 panels done, 1 failed, 3 cancelled" in header
    assert "Retry 1 failed and 3 cancelled panels" in header


def test_a_cancelled_tile_is_a_neutral_note_not_a_red_error(
    author_client: Client, user: Any, batch_factory: Any
) -> None:
    batch = batch_factory(user, ["kept", "stopped", "broken"])
    _set(batch, {1: ImageStatus.CANCELLED}, error="Cancelled by the user.")
    _set(batch, {2: ImageStatus.FAILED}, error="gave up after 4 attempts")

    html = author_client.get(f"/batches/{batch.pk}/").content.decode()

    assert '<p class="tile__note">Cancelled by the user.</p>' in html
    assert '<p class="tile__error">gave up after 4 attempts</p>' in html
    assert 'class="tile__error">Cancelled' not in html


def test_jobs_queued_at_runpod_are_not_counted_as_rendering(
    author_client: Client, user: Any, batch_factory: Any
) -> None:
    batch = batch_factory(user, [f"p{n}" for n in range(12)])
    _set(batch, dict.fromkeys(range(2), ImageStatus.RUNNING), attempts=1)
    _set(batch, dict.fromkeys(range(2, 10), ImageStatus.SUBMITTED), attempts=1)
    _set(batch, {10: ImageStatus.RETRYING}, attempts=1)
    Batch.objects.filter(pk=batch.pk).update(status=BatchStatus.RUNNING)

    html = author_client.get(f"/batches/{batch.pk}/").content.decode()
    dashboard = author_client.get("/").content.decode()

    assert "2 rendering" in html
    assert "8 queued at RunPod" in html
    assert "1 waiting to retry" in html
    assert "1 waiting" in html
    assert "10 rendering" not in html
    assert '<span class="badge badge--submitted">Queued at RunPod</span>' in html
    # The batch runs; only its panels render.
    assert 'data-testid="batch-status">Running</span>' in html
    assert '<span class="badge badge--running">Running</span>' in dashboard
    assert "2 rendering" in dashboard
    assert "8 queued at RunPod" in dashboard


def _started(batch: Batch, seconds_ago: float) -> None:
    Batch.objects.filter(pk=batch.pk).update(
        status=BatchStatus.RUNNING, started_at=timezone.now() - dt.timedelta(seconds=seconds_ago)
    )
    batch.refresh_from_db()


def test_the_eta_waits_for_a_retry_backoff(user: Any, batch_factory: Any) -> None:
    """Nine panels done in 9 s, one waiting out a 40 s backoff: not "about 1 s left"."""
    batch = batch_factory(user, [f"p{n}" for n in range(10)])
    _started(batch, 9)
    _set(batch, dict.fromkeys(range(9), ImageStatus.COMPLETED), execution_ms=2000)
    now = timezone.now()
    _set(batch, {9: ImageStatus.RETRYING}, next_attempt_at=now + dt.timedelta(seconds=40))

    seconds = eta.eta_seconds(batch, batch.status_counts(), now=now)

    assert seconds is not None
    assert seconds >= 40 + 2  # the backoff, then one panel's render time
    assert fragments.humanize_eta(seconds) == "about 42 s left"


def test_the_eta_follows_the_pace_when_nothing_waits_on_a_backoff(
    user: Any, batch_factory: Any
) -> None:
    batch = batch_factory(user, [f"p{n}" for n in range(10)])
    _started(batch, 50)
    _set(batch, dict.fromkeys(range(5), ImageStatus.COMPLETED), execution_ms=2000)
    _set(batch, dict.fromkeys(range(5, 10), ImageStatus.RUNNING))

    # The clock of the moment _started set, not the test's: a slow machine must not age it.
    now = batch.started_at + dt.timedelta(seconds=50)
    seconds = eta.eta_seconds(batch, batch.status_counts(), now=now)

    assert seconds is not None
    assert 49 <= seconds <= 51  # 10 s a panel so far, five to go


def test_a_waiting_panel_keeps_the_eta_at_one_render_time_at_least(
    user: Any, batch_factory: Any
) -> None:
    """A fast pace (many GPUs) must not promise less than one panel's render time for a panel
    still queued."""
    batch = batch_factory(user, [f"p{n}" for n in range(20)])
    _started(batch, 2)
    _set(batch, dict.fromkeys(range(19), ImageStatus.COMPLETED), execution_ms=6000)
    _set(batch, {19: ImageStatus.SUBMITTED})

    seconds = eta.eta_seconds(batch, batch.status_counts())

    assert seconds is not None
    assert seconds >= 6


def test_the_api_reports_the_same_eta(api: Any, user: Any, batch_factory: Any) -> None:
    batch = batch_factory(user, ["a", "b"])
    _started(batch, 5)
    _set(batch, {0: ImageStatus.COMPLETED}, execution_ms=1000)
    _set(batch, {1: ImageStatus.RETRYING}, next_attempt_at=timezone.now() + dt.timedelta(hours=1))

    data = api.get(f"/api/v1/batches/{batch.pk}/").json()

    assert data["eta_seconds"] > 3500


@pytest.mark.parametrize(
    ("seconds", "words"),
    [(0.4, "a few seconds left"), (9, "a few seconds left"), (42, "about 42 s left"),
     (125, "about 2 min 05 s left"), (4000, "about 1 h 06 min left")],
)  # fmt: skip
def test_short_etas_do_not_promise_a_second(seconds: float, words: str) -> None:
    assert fragments.humanize_eta(seconds) == words
