"""An autoscaling endpoint, as RunPod's queue-delay scaler runs one.

On when ``max_workers`` > 0: the endpoint starts with ``min_workers`` warm workers (RunPod's
active workers) and, every ``TICK_S``:

- adds workers while jobs wait: with no worker at all, one as soon as a job is queued; else,
  once the oldest queued job has waited ``scaler_delay`` seconds, one per queued job not
  already covered by an initializing worker, up to ``max_workers``. A new worker is
  ``initializing`` (in ``/health``) for ``cold_start`` seconds before it takes jobs;
- retires a worker idle for ``idle_timeout`` seconds, never below ``min_workers``.

``GET /v1/endpoints/<id>`` answers the endpoint's settings as RunPod's REST API does
(``workersMin``, ``workersMax``, ``scalerType``, ``scalerValue``, ``idleTimeout``; a fixed pool
shows min = max = ``workers``). ``GET /_emulator/scaling`` answers the scale curve since the
start or the last reset: ``history``, a list of ``[seconds, able, initializing]`` at every
change (``able`` = idle + running workers), and ``workers`` now.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.emulator.server import Emulator, WorkerSlot

logger = logging.getLogger("worker.emulator")

TICK_S = 0.1
MAX_HISTORY = 10_000


class Autoscaler:
    """The scaler of one emulator; ``step()`` is one decision, ``run()`` repeats it."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        # (queued at, job id, generation) in queue order: the oldest waiting job is the first
        # entry still IN_QUEUE under the same generation.
        self.waiting: deque[tuple[float, str, int]] = deque()
        self.history: list[list[float]] = []
        self.epoch = 0.0
        self._last: tuple[int, int] | None = None
        self.task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.emulator.config.max_workers > 0

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.epoch = loop.time()
        if self.enabled:
            self.emulator._add_workers(self.emulator.config.min_workers, cold=False)
        self.record(loop.time())
        self.task = asyncio.create_task(self.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    def queued(self, job_id: str, generation: int, at: float) -> None:
        self.waiting.append((at, job_id, generation))

    def reset(self) -> None:
        self.waiting.clear()
        self.history = []
        self._last = None
        self.epoch = asyncio.get_running_loop().time()
        self.record(self.epoch)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(TICK_S)
            try:
                self.step(loop.time())
            except Exception:  # a bug in the scaler must not stop the endpoint
                logger.exception("autoscaler step failed")

    def _waiting_jobs(self) -> list[float]:
        """When each job still IN_QUEUE was queued, oldest first (stale entries dropped)."""
        jobs = self.emulator.jobs
        kept: deque[tuple[float, str, int]] = deque()
        for at, job_id, generation in self.waiting:
            job = jobs.get(job_id)
            if job is not None and job.status == "IN_QUEUE" and job.generation == generation:
                kept.append((at, job_id, generation))
        self.waiting = kept
        return [at for at, _, _ in kept]

    def step(self, now: float) -> None:
        """One scaling decision at loop time ``now``."""
        if self.enabled:
            config = self.emulator.config
            active = [slot for slot in self.emulator.slots.values() if not slot.retiring]
            initializing = sum(1 for slot in active if slot.state == "initializing")
            waiting = self._waiting_jobs()
            room = config.max_workers - len(active)
            if waiting and room > 0:
                if not active:
                    self.emulator._add_workers(1, cold=True)
                elif now - waiting[0] >= config.scaler_delay:
                    self.emulator._add_workers(min(room, len(waiting) - initializing), cold=True)
            self.retire_idle(now, active)
        self.record(now)

    def retire_idle(self, now: float, active: list[WorkerSlot]) -> None:
        config = self.emulator.config
        surplus = len(active) - config.min_workers
        idle = sorted(
            (slot for slot in active if slot.state == "idle"), key=lambda slot: slot.idle_since
        )
        for slot in idle:
            if surplus <= 0 or now - slot.idle_since < config.idle_timeout:
                break
            self.emulator._retire(slot)
            surplus -= 1

    def reconfigure(self) -> None:
        """After a live config change: bring the pool within [min_workers, max_workers]."""
        if not self.enabled:
            return
        config = self.emulator.config
        active = [slot for slot in self.emulator.slots.values() if not slot.retiring]
        if len(active) < config.min_workers:
            self.emulator._add_workers(config.min_workers - len(active), cold=True)
        surplus = len(active) - config.max_workers
        for slot in sorted(active, key=lambda slot: slot.state != "idle"):
            if surplus <= 0:
                break
            self.emulator._retire(slot)
            surplus -= 1

    def record(self, now: float) -> None:
        slots = [slot for slot in self.emulator.slots.values() if not slot.retiring]
        initializing = sum(1 for slot in slots if slot.state == "initializing")
        state = (len(slots) - initializing, initializing)
        if state != self._last and len(self.history) < MAX_HISTORY:
            self._last = state
            self.history.append([round(now - self.epoch, 3), *state])

    def endpoint_settings(self) -> dict[str, Any]:
        """The endpoint as RunPod's REST API shows it: a fixed pool is min = max = workers."""
        config = self.emulator.config
        autoscaled = self.enabled
        return {
            "id": config.endpoint_id,
            "workersMin": config.min_workers if autoscaled else config.workers,
            "workersMax": config.max_workers if autoscaled else config.workers,
            "scalerType": "QUEUE_DELAY",
            "scalerValue": config.scaler_delay,
            "idleTimeout": config.idle_timeout,
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "history": self.history,
            "workers": self.emulator.health()["workers"],
            "enabled": self.enabled,
        }
