"""batches.runpod.RunPodClient against RunPod's HTTP API mocked with ``responses``."""

from __future__ import annotations

import json
import types
from collections.abc import Iterator

import django.conf
import pytest
import requests
import responses
from responses import matchers

from batches import runpod
from batches.runpod import (
    JobNotFound,
    JobStatus,
    PermanentRunPodError,
    RunPodClient,
    TransientRunPodError,
)

BASE = "https://api.runpod.test/v2"
ENDPOINT = "ep123"
KEY = "rp_secret_key_123"
RUN_URL = f"{BASE}/{ENDPOINT}/run"
JOB_ID = "6f1c-job-u1"
STATUS_URL = f"{BASE}/{ENDPOINT}/status/{JOB_ID}"
CANCEL_URL = f"{BASE}/{ENDPOINT}/cancel/{JOB_ID}"


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record in-place retry sleeps instead of sleeping."""
    recorded: list[float] = []
    monkeypatch.setattr(runpod.time, "sleep", recorded.append)
    return recorded


@pytest.fixture
def client() -> Iterator[RunPodClient]:
    with RunPodClient(BASE, ENDPOINT, KEY, status_retries=2) as client:
        yield client


@pytest.fixture
def mocked() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock() as mock:
        yield mock


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"id": JOB_ID, "status": "IN_QUEUE"}, JobStatus(JOB_ID, "IN_QUEUE")),
        (
            {"id": JOB_ID, "status": "IN_PROGRESS", "delayTime": 812, "workerId": "w1"},
            JobStatus(JOB_ID, "IN_PROGRESS", delay_time_ms=812),
        ),
        (
            {
                "id": JOB_ID,
                "status": "COMPLETED",
                "delayTime": 824,
                "executionTime": 3391,
                "output": {"images": ["data:image/png;base64,AAAA"], "seed": 42},
            },
            JobStatus(
                JOB_ID,
                "COMPLETED",
                output={"images": ["data:image/png;base64,AAAA"], "seed": 42},
                delay_time_ms=824,
                execution_time_ms=3391,
            ),
        ),
        (
            {"id": JOB_ID, "status": "FAILED", "error": "CUDA out of memory", "executionTime": 9},
            JobStatus(JOB_ID, "FAILED", error="CUDA out of memory", execution_time_ms=9),
        ),
        ({"id": JOB_ID, "status": "CANCELLED"}, JobStatus(JOB_ID, "CANCELLED")),
        (
            {"id": JOB_ID, "status": "TIMED_OUT", "delayTime": 5, "executionTime": 600000},
            JobStatus(JOB_ID, "TIMED_OUT", delay_time_ms=5, execution_time_ms=600000),
        ),
    ],
)
def test_status_parses_every_runpod_status_shape(
    client: RunPodClient, mocked: responses.RequestsMock, body: dict, expected: JobStatus
) -> None:
    mocked.get(STATUS_URL, json=body)

    job = client.status(JOB_ID)

    assert job == expected
    assert job.is_terminal is (expected.status in runpod.TERMINAL_STATUSES)
    assert job.is_success is (expected.status == runpod.COMPLETED)


def test_a_structured_error_is_kept_as_a_string() -> None:
    job = JobStatus.from_json({"id": "x", "status": "FAILED", "error": {"error_type": "OOM"}})

    assert job.error == "{'error_type': 'OOM'}"


def test_a_nul_in_an_error_is_dropped_postgresql_refuses_it_in_text() -> None:
    job = JobStatus.from_json({"id": "x", "status": "FAILED", "error": "CUDA\x00 error"})

    assert job.error == "CUDA error"


def test_run_posts_input_webhook_and_policy_with_the_bearer_key(
    client: RunPodClient, mocked: responses.RequestsMock
) -> None:
    mocked.post(
        RUN_URL,
        json={"id": JOB_ID, "status": "IN_QUEUE"},
        match=[
            matchers.header_matcher({"Authorization": f"Bearer {KEY}"}),
            matchers.json_params_matcher(
                {
                    "input": {"prompt": "Mara opens the vault", "seed": 42},
                    "webhook": "https://app.test/hooks/runpod/tok",
                    "policy": {"executionTimeout": 120000, "ttl": 3600000},
                }
            ),
        ],
    )

    job = client.run(
        {"prompt": "Mara opens the vault", "seed": 42},
        webhook="https://app.test/hooks/runpod/tok",
        execution_timeout_ms=120_000,
        ttl_ms=3_600_000,
    )

    assert job == JobStatus(JOB_ID, "IN_QUEUE")


def test_run_omits_webhook_and_policy_when_not_given(
    client: RunPodClient, mocked: responses.RequestsMock
) -> None:
    mocked.post(RUN_URL, json={"id": JOB_ID, "status": "IN_QUEUE"})

    client.run({"prompt": "p"})

    assert json.loads(mocked.calls[0].request.body or b"") == {"input": {"prompt": "p"}}


def test_run_is_never_retried_on_a_server_error(
    client: RunPodClient, mocked: responses.RequestsMock, sleeps: list[float]
) -> None:
    mocked.post(RUN_URL, status=500, body="upstream exploded")

    with pytest.raises(TransientRunPodError):
        client.run({"prompt": "p"})

    assert len(mocked.calls) == 1
    assert sleeps == []


def test_run_is_never_retried_on_a_timeout(
    client: RunPodClient, mocked: responses.RequestsMock
) -> None:
    mocked.post(RUN_URL, body=requests.exceptions.ReadTimeout())

    with pytest.raises(TransientRunPodError, match="timed out"):
        client.run({"prompt": "p"})

    assert len(mocked.calls) == 1


def test_a_429_is_transient_and_carries_retry_after(
    client: RunPodClient, mocked: responses.RequestsMock
) -> None:
    mocked.post(RUN_URL, status=429, headers={"Retry-After": "7"}, json={"error": "slow down"})

    with pytest.raises(TransientRunPodError) as caught:
        client.run({"prompt": "p"})

    assert caught.value.retry_after == 7.0


def test_a_retry_after_http_date_is_understood() -> None:
    assert runpod.parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert runpod.parse_retry_after("soon") is None
    assert runpod.parse_retry_after(None) is None


@pytest.mark.parametrize("code", [500, 502, 503, 504])
def test_server_errors_are_transient(
    client: RunPodClient, mocked: responses.RequestsMock, code: int
) -> None:
    mocked.post(RUN_URL, status=code, body="<html>bad gateway</html>")

    with pytest.raises(TransientRunPodError, match=f"HTTP {code}") as caught:
        client.run({"prompt": "p"})

    assert caught.value.retry_after is None


@pytest.mark.parametrize(
    "exception",
    [requests.exceptions.ConnectTimeout(), requests.exceptions.ReadTimeout()],
    ids=["connect", "read"],
)
def test_timeouts_are_transient(
    client: RunPodClient,
    mocked: responses.RequestsMock,
    sleeps: list[float],
    exception: Exception,
) -> None:
    mocked.get(STATUS_URL, body=exception)

    with pytest.raises(TransientRunPodError, match="timed out"):
        client.status(JOB_ID)


def test_a_connection_error_is_transient(
    client: RunPodClient, mocked: responses.RequestsMock
) -> None:
    mocked.get(f"{BASE}/{ENDPOINT}/health", body=requests.exceptions.ConnectionError("refused"))

    with pytest.raises(TransientRunPodError, match="could not connect"):
        client.health()


def test_a_non_json_success_body_is_transient(
    client: RunPodClient, mocked: responses.RequestsMock
) -> None:
    mocked.post(RUN_URL, body="<html>captive portal</html>")

    with pytest.raises(TransientRunPodError, match="not JSON"):
        client.run({"prompt": "p"})


@pytest.mark.parametrize("code", [400, 401, 403, 422])
def test_client_errors_are_permanent(
    client: RunPodClient, mocked: responses.RequestsMock, sleeps: list[float], code: int
) -> None:
    mocked.get(STATUS_URL, status=code, json={"error": "nope"})

    with pytest.raises(PermanentRunPodError) as caught:
        client.status(JOB_ID)

    assert caught.value.status_code == code
    assert not isinstance(caught.value, JobNotFound)
    assert len(mocked.calls) == 1  # a permanent error is not retried, even for /status


def test_a_404_on_status_is_job_not_found(
    client: RunPodClient, mocked: responses.RequestsMock
) -> None:
    mocked.get(STATUS_URL, status=404, json={"error": "request does not exist"})

    with pytest.raises(JobNotFound) as caught:
        client.status(JOB_ID)

    assert caught.value.status_code == 404


def test_a_404_on_cancel_is_job_not_found(
    client: RunPodClient, mocked: responses.RequestsMock
) -> None:
    mocked.post(CANCEL_URL, status=404)

    with pytest.raises(JobNotFound):
        client.cancel(JOB_ID)


def test_a_404_on_run_is_permanent_but_not_job_not_found(
    client: RunPodClient, mocked: responses.RequestsMock
) -> None:
    mocked.post(RUN_URL, status=404, body="no such endpoint")

    with pytest.raises(PermanentRunPodError) as caught:
        client.run({"prompt": "p"})

    assert not isinstance(caught.value, JobNotFound)


def test_status_retries_in_place_then_succeeds(
    client: RunPodClient, mocked: responses.RequestsMock, sleeps: list[float]
) -> None:
    mocked.get(STATUS_URL, status=503)
    mocked.get(STATUS_URL, status=429, headers={"Retry-After": "1"})
    mocked.get(STATUS_URL, json={"id": JOB_ID, "status": "COMPLETED", "output": {"seed": 1}})

    job = client.status(JOB_ID)

    assert job.is_success
    assert len(mocked.calls) == 3
    assert sleeps == [0.25, 1.0]  # backoff, then the server's Retry-After


def test_status_gives_up_after_its_retries(
    client: RunPodClient, mocked: responses.RequestsMock, sleeps: list[float]
) -> None:
    mocked.get(STATUS_URL, status=502)

    with pytest.raises(TransientRunPodError):
        client.status(JOB_ID)

    assert len(mocked.calls) == 3  # the first try and status_retries=2 more
    assert len(sleeps) == 2


def test_an_in_place_retry_never_sleeps_long(
    client: RunPodClient, mocked: responses.RequestsMock, sleeps: list[float]
) -> None:
    mocked.get(STATUS_URL, status=429, headers={"Retry-After": "120"})
    mocked.get(STATUS_URL, json={"id": JOB_ID, "status": "IN_QUEUE"})

    client.status(JOB_ID)

    assert sleeps == [runpod.MAX_IN_PLACE_RETRY_SLEEP]


def test_cancel_posts_and_returns_the_status(
    client: RunPodClient, mocked: responses.RequestsMock
) -> None:
    mocked.post(
        CANCEL_URL,
        json={"id": JOB_ID, "status": "CANCELLED"},
        match=[matchers.header_matcher({"Authorization": f"Bearer {KEY}"})],
    )

    assert client.cancel(JOB_ID).status == runpod.CANCELLED


def test_health_returns_the_endpoint_counters(
    client: RunPodClient, mocked: responses.RequestsMock
) -> None:
    health = {
        "jobs": {"completed": 3, "failed": 1, "inProgress": 2, "inQueue": 5, "retried": 0},
        "workers": {"idle": 1, "running": 2},
    }
    mocked.get(f"{BASE}/{ENDPOINT}/health", json=health)

    assert client.health() == health


def test_errors_never_reveal_the_api_key(
    client: RunPodClient, mocked: responses.RequestsMock
) -> None:
    mocked.post(RUN_URL, status=401, body=f"bad key Bearer {KEY}")

    with pytest.raises(PermanentRunPodError) as caught:
        client.run({"prompt": "p"})

    assert KEY not in str(caught.value)
    assert KEY not in repr(client)


def test_a_garbled_job_object_is_transient(
    client: RunPodClient, mocked: responses.RequestsMock
) -> None:
    mocked.get(STATUS_URL, json={"unexpected": True})

    with pytest.raises(TransientRunPodError, match="unexpected body"):
        client.status(JOB_ID)


def test_the_pool_is_sized_for_a_threaded_worker() -> None:
    client = RunPodClient(BASE, ENDPOINT, KEY)

    adapter = client.session.get_adapter(RUN_URL)

    assert adapter._pool_maxsize == runpod.POOL_SIZE  # type: ignore[attr-defined]
    client.close()


@pytest.fixture
def settings_like(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-in for django.conf.settings, so this file needs no configured Django."""
    fake = types.SimpleNamespace(
        RUNPOD_BASE_URL="http://emulator.test/v2",
        RUNPOD_ENDPOINT_ID="from-settings",
        RUNPOD_API_KEY="k",
    )
    monkeypatch.setattr(django.conf, "settings", fake)


def test_from_settings_reads_django_settings(settings_like: None) -> None:
    client = RunPodClient.from_settings(read_timeout=5)

    assert client.base_url == "http://emulator.test/v2"
    assert client.endpoint_id == "from-settings"
    assert client.timeout == (3.05, 5)


def test_the_environment_s_proxy_and_ca_bundle_are_read_once_at_construction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The session does not look at the environment on every call (trust_env off, for speed),
    so what it would have found there is taken when the client is built."""
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/corporate.pem")

    client = RunPodClient("https://api.runpod.ai/v2", "ep-1", "key")

    assert client.session.trust_env is False
    assert client.session.proxies["https"] == "http://proxy.internal:3128"
    assert client.session.verify == "/etc/ssl/certs/corporate.pem"
