"""GET /api/v1/health/: every component really checked, up/down for anyone, the details for
staff only, and fast: no Celery ping per request, RunPod asked once per shared report."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
import redis
import responses
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from batches.models import Priority
from comicgen import health
from comicgen.celery import app as celery_app
from tests.conftest import wait_for
from tests.factories import UserFactory
from tests.support.emulator import free_port

URL = "/api/v1/health/"
RUNPOD_HEALTH = {
    "jobs": {"completed": 3, "failed": 0, "inProgress": 0, "inQueue": 0, "retried": 0},
    "workers": {"idle": 2, "running": 0},
}


@pytest.fixture(autouse=True)
def _fresh_report() -> Iterator[None]:
    """Every test computes its own report (a cached one would answer for the last test)."""
    health.forget_report()
    yield
    health.forget_report()


@pytest.fixture
def staff(db: Any) -> APIClient:
    client = APIClient()
    client.force_login(UserFactory(is_staff=True))  # the browser session, as in the admin
    return client


# -- in-process: real PostgreSQL and Redis, RunPod mocked with `responses` -----------------


@pytest.fixture
def heartbeats(monkeypatch: pytest.MonkeyPatch) -> str:
    """A heartbeat namespace of this test's own: the session's real workers (if an integration
    test started them) beat under the real prefix and stay out of these tests."""
    prefix = f"comicgen:heartbeat-test-{uuid.uuid4().hex[:8]}:"
    monkeypatch.setattr(health, "HEARTBEAT_PREFIX", prefix)
    return prefix


@pytest.fixture
def worker(heartbeats: str) -> str:
    """A worker on every queue, as far as the health check can tell."""
    health.publish_heartbeat("unit@test", sorted(Priority.values))
    return "unit@test"


@pytest.fixture
def runpod(settings: Any) -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mocked:
        mocked.get(
            f"{settings.RUNPOD_BASE_URL}/{settings.RUNPOD_ENDPOINT_ID}/health", json=RUNPOD_HEALTH
        )
        yield mocked


@pytest.mark.django_db
def test_anonymous_callers_see_only_up(worker: str, runpod: responses.RequestsMock) -> None:
    response = APIClient().get(URL)

    assert response.status_code == 200
    assert response.json() == {"status": "up"}
    assert "no-cache" in response["Cache-Control"]


@pytest.mark.django_db
def test_an_author_sees_only_up_too(user: Any, worker: str, runpod: responses.RequestsMock) -> None:
    token = Token.objects.create(user=user)

    response = APIClient().get(URL, HTTP_AUTHORIZATION=f"Token {token.key}")

    assert response.json() == {"status": "up"}


@pytest.mark.django_db
def test_staff_see_every_component_by_session_or_token(
    staff: APIClient, worker: str, runpod: responses.RequestsMock
) -> None:
    by_session = staff.get(URL).json()
    token = Token.objects.create(user=UserFactory(is_staff=True))
    by_token = APIClient().get(URL, HTTP_AUTHORIZATION=f"Token {token.key}").json()

    for data in (by_session, by_token):
        assert data["status"] == "up"
        assert data["down"] == []
        assert set(data["components"]) == {"database", "redis", "celery", "runpod"}
        for component in data["components"].values():
            assert component["status"] == "up"
            assert component["latency_ms"] >= 0
        assert [w["name"] for w in data["components"]["celery"]["workers"]] == [worker]
        assert data["components"]["runpod"]["workers"] == RUNPOD_HEALTH["workers"]
        assert data["age_seconds"] >= 0


@pytest.mark.django_db
def test_a_down_runpod_gives_503_and_its_reason_hides_secrets(
    staff: APIClient, worker: str, settings: Any
) -> None:
    settings.RUNPOD_BASE_URL = "https://operator:hunter2-password@runpod.example/v2"
    settings.RUNPOD_API_KEY = "rp_SECRET_KEY_123456"
    with responses.RequestsMock() as mocked:
        mocked.get(
            f"{settings.RUNPOD_BASE_URL}/{settings.RUNPOD_ENDPOINT_ID}/health",
            status=401,
            body="bad key rp_SECRET_KEY_123456 for https://runpod.example/v2/x?api_key=abc",
        )
        anonymous = APIClient().get(URL)
        detailed = staff.get(URL)

    assert (anonymous.status_code, anonymous.json()) == (503, {"status": "down"})
    assert detailed.status_code == 503
    data = detailed.json()
    assert data["down"] == ["runpod"]
    error = data["components"]["runpod"]["error"]
    assert "HTTP 401" in error
    assert "https://runpod.example" in error  # where it failed, for staff
    for secret in ("hunter2", "rp_SECRET_KEY_123456", "api_key", "/health", "operator"):
        assert secret not in detailed.content.decode()


@pytest.mark.django_db
def test_no_worker_heartbeat_means_celery_is_down(
    staff: APIClient, heartbeats: str, runpod: responses.RequestsMock
) -> None:
    response = staff.get(URL)

    assert response.status_code == 503
    celery = response.json()["components"]["celery"]
    assert celery["status"] == "down"
    assert "no Celery worker has sent a heartbeat" in celery["error"]


@pytest.mark.django_db
def test_a_priority_queue_without_a_worker_is_down(
    staff: APIClient, heartbeats: str, runpod: responses.RequestsMock
) -> None:
    health.publish_heartbeat("high-only@test", ["high"])

    response = staff.get(URL)

    assert response.status_code == 503
    celery = response.json()["components"]["celery"]
    assert celery["error"] == "no worker consumes the queue(s): normal, low"
    assert celery["workers"][0]["name"] == "high-only@test"


@pytest.mark.django_db
def test_requests_never_ping_celery_and_share_one_runpod_call(
    staff: APIClient, worker: str, runpod: responses.RequestsMock
) -> None:
    with mock.patch.object(celery_app.control, "ping", return_value=[]) as ping:
        answers = [APIClient().get(URL).status_code for _ in range(15)]
        answers += [staff.get(URL).status_code for _ in range(15)]

    assert answers == [200] * 30
    assert ping.call_count == 0
    assert len(runpod.calls) == 1  # one report, shared by all thirty callers

    health.forget_report()  # as when the report has aged past REPORT_FRESH_SECONDS
    APIClient().get(URL)
    assert len(runpod.calls) == 2


def test_concurrent_callers_share_one_refresh(monkeypatch: pytest.MonkeyPatch) -> None:
    runs = []

    def slow_check() -> dict[str, Any]:
        runs.append(threading.get_ident())
        # Long enough that no caller, however late its thread is scheduled, finds the lock
        # already free again and refreshes a second time.
        time.sleep(2.0)
        return {}

    monkeypatch.setattr(health, "CHECKS", {"slow": slow_check})
    reports: list[dict[str, Any]] = []
    callers = [
        threading.Thread(target=lambda: reports.append(health.health_report())) for _ in range(8)
    ]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(10)

    assert len(runs) == 1
    assert len(reports) == 8
    assert {report["checked_at"] for report in reports} == {reports[0]["checked_at"]}


def test_a_stale_report_is_served_while_another_caller_refreshes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runs = []

    def counted_check() -> dict[str, Any]:
        runs.append(1)
        return {}

    monkeypatch.setattr(health, "CHECKS", {"counted": counted_check})
    stale = health.run_health_checks()
    aged = dt.datetime.now(tz=dt.UTC) - dt.timedelta(seconds=health.REPORT_FRESH_SECONDS + 20)
    stale["checked_at"] = aged.isoformat()
    client = health.get_redis()
    client.set(health.REPORT_KEY, json.dumps(stale))
    runs.clear()

    client.set(health.LOCK_KEY, "someone-else", ex=5)  # a refresh is under way elsewhere
    served = health.health_report()
    assert (served["checked_at"], runs) == (stale["checked_at"], [])

    client.delete(health.LOCK_KEY)  # nobody refreshing: this caller does
    assert health.health_report()["checked_at"] != stale["checked_at"]
    assert runs == [1]


@pytest.mark.django_db
def test_with_redis_down_it_says_so_without_calling_runpod_each_time(
    staff: APIClient, runpod: responses.RequestsMock, settings: Any
) -> None:
    from batches import flow

    flow.get_redis()  # cached on the real Redis first, for the cleanup after this test
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"

    anonymous = [APIClient().get(URL) for _ in range(5)]
    data = staff.get(URL).json()

    assert {(r.status_code, r.json()["status"]) for r in anonymous} == {(503, "down")}
    assert data["down"] == ["redis", "celery"]
    assert "ConnectionError" in data["components"]["redis"]["error"]
    assert len(runpod.calls) == 1  # the process keeps its own report while Redis is away


# -- on the real stack: a real worker's heartbeat, the real emulator ------------------------


def _node_name(process: Any) -> str:
    return process.command[process.command.index("-n") + 1]


def _staff_report(client: APIClient) -> dict[str, Any]:
    health.forget_report()
    return client.get(URL).json()


def _workers_seen(client: APIClient) -> dict[str, list[str]]:
    celery = _staff_report(client)["components"]["celery"]
    return {worker["name"]: worker["queues"] for worker in celery.get("workers", [])}


@pytest.mark.integration
def test_the_heartbeat_comes_from_the_running_workers(live: Any, staff: APIClient) -> None:
    main, high = _node_name(live.worker), _node_name(live.high_worker)

    seen = wait_for(lambda: (w := _workers_seen(staff)) and main in w and high in w and w)

    assert seen[main] == ["high", "low", "normal"]
    assert seen[high] == ["high"]
    # The key outlives a dead worker by at most its TTL; a live one renews it.
    ttl = redis.Redis.from_url(live.env["REDIS_URL"]).ttl(f"{health.HEARTBEAT_PREFIX}{main}")
    assert 0 < ttl <= health.HEARTBEAT_TTL_SECONDS


@pytest.mark.integration
def test_it_answers_200_when_everything_is_up(live: Any, staff: APIClient) -> None:
    wait_for(lambda: _staff_report(staff)["status"] == "up")  # the worker's next beat

    anonymous = APIClient().get(URL)
    data = staff.get(URL).json()

    assert (anonymous.status_code, anonymous.json()) == (200, {"status": "up"})
    assert set(data["components"]) == {"database", "redis", "celery", "runpod"}
    assert data["components"]["celery"]["workers"]
    assert "idle" in data["components"]["runpod"]["workers"]


@pytest.mark.integration
def test_it_answers_503_naming_what_is_down(live: Any, staff: APIClient, settings: Any) -> None:
    wait_for(lambda: _staff_report(staff)["status"] == "up")
    settings.RUNPOD_BASE_URL = f"http://127.0.0.1:{free_port()}/v2"

    data = _staff_report(staff)

    assert data["status"] == "down"
    assert data["down"] == ["runpod"]
    assert data["components"]["runpod"]["status"] == "down"
    assert "could not connect" in data["components"]["runpod"]["error"]
    assert APIClient().get(URL).json() == {"status": "down"}
