"""One emulator serving several RunPod endpoint ids (one per model), each counted on its own."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.support.emulator import EmulatorProcess
from worker.emulator import ConfigError, EmulatorConfig

FIRST, SECOND = "ep-sdxl", "ep-flux"


@pytest.fixture(scope="module")
def two_endpoints() -> Iterator[EmulatorProcess]:
    with EmulatorProcess(endpoint_id=f"{FIRST},{SECOND}", workers=2, latency=0.05) as process:
        yield process


def call(emulator: EmulatorProcess, method: str, endpoint: str, path: str, **kw: Any) -> Any:
    return requests.request(
        method, f"{emulator.base_url}/{endpoint}/{path}", headers=emulator.auth_headers,
        timeout=10, **kw,
    )  # fmt: skip


def run_and_wait(emulator: EmulatorProcess, endpoint: str, seed: int) -> dict[str, Any]:
    job_input = {"prompt": "a street", "seed": seed, "width": 64, "height": 64}
    job_id = call(emulator, "POST", endpoint, "run", json={"input": job_input}).json()["id"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        job = call(emulator, "GET", endpoint, f"status/{job_id}").json()
        if job["status"] == "COMPLETED":
            return dict(job)
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not complete")


def test_each_endpoint_id_runs_jobs_and_counts_its_own_bill(two_endpoints: Any) -> None:
    two_endpoints.reset()
    first = [run_and_wait(two_endpoints, FIRST, seed) for seed in (1, 2)]
    second = [run_and_wait(two_endpoints, SECOND, 3)]

    stats = two_endpoints.stats()
    endpoints = stats["endpoints"]
    assert endpoints[FIRST]["submitted"] == endpoints[FIRST]["COMPLETED"] == 2
    assert endpoints[SECOND]["submitted"] == endpoints[SECOND]["COMPLETED"] == 1
    assert endpoints[FIRST]["billed_ms"] == sum(job["executionTime"] for job in first)
    assert endpoints[SECOND]["billed_ms"] == second[0]["executionTime"]
    assert endpoints[FIRST]["billed_count"] + endpoints[SECOND]["billed_count"] == 3
    assert stats["billed_ms"] == endpoints[FIRST]["billed_ms"] + endpoints[SECOND]["billed_ms"]


def test_a_job_is_known_only_to_the_endpoint_that_took_it(two_endpoints: Any) -> None:
    job = run_and_wait(two_endpoints, FIRST, 9)

    assert call(two_endpoints, "GET", SECOND, f"status/{job['id']}").status_code == 404
    assert call(two_endpoints, "POST", SECOND, f"cancel/{job['id']}").status_code == 404
    assert call(two_endpoints, "GET", FIRST, f"status/{job['id']}").status_code == 200


def test_an_endpoint_id_it_does_not_serve_is_404(two_endpoints: Any) -> None:
    answer = call(two_endpoints, "POST", "ep-other", "run", json={"input": {"prompt": "p"}})

    assert answer.status_code == 404


def test_endpoint_ids_are_comma_separated_path_segments() -> None:
    assert EmulatorConfig(endpoint_id="a, b").validate().endpoint_ids == ("a", "b")
    with pytest.raises(ConfigError, match="endpoint_id"):
        EmulatorConfig(endpoint_id="a,b/c").validate()
    with pytest.raises(ConfigError, match="endpoint_id"):
        EmulatorConfig(endpoint_id=" , ").validate()


def test_purge_queue_drops_only_its_own_endpoints_queued_jobs(two_endpoints: Any) -> None:
    two_endpoints.reset()
    two_endpoints.configure(workers=0)  # everything stays IN_QUEUE
    try:
        job_input = {"prompt": "a street", "seed": 1, "width": 64, "height": 64}
        mine = call(two_endpoints, "POST", FIRST, "run", json={"input": job_input}).json()["id"]
        theirs = call(two_endpoints, "POST", SECOND, "run", json={"input": job_input}).json()["id"]

        purged = call(two_endpoints, "POST", FIRST, "purge-queue").json()

        assert purged["removed"] == 1
        assert call(two_endpoints, "GET", FIRST, f"status/{mine}").json()["status"] == "CANCELLED"
        assert call(two_endpoints, "GET", SECOND, f"status/{theirs}").json()["status"] == "IN_QUEUE"
        two_endpoints.configure(workers=2)
        assert run_and_wait(two_endpoints, SECOND, 5)["status"] == "COMPLETED"
        deadline = time.monotonic() + 20
        while (
            call(two_endpoints, "GET", SECOND, f"status/{theirs}").json()["status"] != "COMPLETED"
        ):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        two_endpoints.configure(workers=2)
