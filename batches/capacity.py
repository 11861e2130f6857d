"""How many jobs to keep in flight at a RunPod endpoint: follow its /health.

RunPod's queue is first in, first out and knows nothing of comicgen's priorities or users; the
limiter (batches.limiter) is where those apply. So the target keeps RunPod's own queue as short
as keeps the GPUs busy, and no longer, unless RunPod's autoscaler needs to see jobs wait:

    workers   = able to take a job (ready, or idle + running) + initializing
    feed      = max(1, ceil(able / 4))        jobs queued so a GPU that finishes finds its next
                                               job there while ours is on its way
    target    = workers + feed + in transit    so that RunPod itself holds workers + feed jobs

    in transit = comicgen's slots - the jobs RunPod reports (queued + in progress): slots taken
    for a job whose /run is still on its way, or held by a job that ended while its webhook is
    on its way. Counting them keeps RunPod's own count at workers + feed however slow comicgen's
    side is (at most doubling the target); negative, it is jobs other clients hold there, whose
    workers comicgen leaves them.

    while comicgen has normal or low work waiting for a slot, no high work waits and the
    endpoint is below its maximum of workers, the queue also shows RunPod's autoscaler the
    demand it grows on:
      queue-delay scaler (delay D): jobs that wait longer than D, so feed grows to
        ceil(rate x (D + 1)), rate = jobs finished per second;
      request-count scaler (value v): (in queue + in progress) / v reaching the maximum, so
        the target grows to max_workers x v.
    The endpoint's maximum and scaler come from RunPod's REST API (GET /endpoints/<id>, read
    every CONFIG_SECONDS); when it cannot be read, a queue-delay scaler of
    RUNPOD_SCALER_QUEUE_DELAY is assumed, and an endpoint that has not grown for 2D + 3 s of
    showing is taken to be at its maximum for a minute.

    /health failing: the last target /health justified; none yet: the ceiling.
    Always between 1 and RUNPOD_MAX_IN_FLIGHT.

`control_target` is the law as a pure function; `follow` runs it at most every REFRESH_SECONDS
per endpoint, in one process at a time (a Redis key set NX with that expiry is the turn), and
publishes the target in Redis, where every acquire reads it. docs/concurrency.md explains the
trade-offs with measured figures.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import requests
from django.conf import settings

from batches import limiter
from batches.flow import get_redis
from batches.runpod import RunPodClient, RunPodError

logger = logging.getLogger(__name__)

# Jobs queued per GPU able to work: a GPU that finishes starts the next queued job at once, and a
# high job arriving waits behind about a quarter of a job's time.
QUEUE_FRACTION = 0.25
# /health is read at most this often per endpoint, by one process at a time.
REFRESH_SECONDS = 0.5
# A process asks Redis whether it is its turn at most this often per endpoint.
LOCAL_CHECK_SECONDS = 0.2
# Endpoints this process has seen a target for: past the first, acquires do not wait for one.
_seen_target: set[str] = set()
# How long an acquire waits for the first target another process is computing (one /health
# call, HEALTH_TIMEOUT at most) before it falls back to the ceiling.
FIRST_TARGET_WAIT_SECONDS = 2.0
# Showing demand that makes the endpoint grow no more stops after 2 x delay + this grace, and
# is not tried again for AT_MAX_HOLD_SECONDS.
STALL_GRACE_SECONDS = 3.0
AT_MAX_HOLD_SECONDS = 60.0
# How quickly the finish-rate estimate follows a change (weight of the newest sample).
RATE_SMOOTHING = 0.5
HEALTH_TIMEOUT = (1.0, 2.0)
# The endpoint's scaling settings change rarely (by hand, in RunPod's console).
CONFIG_SECONDS = 30
QUEUE_DELAY = "QUEUE_DELAY"
REQUEST_COUNT = "REQUEST_COUNT"


@dataclass(frozen=True)
class Scaling:
    """How the endpoint grows: RunPod's `workersMax`, `scalerType` and `scalerValue`.
    `max_workers` None: not known (the law then learns when the endpoint stops growing)."""

    max_workers: int | None = None
    scaler: str = QUEUE_DELAY
    value: float = 4.0

    @classmethod
    def from_json(cls, data: Any) -> Scaling:
        """Read RunPod's endpoint object; ValueError when it lacks the scaling fields."""
        if not isinstance(data, dict):
            raise ValueError("not an object")
        maximum, scaler, value = (
            data.get("workersMax"),
            data.get("scalerType"),
            data.get("scalerValue"),
        )
        if isinstance(maximum, bool) or not isinstance(maximum, int) or maximum < 0:
            raise ValueError(f"workersMax is not a count: {maximum!r}")
        if scaler not in (QUEUE_DELAY, REQUEST_COUNT):
            raise ValueError(f"unknown scalerType {scaler!r}")
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError(f"scalerValue is not a number: {value!r}")
        return cls(maximum, scaler, float(value))


