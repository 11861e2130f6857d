"""10. The sketch worker's render time: the Pillow panel the emulator (and the demo worker image)
draws for every job, a median of RUNS renders per size after a warm-up. Every panel of every
other bench is drawn by it on this machine's cores, so it is part of what they measure.

Budgets: 15 ms at 256 x 256 (the benches' size), 80 ms at 768 x 768. Moved here from the test
suite, where a wall-clock bound failed on a busy machine for reasons that were not the code's.
"""

from __future__ import annotations

import statistics
import time

from bench.stack import report, verdict
from worker.render import render_panel

RUNS = 20
BUDGETS_MS = {256: 15.0, 768: 80.0}


def median_ms(size: int) -> float:
    render_panel("warm-up", seed=0, width=size, height=size)
    timings = []
    for seed in range(RUNS):
        started = time.perf_counter()
        render_panel("two robots fighting in the city", seed=seed, width=size, height=size)
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def main() -> dict[str, object]:
    medians = {size: round(median_ms(size), 2) for size in BUDGETS_MS}
    report(
        "render",
        [
            (f"{size} x {size}: median render (ms)", medians[size], f"< {budget:g}",
             verdict(medians[size] < budget))
            for size, budget in BUDGETS_MS.items()
        ],
        {"runs": RUNS, "median_ms": medians, "budget_ms": BUDGETS_MS},
    )  # fmt: skip
    return {"median_ms": medians}


if __name__ == "__main__":
    main()
