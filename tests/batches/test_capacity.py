"""The in-flight target that follows the endpoint: the control law as a table, and following
/health on real Redis (one reader at a time, a fallback when it fails)."""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import responses

from batches import capacity, limiter
from batches.capacity import Decision, Demand, Health, LawState, Scaling, control_target

CEILING = 10_000
DELAY = 4.0


def health(able: int, *, init: int = 0, queue: int = 0, busy: int | None = None) -> Health:
    running = able if busy is None else busy
    return Health(
        ready=able, running=running, idle=able - running, initializing=init, in_queue=queue,
        in_progress=running,
    )  # fmt: skip


def decide(
    h: Health | None, demand: Demand | None = None, state: LawState | None = None,
    *, ceiling: int = CEILING, delay: float = DELAY, now: float = 1000.0,
    scaling: Scaling | None = None,
) -> Decision:  # fmt: skip
    return control_target(
        h, demand or Demand(), state or LawState(), ceiling=ceiling,
        scaling=scaling or Scaling(value=delay), now=now,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("able", "init", "expected"),
    [
        (1, 0, 2),  # 1 GPU: one running, one queued behind it
        (4, 0, 5),
        (20, 0, 25),  # a quarter of the GPUs' worth queued
        (1000, 0, 1250),
        (0, 0, 1),  # scaled to zero: one job makes RunPod start a worker
        (2, 18, 21),  # initializing workers take the jobs queued for them
    ],
)
def test_with_no_backlog_the_target_is_the_workers_and_a_short_feed(
    able: int, init: int, expected: int
) -> None:
    demand = Demand(in_flight=able)
    assert decide(health(able, init=init), demand).target == expected


def test_the_target_never_exceeds_the_ceiling() -> None:
    assert decide(health(1000), Demand(in_flight=100), ceiling=300).target == 300


def test_slots_whose_jobs_are_not_at_runpod_yet_are_added_so_runpod_stays_fed() -> None:
    # comicgen holds 30 slots, RunPod reports 20 jobs: 10 are on their way.
    assert decide(health(20, queue=0), Demand(in_flight=30)).target == 35
    # However slow comicgen's side, at most twice workers + feed.
    assert decide(health(20, queue=0), Demand(in_flight=500)).target == 50


def test_jobs_other_clients_hold_at_the_endpoint_are_left_their_workers() -> None:
    # 20 GPUs; 20 jobs at RunPod, of which comicgen holds 5.
    assert decide(health(20, queue=0), Demand(in_flight=5)).target == 10


def test_when_health_fails_the_last_target_stands() -> None:
    assert decide(None, state=LawState(last_target=12)).target == 12


def test_when_health_never_answered_the_ceiling_is_the_target() -> None:
    assert decide(None, ceiling=40).target == 40


def test_a_backlog_shows_the_autoscaler_jobs_that_wait_longer_than_its_delay() -> None:
    # 2 GPUs finishing 4 jobs a second: 4 x (4 s + 1 s) = 20 jobs queued.
    demand = Demand(in_flight=2, waiting_other=5, finish_rate=4.0)
    decision = decide(health(2), demand)
    assert decision.target == 22
    assert decision.state.showing_since == 1000.0


def test_high_work_waiting_stops_the_showing() -> None:
    demand = Demand(in_flight=2, waiting_other=5, waiting_high=1, finish_rate=4.0)
    assert decide(health(2), demand).target == 3


def test_an_endpoint_that_stopped_growing_is_left_with_the_feed_for_a_while() -> None:
    demand = Demand(in_flight=22, waiting_other=5, finish_rate=4.0)
    first = decide(health(2, queue=20), demand, now=1000.0)
    stalled = decide(health(2, queue=20), demand, first.state, now=1012.0)
    assert stalled.target == 3
    later = decide(health(2, queue=20), demand, stalled.state, now=1030.0)
    assert later.target == 3  # still held at the feed
    again = decide(health(2, queue=20), demand, later.state, now=1100.0)
    assert again.target == 22  # tried again after AT_MAX_HOLD_SECONDS


def test_an_endpoint_that_grows_keeps_being_shown_the_demand() -> None:
    demand = Demand(in_flight=22, waiting_other=5, finish_rate=4.0)
    first = decide(health(2, queue=20), demand, now=1000.0)
    growing = decide(health(2, init=10, queue=20), demand, first.state, now=1008.0)
    still = decide(health(12, queue=20), demand, growing.state, now=1016.0)
    assert still.target > 12 + 3
    assert still.state.showing_since == 1008.0


def test_no_scaler_delay_means_no_showing() -> None:
    demand = Demand(in_flight=2, waiting_other=5, finish_rate=4.0)
    assert decide(health(2), demand, delay=0).target == 3


def test_an_endpoint_at_its_known_maximum_is_shown_nothing() -> None:
    demand = Demand(in_flight=4, waiting_other=50, finish_rate=4.0)
    fixed = Scaling(max_workers=4, value=4.0)
    assert decide(health(4), demand, scaling=fixed).target == 5


def test_below_its_known_maximum_the_demand_is_shown_for_as_long_as_it_takes() -> None:
    demand = Demand(in_flight=22, waiting_other=50, finish_rate=4.0)
    growing = Scaling(max_workers=20, value=4.0)
    first = decide(health(2, queue=20), demand, scaling=growing, now=1000.0)
    later = decide(health(2, queue=20), demand, first.state, scaling=growing, now=1100.0)
    assert (first.target, later.target) == (22, 22)


