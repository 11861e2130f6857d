"""6. Push latency: from an image's row stored as completed in PostgreSQL (ImageJob.finished_at)
to a WebSocket client (`/ws/batches/<id>/?token=`) receiving its `image.updated` event; and
from the last panel's event to the batch's terminal event (how long "all panels done, still
running" shows), and how many events arrived out of seq order (0 is the contract).

RUNS batches of IMAGES are measured one after the other, after a warm-up (Stack.warm_up), and
the percentiles are over all their events: one batch's 200 events gave p95s from 120 to 360 ms
for the same code, a figure too noisy to hold a target to. Each run's p95 is printed too.

Both clocks are this machine's wall clock. finished_at is taken when the worker has checked and
saved the panel, before the transaction that writes its pass's results; the event leaves after
that commit, through Redis and the web server.
"""

from __future__ import annotations

import time
from typing import Any

from bench.stack import Stack, StackConfig, percentile, report, verdict

IMAGES = 200
RUNS = 3
WORKERS = 20
LATENCY = 0.2


def one_run(stack: Stack, number: int) -> dict[str, Any]:
    """One batch of IMAGES: each event's latency, and the batch's own figures."""
    # No GPU runs until the client is connected, so every image's event is a live one.
    stack.configure_emulator(workers=0)
    stack.reset_emulator()
    batch = stack.submit(IMAGES, prefix=f"push {number}")
    watcher = stack.watch(batch["id"])
    stack.configure_emulator(workers=WORKERS)
    stack.wait_terminal(batch["id"], timeout=120)
    watcher.wait_for(IMAGES, timeout=10)
    deadline = time.monotonic() + 10
    while watcher.terminal_at is None and time.monotonic() < deadline:
        time.sleep(0.02)
    watcher.stop()
    finished = stack.image_finished_at(batch["id"])
    row = stack.batch_row(batch["id"])
    latencies = [
        (received - finished[image_id]) * 1000
        for image_id, received in watcher.completed_at.items()
        if image_id in finished
    ]
    last_panel_event = max(watcher.completed_at.values(), default=float("nan"))
    return {
        "latencies": latencies,
        "done_after_ms": ((watcher.terminal_at or float("nan")) - last_panel_event) * 1000,
        "stored_after_ms": (row["finished_at"].timestamp() - max(finished.values())) * 1000,
        "inversions": watcher.inversions,
    }


def main() -> dict[str, object]:
    config = StackConfig(
        emulator={"workers": WORKERS, "latency": LATENCY},
        env={"RUNPOD_MAX_IN_FLIGHT": "40"},
    )
    with Stack(config) as stack:
        stack.warm_up()
        time.sleep(2)
        runs = [one_run(stack, number) for number in range(RUNS)]
    latencies = [latency for run in runs for latency in run["latencies"]]
    p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
    run_p95s = [round(percentile(run["latencies"], 95), 1) for run in runs]
    # The worst run's: each is a figure of its own batch. A negative one is a "completed" sent
    # before a panel's own event (the panel's chunk ran in another worker process), counted too.
    done_after_ms = max(run["done_after_ms"] for run in runs)
    completed_first = sum(run["done_after_ms"] < 0 for run in runs)
    stored_after_ms = max(run["stored_after_ms"] for run in runs)
    inversions = sum(run["inversions"] for run in runs)
    figures = {
        "images": IMAGES * RUNS, "runs": RUNS, "received": len(latencies),
        "p50_ms": round(p50, 1), "p95_ms": round(p95, 1), "p95_ms_each_run": run_p95s,
        "max_ms": round(max(latencies, default=float("nan")), 1),
        "last_panel_to_done_event_ms": round(done_after_ms, 1),
        "last_panel_to_done_event_ms_each_run": [round(run["done_after_ms"], 1) for run in runs],
        "completed_before_a_panel": completed_first,
        "last_panel_to_finished_at_ms": round(stored_after_ms, 1),
        "seq_inversions": inversions,
    }  # fmt: skip
    report(
        "push",
        [
            (
                "completed events received",
                len(latencies),
                str(IMAGES * RUNS),
                verdict(len(latencies) == IMAGES * RUNS),
            ),
            ("p50 stored -> received (ms)", p50, "", ""),
            ("p95 stored -> received (ms)", p95, "< 250", verdict(p95 < 250)),
            ("  p95 of each run (ms)", " / ".join(map(str, run_p95s)), "", ""),
            ("max (ms)", figures["max_ms"], "", ""),
            (
                "last panel event -> completed event (ms, worst run)",
                done_after_ms,
                "< 250",
                verdict(done_after_ms < 250),
            ),
            (
                "  runs whose completed event came before a panel's",
                completed_first,
                "0",
                verdict(completed_first == 0),
            ),  # fmt: skip
            ("last panel stored -> batch finished_at (ms, worst run)", stored_after_ms, "", ""),
            ("events out of seq order", inversions, "0", verdict(inversions == 0)),
        ],
        figures,
    )
    return figures


if __name__ == "__main__":
    main()
