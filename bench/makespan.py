"""1 and 3. Makespan of a 200-image batch against the ideal, and the naive client beside it.

Emulator: 20 workers at 0.5 s per image, so the ideal is ceil(200 / 20) x 0.5 s = 5 s: every
GPU busy from the submit to the last image. Ours is measured from just before the POST to the
batch's finished_at. The naive client (bench/naive.py) then runs the same 200 images on the same
emulator, after a reset of its counters.
"""

from __future__ import annotations

import math
import time

from bench import naive
from bench.stack import WORKER_CONCURRENCY, Stack, StackConfig, report, runpod_calls, verdict

IMAGES = 200
WORKERS = 20
LATENCY = 0.5
# Above the emulator's workers, so its queue never runs dry between a job's end and the next
# /run; RunPod queues what exceeds its workers, as the emulator does.
MAX_IN_FLIGHT = 40
TARGET = 1.15


def main() -> dict[str, float]:
    ideal = math.ceil(IMAGES / WORKERS) * LATENCY
    config = StackConfig(
        emulator={"workers": WORKERS, "latency": LATENCY},
        env={"RUNPOD_MAX_IN_FLIGHT": str(MAX_IN_FLIGHT)},
    )
    with Stack(config) as stack:
        stack.submit(5, prefix="warm-up")  # first-request costs (imports, connections)
        time.sleep(3)
        stack.reset_emulator()
        start = time.time()
        batch = stack.submit(IMAGES, prefix="makespan")
        row = stack.wait_terminal(batch["id"], timeout=120)
        ours = row["finished_at"].timestamp() - start
        stats = stack.emulator_stats()
        calls = runpod_calls(stats)
        ours_calls = sum(calls.values()) / IMAGES
        duplicates = stats["runs_per_input"]["duplicates"]

        stack.reset_emulator()
        naive_result = naive.run(
            f"{stack.emulator_url}/v2/comicgen-bench", "bench-key", IMAGES,
            threads=WORKER_CONCURRENCY, media_dir=stack.dir / "naive",
        )  # fmt: skip
        naive_calls = sum(runpod_calls(stack.emulator_stats()).values()) / IMAGES

    ratio = ours / ideal
    figures = {
        "images": IMAGES, "emulator_workers": WORKERS, "latency_s": LATENCY,
        "max_in_flight": MAX_IN_FLIGHT, "ideal_s": ideal, "makespan_s": round(ours, 3),
        "ratio": round(ratio, 3), "status": row["status"], "runpod_calls": calls,
        "calls_per_image": round(ours_calls, 3), "duplicates": duplicates,
        "naive_makespan_s": round(naive_result["makespan_s"], 3),
        "naive_ratio": round(naive_result["makespan_s"] / ideal, 3),
        "naive_calls_per_image": round(naive_calls, 3), "naive_threads": WORKER_CONCURRENCY,
        "naive_failed": naive_result["failed"],
    }  # fmt: skip
    report(
        "makespan",
        [
            ("ideal (s)", ideal, "", ""),
            ("comicgen makespan (s)", ours, "", ""),
            ("comicgen makespan / ideal", ratio, "<= 1.15", verdict(ratio <= TARGET)),
            ("comicgen RunPod calls / image", ours_calls, "", ""),
            ("naive makespan (s)", naive_result["makespan_s"], "", ""),
            ("naive makespan / ideal", naive_result["makespan_s"] / ideal, "", ""),
            ("naive RunPod calls / image", naive_calls, "", ""),
        ],
        figures,
    )
    return figures


if __name__ == "__main__":
    main()