@dataclass(frozen=True)
class Health:
    """The parts of RunPod's /health the law reads."""

    ready: int = 0
    running: int = 0
    idle: int = 0
    initializing: int = 0
    in_queue: int = 0
    in_progress: int = 0

    @property
    def able(self) -> int:
        """Workers that can take a job now. RunPod's `ready` may or may not count the running
        ones; idle + running always does."""
        return max(self.ready, self.idle + self.running)

    @classmethod
    def from_json(cls, data: Any) -> Health:
        """Read /health's body; ValueError when it is not the shape RunPod answers."""
        if not isinstance(data, dict):
            raise ValueError("not an object")
        workers, jobs = data.get("workers"), data.get("jobs")
        if not isinstance(workers, dict) or not isinstance(jobs, dict):
            raise ValueError("no workers or jobs object")

        def count(section: dict[str, Any], name: str) -> int:
            value = section.get(name, 0)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} is not a count: {value!r}")
            return value

        return cls(
            ready=count(workers, "ready"),
            running=count(workers, "running"),
            idle=count(workers, "idle"),
            initializing=count(workers, "initializing"),
            in_queue=count(jobs, "inQueue"),
            in_progress=count(jobs, "inProgress"),
        )


@dataclass(frozen=True)
class Demand:
    """comicgen's side: jobs it holds at the endpoint and chunks waiting for a slot."""

    in_flight: int = 0
    waiting_high: int = 0
    waiting_other: int = 0
    # Jobs finished per second at this endpoint lately (None: not known yet).
    finish_rate: float | None = None


@dataclass(frozen=True)
class LawState:
    """What the law remembers between two readings (kept in Redis as JSON)."""

    last_target: int | None = None
    showing_since: float | None = None
    workers_when_showing: int = 0
    at_max_until: float = 0.0
    # For the finish rate: the limiter's released count and when it was read.
    released: int | None = None
    read_at: float | None = None
    finish_rate: float | None = None


@dataclass(frozen=True)
class Decision:
    target: int
    reason: str
    state: LawState


def control_target(
    health: Health | None,
    demand: Demand,
    state: LawState,
    *,
    ceiling: int,
    scaling: Scaling,
    now: float,
) -> Decision:
    """The in-flight target for one endpoint (the module docstring states the law)."""
    if health is None:
        fallback = min(ceiling, state.last_target) if state.last_target else ceiling
        return Decision(max(1, fallback), "health unknown: last target", state)
    workers = health.able + health.initializing
    feed = max(1, math.ceil(health.able * QUEUE_FRACTION))
    reason = "workers + feed"
    below_max = scaling.max_workers is None or workers < scaling.max_workers
    showing = (
        scaling.value > 0
        and below_max
        and demand.waiting_other > 0
        and demand.waiting_high == 0
        and now >= state.at_max_until
    )
    if showing:
        if state.showing_since is None or workers > state.workers_when_showing:
            # Starting, or the endpoint grew: keep showing RunPod the demand.
            state = dataclasses.replace(state, showing_since=now, workers_when_showing=workers)
        assert state.showing_since is not None
        stalled = now - state.showing_since > 2 * scaling.value + STALL_GRACE_SECONDS
        if scaling.max_workers is None and stalled:
            state = dataclasses.replace(
                state, showing_since=None, at_max_until=now + AT_MAX_HOLD_SECONDS
            )
            reason = "endpoint stopped growing: feed only"
        elif scaling.scaler == REQUEST_COUNT:
            wanted = math.ceil((scaling.max_workers or workers + 1) * scaling.value)
            feed = max(feed, wanted - workers)
            reason = "showing demand to RunPod's request-count scaler"
        else:
            rate = demand.finish_rate or float(max(1, health.able))
            feed = max(feed, math.ceil(rate * (scaling.value + 1)))
            reason = "showing demand to RunPod's queue-delay scaler"
    elif state.showing_since is not None:
        state = dataclasses.replace(state, showing_since=None)
    wanted = workers + feed
    transit = min(wanted, demand.in_flight - (health.in_queue + health.in_progress))
    target = min(ceiling, max(1, wanted + transit))
    return Decision(target, reason, dataclasses.replace(state, last_target=target))


# --- following the endpoint ----------------------------------------------------------------------

_next_check: dict[str, float] = {}
_next_check_lock = threading.Lock()


