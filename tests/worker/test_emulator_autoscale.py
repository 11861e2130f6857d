"""The emulator as an autoscaling endpoint: min and max workers, RunPod's queue-delay scaler,
cold starts visible in /health, idle workers retired, all changeable live."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from tests.support.emulator import EmulatorError, EmulatorProcess

SMALL = {"width": 64, "height": 64}
# Long enough that a test reads /health while workers start, short enough for a fast suite.
COLD_START = 1.0
SCALING = {
    "min_workers": 1, "max_workers": 4, "scaler_delay": 0.2, "idle_timeout": 0.6,
    "cold_start": COLD_START, "latency": 0.05,
}  # fmt: skip


@pytest.fixture(scope="module")
def emulator_process() -> Iterator[EmulatorProcess]:
    with EmulatorProcess(render_threads=2, seed=7, **SCALING) as process:
        yield process


@pytest.fixture
def emulator(emulator_process: EmulatorProcess) -> EmulatorProcess:
    emulator_process.reset(restore_config=True)
    wait_for(emulator_process, lambda health: workers_total(health) == 1)
    emulator_process.reset()  # a scale curve of this test's own
    return emulator_process


def health(emulator: EmulatorProcess) -> dict[str, Any]:
    response = requests.get(
        f"{emulator.endpoint_url}/health", headers=emulator.auth_headers, timeout=5
    )
    return dict(response.json()["workers"])


def workers_total(workers: dict[str, Any]) -> int:
    return int(workers["idle"] + workers["running"] + workers["initializing"])


def wait_for(
    emulator: EmulatorProcess, ready: Callable[[dict[str, Any]], bool], timeout: float = 15.0
) -> dict[str, Any]:
    """Poll /health's workers until `ready` holds (the deadline only stops a hung test)."""
    deadline = time.monotonic() + timeout
    while True:
        workers = health(emulator)
        if ready(workers):
            return workers
        if time.monotonic() > deadline:
            raise TimeoutError(f"/health never matched: {workers}")
        time.sleep(0.02)


def run(emulator: EmulatorProcess, prompt: str) -> str:
    response = requests.post(
        f"{emulator.endpoint_url}/run", headers=emulator.auth_headers, timeout=5,
        json={"input": {"prompt": prompt, "seed": 1, **SMALL}},
    )  # fmt: skip
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def scaling(emulator: EmulatorProcess) -> dict[str, Any]:
    return dict(requests.get(f"{emulator.url}/_emulator/scaling", timeout=5).json())


def test_it_starts_with_its_minimum_of_warm_workers(emulator: EmulatorProcess) -> None:
    workers = health(emulator)
    assert (workers["ready"], workers["initializing"]) == (1, 0)
    assert scaling(emulator)["enabled"] is True


def test_jobs_waiting_past_the_delay_add_cold_workers_up_to_the_maximum(
    emulator: EmulatorProcess,
) -> None:
    for n in range(10):
        run(emulator, f"slow one [slow:1.5] {n}")
    # The one warm worker takes a job; the rest wait past the delay: three more workers, as
    # many as the maximum allows, each initializing before it takes a job.
    seen = wait_for(emulator, lambda workers: workers["initializing"] > 0)
    assert workers_total(seen) <= 4
    grown = wait_for(emulator, lambda workers: workers["ready"] == 4)
    assert grown["initializing"] == 0
    history = scaling(emulator)["history"]
    assert max(able + initializing for _, able, initializing in history) == 4
    assert any(initializing == 3 for _, _, initializing in history)


def test_a_new_workers_first_job_waits_for_its_cold_start(emulator: EmulatorProcess) -> None:
    emulator.configure(min_workers=0)
    wait_for(emulator, lambda workers: workers_total(workers) == 0)
    job_id = run(emulator, "from zero")
    wait_for(emulator, lambda workers: workers["initializing"] == 1)
    emulator.wait_until_idle()
    job = requests.get(
        f"{emulator.endpoint_url}/status/{job_id}", headers=emulator.auth_headers, timeout=5
    ).json()
    assert job["status"] == "COMPLETED"
    assert job["delayTime"] >= COLD_START * 1000


def test_idle_workers_stop_down_to_the_minimum(emulator: EmulatorProcess) -> None:
    for n in range(6):
        run(emulator, f"burst [slow:0.5] {n}")
    wait_for(emulator, lambda workers: workers_total(workers) > 1)
    emulator.wait_until_idle()
    settled = wait_for(emulator, lambda workers: workers_total(workers) == 1)
    assert settled["ready"] == 1


def test_limits_change_live_and_nonsense_is_refused(emulator: EmulatorProcess) -> None:
    emulator.configure(min_workers=3)
    wait_for(emulator, lambda workers: workers_total(workers) == 3)
    emulator.configure(min_workers=1, max_workers=2)
    assert emulator.config()["max_workers"] == 2
    with pytest.raises(EmulatorError, match="max_workers"):
        emulator.configure(min_workers=5, max_workers=2)
    with pytest.raises(EmulatorError, match="scaler_delay"):
        emulator.configure(scaler_delay=-1)


def test_the_endpoint_settings_are_served_as_runpods_rest_api_shows_them(
    emulator: EmulatorProcess,
) -> None:
    url = f"{emulator.url}/v1/endpoints/{emulator.endpoint_id}"
    answer = requests.get(url, headers=emulator.auth_headers, timeout=5).json()
    assert answer["workersMin"] == 1
    assert answer["workersMax"] == 4
    assert (answer["scalerType"], answer["scalerValue"]) == ("QUEUE_DELAY", 0.2)
    assert requests.get(url, timeout=5).status_code == 401


def test_a_fixed_pool_never_scales() -> None:
    with EmulatorProcess(workers=2, latency=0.05, scaler_delay=0.1) as fixed:
        for n in range(6):
            run(fixed, f"fixed [slow:0.4] {n}")
        time.sleep(0.5)  # past the delay: an autoscaler would have added workers by now
        assert workers_total(health(fixed)) == 2
        assert scaling(fixed)["enabled"] is False
        settings = requests.get(
            f"{fixed.url}/v1/endpoints/{fixed.endpoint_id}", headers=fixed.auth_headers, timeout=5
        ).json()
        assert (settings["workersMin"], settings["workersMax"]) == (2, 2)
