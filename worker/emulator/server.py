"""An aiohttp server that speaks RunPod Serverless' queue API and runs the real worker handler.

One asyncio loop holds every job; simulated GPU workers are tasks pulling job ids FIFO from an
``asyncio.Queue``; the CPU-bound handler runs in a small thread pool so HTTP stays responsive.
Fault injection and counters live under ``/_emulator/`` (loopback only, no auth).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import hmac
import io
import json
import logging
import random
import re
import time
import uuid
from collections import Counter, OrderedDict, defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
from aiohttp import web
from PIL import Image

from worker.emulator.autoscale import Autoscaler
from worker.emulator.config import (
    REFERENCE_HEIGHT,
    REFERENCE_STEPS,
    REFERENCE_WIDTH,
    ConfigError,
    EmulatorConfig,
)
from worker.handler import MAX_IMAGES, MAX_SIZE, MAX_STEPS, InputError, validate_input
from worker.handler import handler as worker_handler

logger = logging.getLogger("worker.emulator")

IN_QUEUE = "IN_QUEUE"
IN_PROGRESS = "IN_PROGRESS"
COMPLETED = "COMPLETED"
FAILED = "FAILED"
CANCELLED = "CANCELLED"
TIMED_OUT = "TIMED_OUT"
ACTIVE = frozenset({IN_QUEUE, IN_PROGRESS})

RATE_WINDOW_S = 10.0
DEFAULT_TTL_MS = 24 * 3600 * 1000
# RunPod's endpoint default execution timeout (10 min) when the job sets no policy.
DEFAULT_EXECUTION_TIMEOUT_MS = 600_000
RUNSYNC_DEFAULT_WAIT_MS = 90_000
RUNSYNC_MAX_WAIT_MS = 300_000
# RunPod keeps /runsync results one minute only.
RUNSYNC_RESULT_TTL_S = 60.0
WEBHOOK_TRIES = 3
WEBHOOK_TIMEOUT_S = 10.0
MAX_BODY_BYTES = 20 * 1024 * 1024
# Bounds the per-input ledger: 20k-job benchmarks fit many times over in a few MB.
MAX_TRACKED_INPUTS = 200_000
# Bounds the per-job bill shown in stats (the totals stay exact): it is for tests, and a
# benchmark's stats answer should stay a few MB at most.
MAX_BILLED_JOBS = 50_000
MAX_AMBIGUOUS_JOBS = 1_000

FAIL_MARKER = re.compile(r"\[fail:(\d+|always)\]", re.IGNORECASE)
SLOW_MARKER = re.compile(r"\[slow:(\d+(?:\.\d*)?|\.\d+)\]", re.IGNORECASE)
BLANK_MARKER = re.compile(r"\[blank:(\d+)\]", re.IGNORECASE)
# A [blank:N] panel: one flat light grey, which comicgen must refuse as a blank image.
BLANK_RGB = (236, 236, 236)

# aiohttp resource name -> the operation name used in stats and rate limits.
OPERATIONS = {
    "run": "run",
    "runsync": "runsync",
    "status": "status",
    "cancel": "cancel",
    "retry": "retry",
    "health": "health",
    "purge_queue": "purge-queue",
}
RATE_BUCKETS = {"run": "run", "runsync": "run", "status": "status"}
LOOPBACK = ("127.", "::1", "::ffff:127.")


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def _dimension(job_input: dict[str, Any], key: str, default: int, high: int) -> int:
    """One of the input's sizes as the handler reads it; a value it would refuse counts as the
    default (the handler then fails the job, after the reference time)."""
    value = job_input.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 1 <= value <= high:
        return default
    return int(value)


def work_scale(job_input: Any) -> float:
    """The input's work (width x height x steps x images) relative to the reference image's."""
    if not isinstance(job_input, dict):
        return 1.0
    width = _dimension(job_input, "width", REFERENCE_WIDTH, MAX_SIZE)
    height = _dimension(job_input, "height", REFERENCE_HEIGHT, MAX_SIZE)
    steps = _dimension(job_input, "num_inference_steps", REFERENCE_STEPS, MAX_STEPS)
    images = _dimension(job_input, "num_images", 1, MAX_IMAGES)
    reference = REFERENCE_WIDTH * REFERENCE_HEIGHT * REFERENCE_STEPS
    return width * height * steps * images / reference


def input_key(job_input: Any) -> bytes:
    """A 16-byte digest of the input's canonical JSON: what "the same image" means in stats."""
    canonical = json.dumps(job_input, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(canonical.encode(), digest_size=16).digest()


class InputLedger:
    """Attempts and successful executions per distinct input, memory-bounded.

    Aggregates are kept incrementally so they stay right when old entries are evicted.
    """

    def __init__(self, max_entries: int = MAX_TRACKED_INPUTS) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, list[int]] = OrderedDict()
        self.distinct = 0
        self.duplicates = 0
        self.max_runs = 0
        self.extra_runs = 0

    def _entry(self, key: bytes) -> list[int]:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = [0, 0]
            if len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
        return entry

    def attempt(self, key: bytes) -> int:
        """Count an execution start; returns this input's attempt number (1-based)."""
        entry = self._entry(key)
        entry[0] += 1
        return entry[0]

    def succeeded(self, key: bytes) -> None:
        entry = self._entry(key)
        entry[1] += 1
        runs = entry[1]
        if runs == 1:
            self.distinct += 1
        else:
            self.extra_runs += 1
            if runs == 2:
                self.duplicates += 1
        self.max_runs = max(self.max_runs, runs)

    def as_json(self) -> dict[str, int]:
        return {
            "distinct": self.distinct,
            "max": self.max_runs,
            "duplicates": self.duplicates,
            "extra_runs": self.extra_runs,
        }


