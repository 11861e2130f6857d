"""1 and 3. Makespan of a 200-image batch against the ideal, on the DEFAULT settings (the bench
sets no RUNPOD_MAX_IN_FLIGHT: the in-flight target follows the endpoint's /health), and the
naive client beside it.

- 20 GPUs at 0.5 s per image: the ideal is ceil(200 / 20) x 0.5 s = 5 s, every GPU busy from
  the submit to the last image. The naive client (bench/naive.py) then runs the same 200 images
  on the same emulator, after a reset of its counters.
- 100 GPUs at 0.5 s: ideal 1 s.
- An autoscaling endpoint (min 2 warm workers, max 20, RunPod's queue-delay scaler at its
  default 4 s, a cold start of COLD_START s): the ideal is what the scale curve the run
  produced allows (every worker busy from the moment it is ready), and, beside it, the best
  curve any client could get (every job queued at once: the scaler adds 18 workers after 4 s).

Ours is measured from just before the POST to the batch's finished_at.
"""

from __future__ import annotations

import heapq
import math
import time
from typing import Any

import requests

from bench import naive
from bench.stack import (
    WORKER_CONCURRENCY,
    WORKER_PROCESSES,
    Stack,
    StackConfig,
    report,
    runpod_calls,
    verdict,
)

IMAGES = 200
LATENCY = 0.5
TARGET = 1.10
# The naive client gets as many threads as comicgen's Celery workers have in all.
NAIVE_THREADS = WORKER_PROCESSES * WORKER_CONCURRENCY
MIN_WORKERS, MAX_WORKERS, SCALER_DELAY, COLD_START = 2, 20, 4.0, 2.0


def ideal_for_curve(curve: list[tuple[float, int]], images: int, latency: float) -> float:
    """The makespan if every worker ran jobs back to back from when it became able: `curve`
    is (seconds, workers able) steps. Workers that leave are ignored (they leave idle)."""
    free: list[float] = []
    able = 0
    for at, count in sorted(curve):
        for _ in range(count - able):
            heapq.heappush(free, at)
        able = max(able, count)
    if not free:
        return math.inf
    finish = 0.0
    for _ in range(images):
        start = heapq.heappop(free)
        finish = start + latency
        heapq.heappush(free, finish)
    return finish


def best_curve() -> list[tuple[float, int]]:
    """Every job queued at t=0: the oldest waits SCALER_DELAY, then the rest of the workers
    start, ready COLD_START later."""
    return [(0.0, MIN_WORKERS), (SCALER_DELAY + COLD_START, MAX_WORKERS)]


def timed_batch(stack: Stack, prefix: str) -> tuple[float, dict[str, Any]]:
    stack.reset_emulator()
    start = time.time()
    batch = stack.submit(IMAGES, prefix=prefix)
    row = stack.wait_terminal(batch["id"], timeout=180)
    return row["finished_at"].timestamp() - start, row


def fixed_endpoints() -> dict[str, Any]:
    config = StackConfig(emulator={"workers": 20, "latency": LATENCY})
    figures: dict[str, Any] = {}
    with Stack(config) as stack:
        stack.warm_up()
        time.sleep(3)
        ours, row = timed_batch(stack, "makespan-20")
        stats = stack.emulator_stats()
        figures["gpus_20"] = {
            "ideal_s": 5.0, "makespan_s": round(ours, 3), "ratio": round(ours / 5.0, 3),
            "status": row["status"], "max_in_flight": stats["max_in_flight"],
            "calls_per_image": round(sum(runpod_calls(stats).values()) / IMAGES, 3),
            "duplicates": stats["runs_per_input"]["duplicates"],
        }  # fmt: skip

        stack.reset_emulator()
        naive_result = naive.run(
            f"{stack.emulator_url}/v2/comicgen-bench", "bench-key", IMAGES,
            threads=NAIVE_THREADS, media_dir=stack.dir / "naive",
        )  # fmt: skip
        figures["naive_20"] = {
            "makespan_s": round(naive_result["makespan_s"], 3),
            "ratio": round(naive_result["makespan_s"] / 5.0, 3),
            "calls_per_image": round(
                sum(runpod_calls(stack.emulator_stats()).values()) / IMAGES, 3
            ),
            "threads": NAIVE_THREADS, "failed": naive_result["failed"],
        }  # fmt: skip

        stack.configure_emulator(workers=100)
        time.sleep(1)  # the target follows /health within a second
        ours, row = timed_batch(stack, "makespan-100")
        stats = stack.emulator_stats()
        figures["gpus_100"] = {
            "ideal_s": 1.0, "makespan_s": round(ours, 3), "ratio": round(ours / 1.0, 3),
            "status": row["status"], "max_in_flight": stats["max_in_flight"],
        }  # fmt: skip
    return figures


