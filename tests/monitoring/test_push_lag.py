"""Push lag: recorded where image events are sent (batches/events.py), read by /metrics."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import redis
from django.utils import timezone

from batches import events
from monitoring import pushlag
from tests.factories import UserFactory
from tests.monitoring.conftest import make_batch

pytestmark = pytest.mark.django_db


def test_the_event_of_a_finished_panel_records_how_late_it_went_out(
    django_capture_on_commit_callbacks: Any,
) -> None:
    batch = make_batch(UserFactory(), ["completed", "running"])
    finished, running = batch.images.order_by("index")
    finished.finished_at = timezone.now() - dt.timedelta(seconds=0.2)
    finished.save(update_fields=["finished_at"])

    with django_capture_on_commit_callbacks(execute=True):
        events.push_image_updated(finished.pk)
        events.push_image_updated(running.pk)  # not finished: no lag to measure
    events.flush_events()

    histogram = pushlag.read()
    assert histogram["count"] == 1
    assert 0.2 <= histogram["sum"] < 10
    buckets = dict(histogram["buckets"])
    assert buckets["0.1"] == 0
    assert buckets["+Inf"] == 1


def test_a_redis_outage_never_breaks_sending_and_pauses_recording(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = []

    def unreachable() -> redis.Redis:
        calls.append(1)
        return redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)

    monkeypatch.setattr(pushlag, "get_redis", unreachable)
    monkeypatch.setattr(pushlag, "_skip_until", 0.0)

    pushlag.observe(0.01)  # fails quietly
    pushlag.observe(0.01)  # skipped: Redis was just seen down

    assert len(calls) == 1
    assert pushlag.read()["count"] == 0  # unreadable reads as empty


def test_quantiles_are_bucket_bounds() -> None:
    for seconds in (0.001, 0.002, 0.003, 0.7):
        pushlag.observe(seconds)

    histogram = pushlag.read()

    assert pushlag.quantile(histogram, 0.5) == 0.005
    assert pushlag.quantile(histogram, 0.95) == 1.0
    assert pushlag.quantile({"count": 0, "buckets": []}, 0.5) is None


def test_the_page_names_a_lag_past_the_last_bucket_plainly() -> None:
    from monitoring.views import _lag_label

    pushlag.observe(75.0)

    assert _lag_label(pushlag.quantile(pushlag.read(), 0.95)) == "> 60 s"
    assert _lag_label(0.025) == "≤ 25 ms"
    assert _lag_label(2.5) == "≤ 2.5 s"
    assert _lag_label(None) == "–"


def test_many_lags_recorded_at_once_land_in_their_own_buckets() -> None:
    pushlag.observe_many([0.001, 0.004, 0.3, float("nan"), -1.0])

    histogram = pushlag.read()
    buckets = dict(histogram["buckets"])
    assert histogram["count"] == 4  # the NaN is not a lag; the negative one is clock skew
    assert buckets["0.005"] == 3
    assert buckets["0.25"] == 3
    assert buckets["0.5"] == 4
    assert histogram["sum"] == pytest.approx(0.305)
