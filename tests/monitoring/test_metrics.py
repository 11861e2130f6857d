"""Prometheus's endpoint: `/metrics`."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from prometheus_client.parser import text_string_to_metric_families

from batches.models import Priority
from budgets.services import get_budget
from monitoring import pushlag
from tests.factories import UserFactory
from tests.monitoring.conftest import charge, make_batch

pytestmark = pytest.mark.django_db

REMOTE = {"REMOTE_ADDR": "203.0.113.7"}  # not loopback
TOKEN = "scrape-me-5b1f0c9e"


def samples(response: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics answer, by name and sorted labels."""
    text = response.content.decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture
def token(settings: Any) -> str:
    settings.COMICGEN_METRICS_TOKEN = TOKEN
    return TOKEN


def test_it_exposes_the_queue_work_and_money_in_prometheus_format(
    runpod_health: Any, now: Any, settings: Any
) -> None:
    mara = UserFactory(username="mara")
    batch = make_batch(mara, ["submitted", "running", "pending", "retrying", "completed"])
    make_batch(UserFactory(username="boss"), ["running"], priority=Priority.HIGH)
    make_batch(mara, ["submitted"], endpoint_id="ep-flux")
    completed, retrying = batch.images.get(index=4), batch.images.get(index=3)
    completed.attempts = retrying.attempts = 1
    completed.save(update_fields=["attempts"])
    retrying.save(update_fields=["attempts"])
    charge(completed, 1, now - dt.timedelta(seconds=5), "0.250000")
    charge(retrying, 1, now - dt.timedelta(minutes=3), "0.125000")
    pushlag.observe(0.004)
    pushlag.observe(0.3)

    response = Client().get("/metrics")  # the test client calls from 127.0.0.1

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    got = samples(response)
    endpoint = settings.RUNPOD_ENDPOINT_ID
    currency = get_budget(mara).currency
    expected = {
        ("comicgen_images", (("status", "submitted"),)): 2,
        ("comicgen_images", (("status", "running"),)): 2,
        ("comicgen_images", (("status", "completed"),)): 1,
        ("comicgen_images", (("status", "failed"),)): 0,
        ("comicgen_in_flight", (("endpoint", "ep-sdxl"), ("priority", "normal"))): 2,
        ("comicgen_in_flight", (("endpoint", "ep-sdxl"), ("priority", "high"))): 1,
        ("comicgen_in_flight", (("endpoint", "ep-flux"), ("priority", "normal"))): 1,
        ("comicgen_waiting", (("endpoint", "ep-sdxl"), ("priority", "normal"))): 2,
        ("comicgen_in_flight_by_user", (("user", "mara"),)): 3,
        ("comicgen_in_flight_by_user", (("user", "boss"),)): 1,
        ("comicgen_attempts_recent", (("outcome", "succeeded"), ("window", "15m"))): 1,
        ("comicgen_attempts_recent", (("outcome", "failed"), ("window", "15m"))): 1,
        ("comicgen_attempts_recent", (("outcome", "cancelled"), ("window", "15m"))): 0,
        ("comicgen_attempts_this_minute", (("outcome", "succeeded"),)): 1,
        ("comicgen_attempts_this_minute", (("outcome", "failed"),)): 0,
        ("comicgen_charges_recent", (("currency", currency), ("window", "24h"))): 0.375,
        ("comicgen_charges_recent_count", (("window", "24h"),)): 2,
        ("comicgen_runpod_up", (("endpoint", endpoint),)): 1,
        ("comicgen_runpod_workers", (("endpoint", endpoint), ("state", "running"))): 2,
        ("comicgen_runpod_workers", (("endpoint", endpoint), ("state", "idle"))): 1,
        ("comicgen_runpod_jobs", (("endpoint", endpoint), ("state", "in_queue"))): 5,
        ("comicgen_runpod_jobs", (("endpoint", endpoint), ("state", "in_progress"))): 2,
        ("comicgen_push_lag_seconds_bucket", (("le", "0.005"),)): 1,
        ("comicgen_push_lag_seconds_bucket", (("le", "0.25"),)): 1,
        ("comicgen_push_lag_seconds_bucket", (("le", "0.5"),)): 2,
        ("comicgen_push_lag_seconds_bucket", (("le", "+Inf"),)): 2,
        ("comicgen_push_lag_seconds_count", ()): 2,
    }
    assert {key: got.get(key) for key in expected} == expected
    assert got[("comicgen_push_lag_seconds_sum", ())] == pytest.approx(0.304)
    assert got[("comicgen_charges_recent", (("currency", currency), ("window", "1h")))] == (
        0.375 if now.minute >= 3 else 0.25  # the older charge may fall in the previous hour
    )


def test_a_scrape_costs_four_aggregate_queries_however_much_work_there_is(
    runpod_health: Any, now: Any
) -> None:
    for n in range(5):
        batch = make_batch(UserFactory(), ["running", "completed", "failed"] * 4)
        for image in batch.images.all():
            charge(image, 1, now - dt.timedelta(minutes=n))
    Client().get("/metrics")  # warms RunPod's /health cache

    with CaptureQueriesContext(connection) as captured:
        response = Client().get("/metrics")

    assert response.status_code == 200
    assert len(captured) == 4, [query["sql"] for query in captured]


def test_an_unreachable_runpod_reads_as_down_not_as_an_error(
    runpod_health: Any, settings: Any
) -> None:
    runpod_health.replace(
        "GET", f"{settings.RUNPOD_BASE_URL}/{settings.RUNPOD_ENDPOINT_ID}/health", status=500
    )

    response = Client().get("/metrics")

    assert response.status_code == 200
    assert (
        samples(response)[("comicgen_runpod_up", (("endpoint", settings.RUNPOD_ENDPOINT_ID),))] == 0
    )


def test_without_a_token_a_remote_caller_is_refused(runpod_health: Any) -> None:
    response = Client(**REMOTE).get("/metrics")

    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"
    assert "COMICGEN_METRICS_TOKEN" in response.json()["detail"]
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_with_a_token_the_right_bearer_is_accepted_from_anywhere(
    token: str, runpod_health: Any
) -> None:
    response = Client(**REMOTE).get("/metrics", headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 200
    assert "comicgen_images" in response.content.decode()


def test_with_a_token_a_wrong_bearer_is_refused(token: str, runpod_health: Any) -> None:
    response = Client().get("/metrics", headers={"Authorization": "Bearer not-the-token"})

    assert response.status_code == 403
    assert response.json()["code"] == "bad_metrics_token"


@pytest.mark.parametrize("header", ["Bearer tökén", "Bearer " + "x" * 5000, "Basic Zm9vOmJhcg=="])
def test_odd_credentials_get_a_4xx_not_a_500(token: str, header: str) -> None:
    response = Client().get("/metrics", headers={"Authorization": header})

    assert response.status_code in (401, 403)
    assert response.json()["code"] in ("bad_metrics_token", "not_authenticated")


def test_with_a_token_set_loopback_alone_is_not_enough(token: str) -> None:
    # Behind a reverse proxy on the same host every request comes from loopback.
    response = Client().get("/metrics")

    assert response.status_code == 401


def test_a_staff_session_may_read_it_from_anywhere(token: str, runpod_health: Any) -> None:
    client = Client(**REMOTE)
    client.force_login(UserFactory(username="operator", is_staff=True))

    assert client.get("/metrics").status_code == 200


def test_an_authors_session_is_not_enough(token: str) -> None:
    client = Client(**REMOTE)
    client.force_login(UserFactory(username="mara"))

    assert client.get("/metrics").status_code == 401