class Job:
    """One job's state; ``generation`` tells a stale queue entry from a retried job's."""

    __slots__ = (
        "id",
        "input",
        "key",
        "webhook",
        "execution_timeout_s",
        "sync",
        "status",
        "submitted_at",
        "queued_at",
        "started_at",
        "delay_ms",
        "execution_ms",
        "output",
        "error",
        "worker_id",
        "generation",
        "done",
        "task",
        "ttl_handle",
        "expiry_handle",
        "endpoint_id",
    )

    def __init__(
        self,
        job_id: str,
        job_input: Any,
        *,
        webhook: str | None,
        execution_timeout_s: float,
        sync: bool,
        now: float,
        endpoint_id: str = "",
    ) -> None:
        self.id = job_id
        self.endpoint_id = endpoint_id
        self.input = job_input
        self.key = input_key(job_input)
        self.webhook = webhook
        self.execution_timeout_s = execution_timeout_s
        self.sync = sync
        self.status = IN_QUEUE
        self.submitted_at = now
        self.queued_at = now
        self.started_at: float | None = None
        self.delay_ms: int | None = None
        self.execution_ms: int | None = None
        self.output: Any = None
        self.error: str | None = None
        self.worker_id: str | None = None
        self.generation = 0
        self.done = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.ttl_handle: asyncio.TimerHandle | None = None
        self.expiry_handle: asyncio.TimerHandle | None = None

    def as_json(self) -> dict[str, Any]:
        """The job as RunPod's ``/status`` shows it."""
        data: dict[str, Any] = {"id": self.id, "status": self.status}
        if self.delay_ms is not None:
            data["delayTime"] = self.delay_ms
        if self.execution_ms is not None:
            data["executionTime"] = self.execution_ms
        if self.status == COMPLETED:
            data["output"] = self.output
        elif self.error is not None:
            data["error"] = self.error
        if self.worker_id is not None:
            data["workerId"] = self.worker_id
        return data


def blank_output(job: dict[str, Any]) -> dict[str, Any]:
    """The handler's output shape with flat one-colour PNGs: a ``[blank:N]`` attempt.

    Invalid input still fails as the real handler would, so a marker never hides a bad request.
    """
    try:
        params = validate_input(job.get("input"))
    except InputError as exc:
        return {"error": str(exc)}
    buffer = io.BytesIO()
    Image.new("RGB", (params["width"], params["height"]), BLANK_RGB).save(buffer, "PNG")
    image = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return {"images": [image] * params["num_images"], "seed": params["seed"]}


class WorkerSlot:
    """A simulated GPU worker: ``idle``, ``initializing`` (cold start) or ``running``."""

    __slots__ = ("id", "state", "warm", "retiring", "task", "idle_since")

    def __init__(self, worker_id: str) -> None:
        self.id = worker_id
        self.state = "idle"
        self.warm = False
        self.retiring = False
        self.idle_since = 0.0
        self.task: asyncio.Task[None] | None = None


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