def autoscaling_endpoint() -> dict[str, Any]:
    config = StackConfig(
        emulator={
            "latency": LATENCY, "min_workers": MIN_WORKERS, "max_workers": MAX_WORKERS,
            "scaler_delay": SCALER_DELAY, "cold_start": COLD_START,
        }
    )  # fmt: skip
    with Stack(config) as stack:
        stack.submit(2, prefix="warm-up")
        time.sleep(3)
        ours, row = timed_batch(stack, "makespan-autoscale")
        scaling = requests.get(f"{stack.emulator_url}/_emulator/scaling", timeout=10).json()
        stats = stack.emulator_stats()
    curve = [(at, able) for at, able, _ in scaling["history"]]
    ideal = ideal_for_curve(curve, IMAGES, LATENCY)
    best = ideal_for_curve(best_curve(), IMAGES, LATENCY)
    ready_at = next((at for at, able in curve if able >= MAX_WORKERS), None)
    return {
        "ideal_for_its_curve_s": round(ideal, 3), "makespan_s": round(ours, 3),
        "ratio": round(ours / ideal, 3), "best_curve_ideal_s": round(best, 3),
        "ratio_to_best_curve": round(ours / best, 3), "all_workers_ready_at_s": ready_at,
        "status": row["status"], "max_in_flight": stats["max_in_flight"],
        "curve": scaling["history"][:40],
    }  # fmt: skip


def main() -> dict[str, Any]:
    figures = fixed_endpoints()
    figures["autoscale"] = autoscaling_endpoint()
    g20, g100, scale, naive_20 = (
        figures["gpus_20"],
        figures["gpus_100"],
        figures["autoscale"],
        figures["naive_20"],
    )
    report(
        "makespan",
        [
            ("20 GPUs: comicgen makespan (s), ideal 5", g20["makespan_s"], "", ""),
            ("20 GPUs: makespan / ideal", g20["ratio"], "<= 1.10", verdict(g20["ratio"] <= TARGET)),
            ("20 GPUs: most jobs at RunPod at once", g20["max_in_flight"], "", ""),
            ("20 GPUs: RunPod calls / image", g20["calls_per_image"], "", ""),
            ("20 GPUs: naive makespan / ideal", naive_20["ratio"], "", ""),
            ("20 GPUs: naive RunPod calls / image", naive_20["calls_per_image"], "", ""),
            ("100 GPUs: comicgen makespan (s), ideal 1", g100["makespan_s"], "", ""),
            (
                "100 GPUs: makespan / ideal",
                g100["ratio"],
                "<= 1.10",
                verdict(g100["ratio"] <= TARGET),
            ),
            ("100 GPUs: most jobs at RunPod at once", g100["max_in_flight"], "", ""),
            ("autoscale 2-20: makespan (s)", scale["makespan_s"], "", ""),
            ("autoscale: ideal for its scale curve (s)", scale["ideal_for_its_curve_s"], "", ""),
            (
                "autoscale: makespan / curve's ideal",
                scale["ratio"],
                "<= 1.10",
                verdict(scale["ratio"] <= TARGET),
            ),
            ("autoscale: 20 workers ready at (s)", scale["all_workers_ready_at_s"], "", ""),
            ("autoscale: ideal, best possible curve (s)", scale["best_curve_ideal_s"], "", ""),
            ("autoscale: makespan / best curve's ideal", scale["ratio_to_best_curve"], "", ""),
        ],  # fmt: skip
        {"images": IMAGES, "latency_s": LATENCY, **figures},
    )
    return figures


if __name__ == "__main__":
    main()