def test_a_request_count_scaler_is_shown_enough_jobs_to_reach_the_maximum() -> None:
    # RunPod wants ceil((in queue + in progress) / 2) workers: 20 workers need 40 jobs.
    demand = Demand(in_flight=2, waiting_other=50)
    scaling = Scaling(max_workers=20, scaler="REQUEST_COUNT", value=2)
    assert decide(health(2), demand, scaling=scaling).target == 40


def test_runpods_endpoint_settings_are_read() -> None:
    body = {"id": "x", "workersMax": 20, "workersMin": 2, "scalerType": "QUEUE_DELAY",
            "scalerValue": 4}  # fmt: skip
    assert Scaling.from_json(body) == Scaling(20, "QUEUE_DELAY", 4.0)
    with pytest.raises(ValueError, match="scalerType"):
        Scaling.from_json({**body, "scalerType": "GUESS"})


def test_health_is_read_from_runpods_shape() -> None:
    body = {
        "jobs": {"completed": 3, "failed": 0, "inProgress": 2, "inQueue": 1, "retried": 0},
        "workers": {"idle": 1, "initializing": 4, "ready": 3, "running": 2, "throttled": 0,
                    "unhealthy": 0},
    }  # fmt: skip
    assert Health.from_json(body) == Health(3, 2, 1, 4, 1, 2)
    with pytest.raises(ValueError, match="idle"):
        Health.from_json({"jobs": {}, "workers": {"idle": "x"}})


# --- following /health on real Redis -------------------------------------------------------------


@pytest.fixture
def endpoint(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    settings.RUNPOD_BASE_URL = "https://runpod.test/v2"
    # One /health reading per test unless the test asks for more. With the product's fraction of
    # a second between readings, a slow machine read /health again between two acquires, saw the
    # slots already granted as jobs on their way to RunPod, and raised the target mid-test.
    monkeypatch.setattr(capacity, "LOCAL_CHECK_SECONDS", 600.0)
    monkeypatch.setattr(capacity, "REFRESH_SECONDS", 600.0)
    settings.RUNPOD_MAX_IN_FLIGHT = 1000
    capacity._next_check.clear()
    yield f"ep-{uuid.uuid4().hex[:8]}"
    capacity._next_check.clear()


def health_body(ready: int) -> dict[str, Any]:
    return {
        "jobs": {"inQueue": 0, "inProgress": 0},
        "workers": {"idle": ready, "running": 0, "ready": ready, "initializing": 0},
    }


@pytest.mark.django_db
@responses.activate
def test_one_process_at_a_time_reads_health_and_all_share_its_target(endpoint: str) -> None:
    url = re.compile(rf"https://runpod\.test/v2/{endpoint}/health")
    health_reads = responses.get(url, json=health_body(8))
    for _ in range(5):  # five processes, each at its own first check
        capacity._next_check.clear()
        capacity.follow(endpoint)
    assert health_reads.call_count == 1
    assert limiter.snapshot(endpoint)["target"] == 10


@pytest.mark.django_db
@responses.activate
def test_every_acquire_obeys_the_target_health_gives(endpoint: str) -> None:
    responses.get(re.compile(r".*/health"), json=health_body(1))
    granted = [limiter.acquire_slots(endpoint, [n], "normal", 1, "w") == 1 for n in range(4)]
    assert granted == [True, True, False, False]  # 1 GPU + 1 queued


@pytest.mark.django_db
@responses.activate
def test_the_endpoint_settings_come_from_runpods_rest_api_and_are_cached(endpoint: str) -> None:
    body = {"workersMax": 7, "scalerType": "REQUEST_COUNT", "scalerValue": 1}
    settings_reads = responses.get(f"https://runpod.test/v1/endpoints/{endpoint}", json=body)
    assert capacity.read_scaling(endpoint) == Scaling(7, "REQUEST_COUNT", 1.0)
    assert capacity.read_scaling(endpoint) == Scaling(7, "REQUEST_COUNT", 1.0)
    assert settings_reads.call_count == 1


@pytest.mark.django_db
@responses.activate
def test_unreadable_endpoint_settings_are_assumed(endpoint: str, settings: Any) -> None:
    settings.RUNPOD_SCALER_QUEUE_DELAY = 2.5
    responses.get(re.compile(r".*/v1/endpoints/.*"), status=403)
    assert capacity.read_scaling(endpoint) == Scaling(None, "QUEUE_DELAY", 2.5)


@pytest.mark.django_db
@responses.activate
def test_a_failing_health_keeps_the_last_target(endpoint: str) -> None:
    responses.get(re.compile(r".*/health"), json=health_body(4))
    first = capacity.refresh(endpoint)
    responses.replace(responses.GET, re.compile(r".*/health"), status=500)
    second = capacity.refresh(endpoint)
    assert (first.target, second.target) == (5, 5)
    assert limiter.snapshot(endpoint)["target"] == 5


@pytest.mark.django_db
@responses.activate
def test_with_no_health_ever_the_ceiling_applies(endpoint: str, settings: Any) -> None:
    settings.RUNPOD_MAX_IN_FLIGHT = 3
    responses.get(re.compile(r".*/health"), body=requests.ConnectionError("down"))
    assert capacity.refresh(endpoint).target == 3


def test_the_law_state_survives_a_round_trip_through_json() -> None:
    state = LawState(last_target=5, showing_since=1.5, workers_when_showing=2, finish_rate=3.0)
    import json

    assert capacity._load_state(json.dumps(dataclasses.asdict(state))) == state
    assert capacity._load_state(b"garbage") == LawState()