class Emulator:
    """The state and behaviour of one emulated endpoint; ``create_app()`` serves it."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.initial_config = config
        self.config = config
        self.rng = random.Random(config.seed)
        self.jobs: dict[str, Job] = {}
        self.queue: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
        self.slots: dict[str, WorkerSlot] = {}
        self._slot_counter = 0
        self.executor = ThreadPoolExecutor(
            max_workers=config.render_threads, thread_name_prefix="emulator-render"
        )
        self.http: aiohttp.ClientSession | None = None
        self._webhook_tasks: set[asyncio.Task[None]] = set()
        self.started_at = time.monotonic()
        self._closed = False
        self.autoscaler = Autoscaler(self)
        self._reset_counters()

    def _reset_counters(self) -> None:
        self.requests: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.job_counts: Counter[str] = Counter()
        self.webhooks: Counter[str] = Counter()
        self.ledger = InputLedger()
        # [blank:N] counts attempts per input without its seed: a blank panel is retried with a
        # new seed, and "the first N attempts" must still end.
        self.blank_attempts = InputLedger()
        self.executions = 0
        # What RunPod would bill: every execution's executionTime, whatever its end.
        self.billed_ms = 0
        self.billed_count = 0
        self.billed_jobs: OrderedDict[str, int] = OrderedDict()
        self.ambiguous_jobs: deque[str] = deque(maxlen=MAX_AMBIGUOUS_JOBS)
        self.in_flight = 0
        self.max_in_flight = 0
        self.rate_windows: dict[str, deque[float]] = {"run": deque(), "status": deque()}
        # Per endpoint id served: jobs submitted and ended by status, billed_ms, billed_count.
        self.endpoint_counts: defaultdict[str, Counter[str]] = defaultdict(Counter)

    # -- app wiring ---------------------------------------------------------------------------

    def create_app(self) -> web.Application:
        app = web.Application(middlewares=[self._v2_middleware], client_max_size=MAX_BODY_BYTES)
        routes: list[tuple[str, str, tuple[str, ...], Any]] = [
            ("run", "/v2/{endpoint_id}/run", ("POST",), self.handle_run),
            ("runsync", "/v2/{endpoint_id}/runsync", ("POST",), self.handle_runsync),
            ("status", "/v2/{endpoint_id}/status/{job_id}", ("GET", "POST"), self.handle_status),
            ("cancel", "/v2/{endpoint_id}/cancel/{job_id}", ("POST",), self.handle_cancel),
            ("retry", "/v2/{endpoint_id}/retry/{job_id}", ("POST",), self.handle_retry),
            ("health", "/v2/{endpoint_id}/health", ("GET",), self.handle_health),
            ("purge_queue", "/v2/{endpoint_id}/purge-queue", ("POST",), self.handle_purge),
            ("emulator_config", "/_emulator/config", ("GET", "POST"), self.handle_config),
            ("emulator_stats", "/_emulator/stats", ("GET",), self.handle_stats),
            ("emulator_reset", "/_emulator/reset", ("POST",), self.handle_reset),
            ("emulator_scaling", "/_emulator/scaling", ("GET",), self.handle_scaling),
            ("rest_endpoint", "/v1/endpoints/{endpoint_id}", ("GET",), self.handle_endpoint),
        ]
        for name, path, methods, view in routes:
            resource = app.router.add_resource(path, name=name)
            for method in methods:
                resource.add_route(method, view)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_startup(self, app: web.Application) -> None:
        self.http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_S),
            connector=aiohttp.TCPConnector(limit=100),
        )
        if not self.autoscaler.enabled:
            self._resize_workers(self.config.workers)
        self.autoscaler.start()

    async def _on_cleanup(self, app: web.Application) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop workers, wake runsync waiters, drop webhooks in flight, free the thread pool."""
        if self._closed:
            return
        self._closed = True
        tasks = [slot.task for slot in self.slots.values() if slot.task]
        if self.autoscaler.task is not None:
            tasks.append(self.autoscaler.task)
        for job in self.jobs.values():
            self._cancel_timers(job)
            if job.task:
                tasks.append(job.task)
            job.done.set()
        tasks.extend(self._webhook_tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.slots.clear()
        if self.http:
            await self.http.close()
        self.executor.shutdown(wait=False, cancel_futures=True)

    @web.middleware
    async def _v2_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        resource = request.match_info.route.resource
        operation = OPERATIONS.get(resource.name or "") if resource else None
        if operation is None:
            return await handler(request)
        response = self._guard(request, operation)
        if response is None:
            try:
                response = await handler(request)
            except web.HTTPException as exc:  # aiohttp's own, e.g. 413 for a huge body
                self.requests[operation][str(exc.status)] += 1
                raise
        transport = request.transport
        # An ambiguous /run closed it, or the client went away while the answer was delayed.
        answered = transport is not None and not transport.is_closing()
        self.requests[operation][str(response.status) if answered else "dropped"] += 1
        return response

    def _guard(self, request: web.Request, operation: str) -> web.Response | None:
        """Auth, endpoint, rate limit and injected 500s, in that order, before any action."""
        config = self.config
        supplied = request.headers.get("Authorization", "")
        # RunPod accepts the bare key as well as "Bearer <key>".
        if supplied.lower().startswith("bearer "):
            supplied = supplied[7:].strip()
        if not hmac.compare_digest(supplied.encode(), config.api_key.encode()):
            return _error(401, "Unauthorized")
        if request.match_info["endpoint_id"] not in config.endpoint_ids:
            return _error(404, "endpoint not found")
        bucket = RATE_BUCKETS.get(operation)
        if bucket:
            wait = self._rate_limited(bucket)
            if wait is not None:
                return _error(
                    429, "Too Many Requests", **{"Retry-After": str(max(1, int(wait + 0.999)))}
                )
        if config.http_error_rate and self.rng.random() < config.http_error_rate:
            return _error(500, "injected HTTP 500 (http_error_rate)")
        return None

    def _rate_limited(self, bucket: str) -> float | None:
        """Sliding 10 s window: None if admitted (and counted), else seconds until a slot frees."""
        limit = self.config.rate_limit_run if bucket == "run" else self.config.rate_limit_status
        if not limit:
            return None
        window = self.rate_windows[bucket]
        now = time.monotonic()
        while window and window[0] <= now - RATE_WINDOW_S:
            window.popleft()
        if len(window) >= limit:
            return window[-limit] + RATE_WINDOW_S - now
        window.append(now)
        return None

    # -- RunPod API ---------------------------------------------------------------------------

    async def _read_run_body(self, request: web.Request) -> dict[str, Any] | web.Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "body must be JSON")
        if not isinstance(body, dict) or "input" not in body:
            return _error(400, "body must be a JSON object with an 'input' key")
        webhook = body.get("webhook")
        if webhook is not None and (not isinstance(webhook, str) or "://" not in webhook):
            return _error(400, "webhook must be an http(s) URL")
        policy = body.get("policy") or {}
        if not isinstance(policy, dict):
            return _error(400, "policy must be an object")
        for key in ("executionTimeout", "ttl"):
            value = policy.get(key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value <= 0
            ):
                return _error(400, f"policy.{key} must be a positive integer (ms)")
        return body

    def _submit(self, body: dict[str, Any], *, sync: bool, endpoint_id: str = "") -> Job:
        loop = asyncio.get_running_loop()
        policy = body.get("policy") or {}
        prefix = "sync-" if sync else ""
        job = Job(
            f"{prefix}{uuid.uuid4()}-e1",
            body["input"],
            webhook=body.get("webhook"),
            execution_timeout_s=(policy.get("executionTimeout") or DEFAULT_EXECUTION_TIMEOUT_MS)
            / 1000,
            sync=sync,
            now=loop.time(),
            endpoint_id=endpoint_id,
        )
        self.jobs[job.id] = job
        self.endpoint_counts[endpoint_id]["submitted"] += 1
        ttl_s = (policy.get("ttl") or DEFAULT_TTL_MS) / 1000
        job.ttl_handle = loop.call_later(ttl_s, self._expire, job, "ttl")
        self.job_counts["submitted"] += 1
        self._enqueue(job)
        return job

    def _enqueue(self, job: Job) -> None:
        job.generation += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.queue.put_nowait((job.id, job.generation))
        self.autoscaler.queued(job.id, job.generation, job.queued_at)

    async def handle_run(self, request: web.Request) -> web.Response:
        body = await self._read_run_body(request)
        if isinstance(body, web.Response):
            return body
        ambiguous = self._ambiguous_answer()
        # The job exists (queued, counted in stats) before any answer leaves: what the client
        # does not hear about still runs, is billed and sends its webhook, as on RunPod.
        job = self._submit(body, sync=False, endpoint_id=request.match_info["endpoint_id"])
        answer = web.json_response({"id": job.id, "status": job.status})
        if ambiguous:
            self.job_counts["ambiguous"] += 1
            self.ambiguous_jobs.append(job.id)
        if self.config.run_answer_delay:
            await asyncio.sleep(self.config.run_answer_delay)
        if ambiguous == "500":
            return _error(500, "injected HTTP 500 after the job was created (ambiguous run)")
        if ambiguous == "drop" and request.transport is not None:
            # Writing the answer to a closing transport fails quietly inside aiohttp: the
            # client sees the connection end without a status line.
            request.transport.close()
        return answer

    def _ambiguous_answer(self) -> str | None:
        """``"500"`` or ``"drop"`` when this /run's answer must fail, else None."""
        config = self.config
        if config.ambiguous_run_next > 0:
            # Counts down in the live config, so GET /_emulator/config shows what is left.
            self.config = dataclasses.replace(
                config, ambiguous_run_next=config.ambiguous_run_next - 1
            )
        elif not (config.ambiguous_run_rate and self.rng.random() < config.ambiguous_run_rate):
            return None
        if config.ambiguous_run_mode == "mixed":
            return self.rng.choice(("500", "drop"))
        return config.ambiguous_run_mode

    async def handle_runsync(self, request: web.Request) -> web.Response:
        body = await self._read_run_body(request)
        if isinstance(body, web.Response):
            return body
        try:
            wait_ms = int(request.query.get("wait", RUNSYNC_DEFAULT_WAIT_MS))
        except ValueError:
            return _error(400, "wait must be milliseconds")
        wait_ms = min(max(wait_ms, 1000), RUNSYNC_MAX_WAIT_MS)
        job = self._submit(body, sync=True, endpoint_id=request.match_info["endpoint_id"])
        # Past the wait RunPod answers the job as it stands (IN_QUEUE / IN_PROGRESS).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(job.done.wait(), wait_ms / 1000)
        if self.jobs.get(job.id) is not job:
            return _error(404, "job not found")
        return web.json_response(job.as_json())

    def _job_or_404(self, request: web.Request) -> Job | web.Response:
        job = self.jobs.get(request.match_info["job_id"])
        # A job id is known only to the endpoint that took the job, as on RunPod.
        if job is None or job.endpoint_id != request.match_info["endpoint_id"]:
            return _error(404, "job not found")
        return job

    async def handle_status(self, request: web.Request) -> web.Response:
        job = self._job_or_404(request)
        if isinstance(job, web.Response):
            return job
        return web.json_response(job.as_json())

    async def handle_cancel(self, request: web.Request) -> web.Response:
        job = self._job_or_404(request)
        if isinstance(job, web.Response):
            return job
        if job.status in ACTIVE:
            if job.task is not None:
                job.task.cancel()
            self._finish(job, CANCELLED)
        return web.json_response({"id": job.id, "status": job.status})

    async def handle_retry(self, request: web.Request) -> web.Response:
        job = self._job_or_404(request)
        if isinstance(job, web.Response):
            return job
        if job.status not in (FAILED, TIMED_OUT):
            return _error(400, f"job is {job.status}; only FAILED or TIMED_OUT jobs can be retried")
        if job.expiry_handle:
            job.expiry_handle.cancel()
            job.expiry_handle = None
        job.status = IN_QUEUE
        job.output = job.error = job.worker_id = None
        job.delay_ms = job.execution_ms = None
        job.started_at = None
        job.queued_at = asyncio.get_running_loop().time()
        job.done = asyncio.Event()
        self.job_counts["retried"] += 1
        self._enqueue(job)
        return web.json_response({"id": job.id, "status": job.status})

    async def handle_health(self, request: web.Request) -> web.Response:
        return web.json_response(self.health())

    async def handle_purge(self, request: web.Request) -> web.Response:
        removed = 0
        endpoint = request.match_info["endpoint_id"]
        # Other endpoints' queued jobs go back in their order (no await in between: no worker
        # takes one meanwhile); stale entries are dropped as before.
        kept: list[tuple[str, int]] = []
        while not self.queue.empty():
            job_id, generation = self.queue.get_nowait()
            job = self.jobs.get(job_id)
            if job is not None and job.status == IN_QUEUE and job.generation == generation:
                if job.endpoint_id != endpoint:
                    kept.append((job_id, generation))
                    continue
                # Purged jobs end CANCELLED rather than vanishing, so pollers see an end.
                self._finish(job, CANCELLED)
                removed += 1
        for entry in kept:
            self.queue.put_nowait(entry)
        return web.json_response({"removed": removed, "status": "completed"})

    def health(self) -> dict[str, Any]:
        """RunPod's ``/health`` shape; job totals count since start (or the last reset)."""
        states = Counter(job.status for job in self.jobs.values() if job.status in ACTIVE)
        workers = Counter(slot.state for slot in self.slots.values())
        return {
            "jobs": {
                "completed": self.job_counts[COMPLETED],
                "failed": self.job_counts[FAILED] + self.job_counts[TIMED_OUT],
                "inProgress": states[IN_PROGRESS],
                "inQueue": states[IN_QUEUE],
                "retried": self.job_counts["retried"],
            },
            "workers": {
                "idle": workers["idle"],
                "initializing": workers["initializing"],
                "running": workers["running"],
                "ready": workers["idle"] + workers["running"],
                "throttled": 0,
                "unhealthy": 0,
            },
        }

    # -- job life cycle -----------------------------------------------------------------------

    def _finish(
        self, job: Job, status: str, *, output: Any = None, error: str | None = None
    ) -> None:
        """End an active job once: its times, its bill, its counters, its webhook."""
        # A job deleted by its ttl or by a reset has ended already: a late end changes nothing.
        if job.status not in ACTIVE or self.jobs.get(job.id) is not job:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        self.in_flight -= 1
        job.status = status
        job.output = output
        job.error = error
        if job.started_at is not None:
            # Completed, failed, timed out or cancelled mid-run: the GPU ran, RunPod bills it.
            # A job that ends before it started (cancelled in queue, purged) is not billed.
            job.execution_ms = _ms(now - job.started_at)
            self._bill(job, job.execution_ms)
        self.job_counts[status] += 1
        self.endpoint_counts[job.endpoint_id][status] += 1
        if status == COMPLETED:
            self.ledger.succeeded(job.key)
        job.done.set()
        ttl = (
            min(self.config.result_ttl, RUNSYNC_RESULT_TTL_S)
            if job.sync
            else self.config.result_ttl
        )
        job.expiry_handle = loop.call_later(ttl, self._expire, job, "result")
        if job.webhook:
            task = asyncio.create_task(self._deliver_webhook(job.webhook, job.as_json()))
            self._webhook_tasks.add(task)
            task.add_done_callback(self._webhook_tasks.discard)

    def _bill(self, job: Job, execution_ms: int) -> None:
        """Add one execution to the bill; a job rerun by ``/retry`` adds under the same id."""
        job_id = job.id
        self.endpoint_counts[job.endpoint_id]["billed_ms"] += execution_ms
        self.endpoint_counts[job.endpoint_id]["billed_count"] += 1
        self.billed_ms += execution_ms
        self.billed_count += 1
        self.billed_jobs[job_id] = self.billed_jobs.pop(job_id, 0) + execution_ms
        if len(self.billed_jobs) > MAX_BILLED_JOBS:
            self.billed_jobs.popitem(last=False)

    def _cancel_timers(self, job: Job) -> None:
        for handle in (job.ttl_handle, job.expiry_handle):
            if handle is not None:
                handle.cancel()

    def _expire(self, job: Job, reason: str) -> None:
        """Forget a job: its result aged out, or its ``policy.ttl`` passed (even mid-run)."""
        if self.jobs.get(job.id) is not job:
            return
        del self.jobs[job.id]
        self._cancel_timers(job)
        if job.status in ACTIVE:
            self.in_flight -= 1
            self.job_counts["TTL_EXPIRED"] += 1
            if job.started_at is not None:
                # Deleted mid-run: no status will ever show it, but the GPU time was spent.
                self._bill(job, _ms(asyncio.get_running_loop().time() - job.started_at))
            if job.task is not None:
                job.task.cancel()
        job.done.set()
        logger.debug("job %s deleted (%s)", job.id, reason)

    def _resize_workers(self, count: int) -> None:
        current = [slot for slot in self.slots.values() if not slot.retiring]
        for _ in range(count - len(current)):
            self._slot_counter += 1
            slot = WorkerSlot(f"emu-worker-{self._slot_counter}")
            self.slots[slot.id] = slot
            slot.task = asyncio.create_task(self._worker_loop(slot))
        surplus = len(current) - count
        if surplus <= 0:
            return
        # Idle workers go at once; busy ones finish their job first, like a scaled-down endpoint.
        for slot in sorted(current, key=lambda s: s.state != "idle")[:surplus]:
            slot.retiring = True
            if slot.state == "idle" and slot.task is not None:
                slot.task.cancel()
                del self.slots[slot.id]

    def _add_workers(self, count: int, *, cold: bool) -> None:
        """Start `count` workers; a cold one is initializing for cold_start seconds first."""
        for _ in range(max(0, count)):
            self._slot_counter += 1
            slot = WorkerSlot(f"emu-worker-{self._slot_counter}")
            if cold and self.config.cold_start > 0:
                slot.state = "initializing"
            else:
                slot.warm = True
            self.slots[slot.id] = slot
            slot.task = asyncio.create_task(self._worker_loop(slot))

    def _retire(self, slot: WorkerSlot) -> None:
        """Stop a worker: at once when idle or initializing, after its job when running."""
        slot.retiring = True
        if slot.state != "running" and slot.task is not None:
            slot.task.cancel()
            self.slots.pop(slot.id, None)

    async def _worker_loop(self, slot: WorkerSlot) -> None:
        try:
            if slot.state == "initializing":
                await asyncio.sleep(self.config.cold_start)
                slot.warm = True
            while not slot.retiring:
                slot.state = "idle"
                slot.idle_since = asyncio.get_running_loop().time()
                job_id, generation = await self.queue.get()
                job = self.jobs.get(job_id)
                if job is None or job.status != IN_QUEUE or job.generation != generation:
                    continue
                if not slot.warm and self.config.cold_start > 0:
                    slot.state = "initializing"
                    await asyncio.sleep(self.config.cold_start)
                    if self.jobs.get(job_id) is not job or job.status != IN_QUEUE:
                        slot.warm = True
                        continue
                slot.warm = True
                slot.state = "running"
                task = job.task = asyncio.create_task(self._execute(job, slot))
                # wait() rather than await: a cancelled job must not stop its worker.
                await asyncio.wait({task})
                # A retry may already have handed the job to another worker.
                if job.task is task:
                    job.task = None
        finally:
            if self.slots.get(slot.id) is slot:
                del self.slots[slot.id]

    @staticmethod
    def _prompt(job: Job) -> str | None:
        prompt = job.input.get("prompt") if isinstance(job.input, dict) else None
        return prompt if isinstance(prompt, str) else None

    def _injected_failure(self, job: Job, attempt: int) -> str | None:
        prompt = self._prompt(job)
        if prompt is not None:
            marker = FAIL_MARKER.search(prompt)
            if marker:
                limit = marker.group(1).lower()
                if limit == "always" or attempt <= int(limit):
                    return f"injected failure {marker.group(0)} on attempt {attempt}"
        if self.config.fail_rate and self.rng.random() < self.config.fail_rate:
            return "injected failure (fail_rate)"
        return None

    def _injected_blank(self, job: Job) -> bool:
        """True when this execution is one of the first N of a ``[blank:N]`` prompt."""
        prompt = self._prompt(job)
        marker = BLANK_MARKER.search(prompt) if prompt is not None else None
        if marker is None:
            return False
        unseeded = {key: value for key, value in job.input.items() if key != "seed"}
        return self.blank_attempts.attempt(input_key(unseeded)) <= int(marker.group(1))

    def _latency(self, job: Job) -> float:
        """Seconds this execution takes: ``[slow:S]`` in the prompt, else the configured time,
        scaled by the work the input asks for under ``latency_scale=pixels``. Jitter is drawn
        on the reference image's time and scales with it, so 20 % jitter stays 20 % at any size."""
        prompt = self._prompt(job)
        marker = SLOW_MARKER.search(prompt) if prompt is not None else None
        if marker is not None:
            return float(marker.group(1))
        config = self.config
        seconds = max(0.0, config.latency + self.rng.uniform(-config.jitter, config.jitter))
        if config.latency_scale == "pixels":
            seconds *= work_scale(job.input) * self._model_speed(job.input)
        return seconds

    def _model_speed(self, job_input: Any) -> float:
        model = job_input.get("model") if isinstance(job_input, dict) else None
        return self.config.model_speed.get(model, 1.0) if isinstance(model, str) else 1.0

    async def _execute(self, job: Job, slot: WorkerSlot) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        job.status = IN_PROGRESS
        job.started_at = now
        job.delay_ms = _ms(now - job.queued_at)
        job.worker_id = slot.id
        self.executions += 1
        failure = self._injected_failure(job, self.ledger.attempt(job.key))
        blank = self._injected_blank(job)
        latency = self._latency(job)
        try:
            result = await asyncio.wait_for(
                self._work(job, latency, failure, blank), job.execution_timeout_s
            )
        except TimeoutError:
            self._finish(job, TIMED_OUT, error="job exceeded its execution timeout")
            return
        if isinstance(result, dict) and "error" in result:
            self._finish(job, FAILED, error=str(result["error"]))
        else:
            self._finish(job, COMPLETED, output=result)

    async def _work(self, job: Job, latency: float, failure: str | None, blank: bool) -> Any:
        if failure:
            await asyncio.sleep(latency)
            return {"error": failure}
        if self.config.latency_scale == "pixels":
            # The render runs within the simulated GPU time rather than after it, so a job's
            # executionTime is its latency (as a GPU's would be), not that plus however long
            # this machine's CPU took to draw the sketch while other jobs queued for it.
            result, _ = await asyncio.gather(self._render(job, blank), asyncio.sleep(latency))
            return result
        await asyncio.sleep(latency)
        return await self._render(job, blank)

    async def _render(self, job: Job, blank: bool) -> Any:
        payload = {"id": job.id, "input": job.input}
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self.executor, blank_output if blank else worker_handler, payload
            )
        except Exception as exc:  # the handler's crash is the job's FAILED, as on RunPod
            logger.exception("handler raised for job %s", job.id)
            return {"error": f"{type(exc).__name__}: {exc}"}

    async def _deliver_webhook(self, url: str, payload: dict[str, Any]) -> None:
        if self.config.drop_webhooks and self.rng.random() < self.config.drop_webhooks:
            self.webhooks["dropped"] += 1
            return
        assert self.http is not None
        for attempt in range(WEBHOOK_TRIES):
            if attempt:
                await asyncio.sleep(self.config.webhook_retry_delay)
            self.webhooks["attempts"] += 1
            try:
                async with self.http.post(url, json=payload) as response:
                    if 200 <= response.status < 300:
                        self.webhooks["delivered"] += 1
                        return
                    logger.info("webhook for %s got HTTP %s", payload["id"], response.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                logger.info("webhook for %s failed: %s", payload["id"], exc)
        self.webhooks["failed"] += 1

    # -- control plane ------------------------------------------------------------------------

    @staticmethod
    def _loopback_only(request: web.Request) -> web.Response | None:
        remote = request.remote or ""
        if remote.startswith(LOOPBACK):
            return None
        return _error(403, "the emulator control plane answers loopback clients only")

    async def handle_config(self, request: web.Request) -> web.Response:
        refused = self._loopback_only(request)
        if refused:
            return refused
        if request.method == "POST":
            try:
                changes = await request.json()
            except (json.JSONDecodeError, UnicodeDecodeError):
                return _error(400, "body must be JSON")
            if not isinstance(changes, dict):
                return _error(400, "body must be a JSON object of settings")
            try:
                self.apply_config(self.config.updated(changes))
            except ConfigError as exc:
                return _error(400, str(exc))
        return web.json_response(self.config.as_json())

    def apply_config(self, config: EmulatorConfig) -> None:
        """Switch to ``config`` live: resizes the worker pool, reseeds on a new seed."""
        previous, self.config = self.config, config
        if config.seed != previous.seed:
            self.rng = random.Random(config.seed)
        if config.workers != previous.workers and not self.autoscaler.enabled:
            self._resize_workers(config.workers)
        if (config.min_workers, config.max_workers) != (previous.min_workers, previous.max_workers):
            self.autoscaler.reconfigure()

    async def handle_stats(self, request: web.Request) -> web.Response:
        refused = self._loopback_only(request)
        if refused:
            return refused
        return web.json_response(self.stats())

    def stats(self) -> dict[str, Any]:
        """Counters since start or the last reset; the shape is in the package docstring."""
        states = Counter(job.status for job in self.jobs.values() if job.status in ACTIVE)
        job_counts = {
            key: self.job_counts[key]
            for key in (
                "submitted",
                "retried",
                COMPLETED,
                FAILED,
                CANCELLED,
                TIMED_OUT,
                "TTL_EXPIRED",
                "ambiguous",
            )
        }
        return {
            "requests": {op: dict(codes) for op, codes in sorted(self.requests.items())},
            "jobs": job_counts,
            "in_queue": states[IN_QUEUE],
            "in_progress": states[IN_PROGRESS],
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "stored_jobs": len(self.jobs),
            "executions": self.executions,
            "runs_per_input": self.ledger.as_json(),
            "billed_ms": self.billed_ms,
            "billed_count": self.billed_count,
            "billed_jobs": dict(self.billed_jobs),
            "ambiguous_jobs": list(self.ambiguous_jobs),
            "endpoints": {
                endpoint: {
                    key: counts[key]
                    for key in (
                        "submitted",
                        COMPLETED,
                        FAILED,
                        CANCELLED,
                        TIMED_OUT,
                        "billed_ms",
                        "billed_count",
                    )
                }  # fmt: skip
                for endpoint, counts in sorted(self.endpoint_counts.items())
            },
            "webhooks": {
                key: self.webhooks[key] for key in ("delivered", "failed", "dropped", "attempts")
            },
            "workers": self.health()["workers"],
            "uptime_s": round(time.monotonic() - self.started_at, 3),
        }

    async def handle_endpoint(self, request: web.Request) -> web.Response:
        """RunPod's REST API `GET /v1/endpoints/<id>`: the endpoint's scaling settings."""
        supplied = request.headers.get("Authorization", "")
        if supplied.lower().startswith("bearer "):
            supplied = supplied[7:].strip()
        if not hmac.compare_digest(supplied.encode(), self.config.api_key.encode()):
            return _error(401, "Unauthorized")
        if request.match_info["endpoint_id"] != self.config.endpoint_id:
            return _error(404, "endpoint not found")
        return web.json_response(self.autoscaler.endpoint_settings())

    async def handle_scaling(self, request: web.Request) -> web.Response:
        refused = self._loopback_only(request)
        if refused:
            return refused
        return web.json_response(self.autoscaler.as_json())

    async def handle_reset(self, request: web.Request) -> web.Response:
        refused = self._loopback_only(request)
        if refused:
            return refused
        options: Any = {}
        if request.can_read_body:
            try:
                options = await request.json()
            except (json.JSONDecodeError, UnicodeDecodeError):
                return _error(400, "body must be JSON")
        restore = bool(isinstance(options, dict) and options.get("restore_config"))
        self.reset(restore_config=restore)
        return web.json_response({"reset": True, "config": self.config.as_json()})

    def reset(self, *, restore_config: bool = False) -> None:
        """Forget every job and counter; keep the config unless ``restore_config``."""
        for job in self.jobs.values():
            self._cancel_timers(job)
            if job.task is not None:
                job.task.cancel()
            job.done.set()
        self.jobs.clear()
        while not self.queue.empty():
            self.queue.get_nowait()
        for task in self._webhook_tasks:
            task.cancel()
        self._reset_counters()
        self.autoscaler.reset()
        if restore_config:
            self.apply_config(self.initial_config)
        # A fixed seed should replay the same fault pattern after every reset.
        self.rng = random.Random(self.config.seed)
