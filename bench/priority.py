"""7. A high-priority one-image batch submitted while a big normal batch runs: time from its
POST to its finished_at, on the DEFAULT settings (no RUNPOD_MAX_IN_FLIGHT set by the bench).

- 4 GPUs x 1 s busy with a 200-image normal batch;
- 10 GPUs x 1 s busy with a 500-image normal batch.

RunPod's queue is first in, first out: the in-flight target (batches/capacity.py) keeps it at
a quarter of the GPUs, so a high job, which takes the next freed slot, waits behind about a
quarter of a job's time there. The floor is about: a slot freeing (up to 1 s / GPUs), the
queue ahead (about 0.25 s), the image (1 s), storing and finalizing.
"""

from __future__ import annotations

import time
from typing import Any

from bench.stack import Stack, StackConfig, report, verdict

LATENCY = 1.0
SAMPLES = 3
TARGET = 2.5
SCENARIOS = ((4, 200), (10, 500))


def high_batches(stack: Stack, workers: int, background: int) -> dict[str, Any]:
    stack.configure_emulator(workers=workers)
    time.sleep(1)  # the target follows /health within a second
    busy = stack.submit(background, prefix=f"background {workers}")
    time.sleep(4)  # the normal batch holds every slot by now
    times = []
    for n in range(SAMPLES):
        start = time.time()
        urgent = stack.submit(1, prefix=f"urgent {workers} {n}", priority="high")
        row = stack.wait_terminal(urgent["id"], timeout=60)
        times.append(row["finished_at"].timestamp() - start)
        time.sleep(1)
    stats = stack.emulator_stats()
    done = stack.sql(
        "SELECT count(*) FROM batches_imagejob WHERE batch_id = %s AND status = 'completed'",
        busy["id"],
    )[0][0]
    stack.session.post(f"{stack.web_url}/api/v1/batches/{busy['id']}/cancel/", timeout=30)
    stack.wait_terminal(busy["id"], timeout=60)
    return {
        "emulator_workers": workers, "background_images": background,
        "high_batch_s": [round(t, 3) for t in times], "worst_s": round(max(times), 3),
        "background_completed_meanwhile": done, "max_in_flight": stats["max_in_flight"],
    }  # fmt: skip


def main() -> dict[str, Any]:
    config = StackConfig(emulator={"workers": SCENARIOS[0][0], "latency": LATENCY})
    results = []
    with Stack(config) as stack:
        for workers, background in SCENARIOS:
            results.append(high_batches(stack, workers, background))
    rows: list[tuple[str, Any, str, str]] = []
    for result in results:
        name = f"{result['emulator_workers']} GPUs, {result['background_images']} normal"
        rows += [
            *((f"{name}: high batch {n + 1} (s)", t, "", "")
              for n, t in enumerate(result["high_batch_s"])),
            (f"{name}: worst (s)", result["worst_s"], "<= 2.5",
             verdict(result["worst_s"] <= TARGET)),
            (f"{name}: most jobs at RunPod at once", result["max_in_flight"], "", ""),
        ]  # fmt: skip
    figures = {"latency_s": LATENCY, "scenarios": results}
    report("priority", rows, figures)
    return figures


if __name__ == "__main__":
    main()