def follow(endpoint: str) -> None:
    """Refresh the endpoint's target if it is this process's turn: cheap to call before every
    acquire (a local clock, then one Redis SET NX at most every LOCAL_CHECK_SECONDS)."""
    now = time.monotonic()
    with _next_check_lock:
        due = _next_check.get(endpoint, 0.0) <= now
        if due:
            _next_check[endpoint] = now + LOCAL_CHECK_SECONDS
    client = get_redis()
    if due and client.set(
        limiter.endpoint_key(endpoint, "health_turn"), uuid.uuid4().hex, nx=True,
        px=int(REFRESH_SECONDS * 1000),
    ):  # fmt: skip
        refresh(endpoint)
        _seen_target.add(endpoint)
        return
    if endpoint in _seen_target:
        return
    # Another thread or process is reading /health for the first time. Wait for that reading
    # rather than acquire against the ceiling: a batch's first chunks, all starting at once,
    # would otherwise fill RunPod's queue up to the ceiling before the first target exists.
    target_key = limiter.endpoint_key(endpoint, "target")
    deadline = now + FIRST_TARGET_WAIT_SECONDS
    while not client.exists(target_key):
        if time.monotonic() >= deadline:
            return
        time.sleep(0.02)
    _seen_target.add(endpoint)


def read_health(endpoint: str) -> Health | None:
    """The endpoint's /health, or None when it cannot be read (the law then falls back)."""
    try:
        with RunPodClient(
            settings.RUNPOD_BASE_URL, endpoint, settings.RUNPOD_API_KEY,
            connect_timeout=HEALTH_TIMEOUT[0], read_timeout=HEALTH_TIMEOUT[1], status_retries=0,
        ) as client:  # fmt: skip
            return Health.from_json(client.health())
    except (RunPodError, ValueError, requests.RequestException) as error:
        logger.info("RunPod /health of %s unreadable (%s): target falls back", endpoint, error)
        return None


def rest_url() -> str:
    """RunPod's REST API root: RUNPOD_REST_URL, else next to RUNPOD_BASE_URL (RunPod's own
    https://rest.runpod.io/v1, or the emulator's /v1 beside its /v2)."""
    configured = getattr(settings, "RUNPOD_REST_URL", "")
    if configured:
        return str(configured).rstrip("/")
    base = str(settings.RUNPOD_BASE_URL).rstrip("/")
    if "api.runpod.ai" in base:
        return "https://rest.runpod.io/v1"
    return base[: -len("/v2")] + "/v1" if base.endswith("/v2") else base


def read_scaling(endpoint: str) -> Scaling:
    """The endpoint's scaling settings, cached in Redis for CONFIG_SECONDS; the assumed ones
    (a queue-delay scaler of RUNPOD_SCALER_QUEUE_DELAY, maximum unknown) when unreadable."""
    client = get_redis()
    key = limiter.endpoint_key(endpoint, "scaling")
    cached = client.get(key)
    if cached:
        with contextlib.suppress(ValueError, TypeError):
            return Scaling(**json.loads(cached))
    scaling = Scaling(value=float(settings.RUNPOD_SCALER_QUEUE_DELAY))
    try:
        response = requests.get(
            f"{rest_url()}/endpoints/{endpoint}", timeout=HEALTH_TIMEOUT,
            headers={"Authorization": f"Bearer {settings.RUNPOD_API_KEY}"},
        )  # fmt: skip
        response.raise_for_status()
        scaling = Scaling.from_json(response.json())
    except (requests.RequestException, ValueError) as error:
        logger.info("RunPod endpoint settings of %s unreadable (%s): assumed", endpoint, error)
    client.set(key, json.dumps(dataclasses.asdict(scaling)), ex=CONFIG_SECONDS)
    return scaling


def refresh(endpoint: str) -> Decision:
    """Read /health, run the law and publish the target. The caller holds the turn."""
    health = read_health(endpoint)
    snap = limiter.snapshot(endpoint)
    client = get_redis()
    state_key = limiter.endpoint_key(endpoint, "law")
    state = _load_state(client.get(state_key))
    now = time.time()
    rate = state.finish_rate
    if state.released is not None and state.read_at is not None and now > state.read_at:
        sample = max(0, snap["released"] - state.released) / (now - state.read_at)
        rate = sample if rate is None else RATE_SMOOTHING * sample + (1 - RATE_SMOOTHING) * rate
    state = dataclasses.replace(state, released=snap["released"], read_at=now, finish_rate=rate)
    demand = Demand(
        in_flight=snap["in_flight"],
        waiting_high=snap["waiting"]["high"],
        waiting_other=snap["waiting"]["normal"] + snap["waiting"]["low"],
        finish_rate=rate or None,
    )
    decision = control_target(
        health, demand, state, ceiling=settings.RUNPOD_MAX_IN_FLIGHT,
        scaling=read_scaling(endpoint), now=now,
    )  # fmt: skip
    client.set(state_key, json.dumps(dataclasses.asdict(decision.state)), ex=3600)
    limiter.publish_target(endpoint, decision.target)
    logger.debug("endpoint %s: target %s (%s) from %s, %s", endpoint, decision.target,
                 decision.reason, health, demand)  # fmt: skip
    return decision


def _load_state(raw: bytes | str | None) -> LawState:
    if not raw:
        return LawState()
    try:
        data = json.loads(raw)
        names = {field.name for field in dataclasses.fields(LawState)}
        return LawState(**{key: value for key, value in data.items() if key in names})
    except (ValueError, TypeError):
        return LawState()
