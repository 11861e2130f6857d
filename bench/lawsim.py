"""The control law's trade-off, simulated: GPU utilisation against how long a high job waits in
RunPod's FIFO queue, for the queue allowance ("feed") the law keeps, on 1 to 1,000 GPUs.

No stack: a discrete-event model of one endpoint. W workers run jobs of 1 time unit (+/- 10 %);
comicgen keeps W + feed jobs in flight; when a job ends, its replacement reaches RunPod a
refill delay later (webhook, chunk wake-up, claim, /run: measured on this machine at 30-150 ms,
i.e. 0.05-0.2 of a 0.5-1 s job), exponentially distributed. A high job is submitted at a random
moment: it takes the next freed slot, reaches RunPod a refill delay later, and waits behind
whatever is queued. Printed per case: utilisation (busy GPU time / available) and the high
job's mean wait in RunPod's queue, in job lengths.

    .venv/bin/python -m bench.lawsim
"""

from __future__ import annotations

import heapq
import json
import math
import random
from collections import deque

JOBS_PER_WORKER = 60
SAMPLES = 200


def simulate(workers: int, feed: int, refill: float, seed: int = 1) -> dict[str, float]:
    """Utilisation and the high job's mean queue wait for one endpoint."""
    rng = random.Random(seed)
    horizon_jobs = workers * JOBS_PER_WORKER
    queue: deque[float] = deque()  # arrival times of jobs waiting at RunPod
    events: list[tuple[float, int, str]] = []  # (time, tiebreak, kind)
    counter = 0

    def push(at: float, kind: str) -> None:
        nonlocal counter
        counter += 1
        heapq.heappush(events, (at, counter, kind))

    idle = workers
    busy_time = 0.0
    started = 0
    for _ in range(workers + feed):
        push(0.0, "arrive")
    now = 0.0
    # A high job arrives at sampled times; its wait is measured against the queue it meets.
    high_at = sorted(rng.uniform(5.0, JOBS_PER_WORKER - 5.0) for _ in range(SAMPLES))
    high_waits: list[float] = []
    pending_high: list[float] = []  # submitted, waiting for a freed slot
    while events and started < horizon_jobs:
        now, _, kind = heapq.heappop(events)
        while high_at and high_at[0] <= now:
            pending_high.append(high_at.pop(0))
        if kind == "arrive":
            queue.append(now)
        elif kind == "end":
            idle += 1
            # The freed slot: a waiting high job takes it first (the limiter's priority).
            if pending_high:
                pending_high.pop(0)
                push(now + rng.expovariate(1 / refill), "high")
            else:
                push(now + rng.expovariate(1 / refill), "arrive")
        elif kind == "high":
            # Its wait in RunPod's queue, roughly: the jobs ahead of it, served by all workers
            # (the rest of the jobs running when it arrives is left out: it is the same for
            # every feed).
            high_waits.append(len(queue) / workers)
            push(now, "arrive")  # from here on it behaves as any job
        while idle and queue:
            queue.popleft()
            idle -= 1
            started += 1
            length = rng.uniform(0.9, 1.1)
            busy_time += length
            push(now + length, "end")
    utilisation = busy_time / (workers * now) if now else 0.0
    return {
        "utilisation": round(min(1.0, utilisation), 3),
        "high_wait_jobs": round(sum(high_waits) / len(high_waits), 3) if high_waits else 0.0,
    }


def main() -> None:
    rows = []
    print(f"{'GPUs':>6} {'refill':>6} {'feed':>14} {'utilisation':>11} {'high waits':>10}")
    for workers in (1, 4, 20, 1000):
        for refill in (0.05, 0.2):
            for name, feed in (
                ("0", 0),
                ("ceil(W/4)", max(1, math.ceil(workers / 4))),
                ("W", workers),
            ):
                figures = simulate(workers, feed, refill)
                rows.append({"gpus": workers, "refill": refill, "feed": name, **figures})
                print(f"{workers:>6} {refill:>6} {name:>14} {figures['utilisation']:>11} "
                      f"{figures['high_wait_jobs']:>10}")  # fmt: skip
    print(json.dumps({"bench": "lawsim", "rows": rows}))


if __name__ == "__main__":
    main()
