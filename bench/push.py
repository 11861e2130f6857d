"""6. Push latency: from an image's row stored as completed in PostgreSQL (ImageJob.finished_at)
to a WebSocket client (`/ws/batches/<id>/?token=`) receiving its `image.updated` event; and
from the last panel's event to the batch's terminal event (how long "all panels done, still
running" shows), and how many events arrived out of seq order (0 is the contract).

Both clocks are this machine's wall clock. finished_at is taken inside the transaction that
completes the image; the event leaves after its commit, through Redis and daphne.
"""

from __future__ import annotations

import time

from bench.stack import Stack, StackConfig, percentile, report, verdict

IMAGES = 200
WORKERS = 20
LATENCY = 0.2


def main() -> dict[str, object]:
    config = StackConfig(
        emulator={"workers": WORKERS, "latency": LATENCY},
        env={"RUNPOD_MAX_IN_FLIGHT": "40"},
    )
    with Stack(config) as stack:
        stack.submit(5, prefix="warm-up")
        time.sleep(2)
        # No GPU runs until the client is connected, so every image's event is a live one.
        stack.configure_emulator(workers=0)
        stack.reset_emulator()
        batch = stack.submit(IMAGES, prefix="push")
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
    p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
    last_panel_event = max(watcher.completed_at.values(), default=float("nan"))
    done_after_ms = ((watcher.terminal_at or float("nan")) - last_panel_event) * 1000
    stored_after_ms = (row["finished_at"].timestamp() - max(finished.values())) * 1000
    figures = {
        "images": IMAGES, "received": len(latencies), "p50_ms": round(p50, 1),
        "p95_ms": round(p95, 1), "max_ms": round(max(latencies, default=float("nan")), 1),
        "last_panel_to_done_event_ms": round(done_after_ms, 1),
        "last_panel_to_finished_at_ms": round(stored_after_ms, 1),
        "seq_inversions": watcher.inversions,
    }  # fmt: skip
    report(
        "push",
        [
            (
                "completed events received",
                len(latencies),
                str(IMAGES),
                verdict(len(latencies) == IMAGES),
            ),
            ("p50 stored -> received (ms)", p50, "", ""),
            ("p95 stored -> received (ms)", p95, "< 250", verdict(p95 < 250)),
            ("max (ms)", figures["max_ms"], "", ""),
            (
                "last panel event -> completed event (ms)",
                done_after_ms,
                "< 250",
                verdict(done_after_ms < 250),
            ),
            ("last panel stored -> batch finished_at (ms)", stored_after_ms, "", ""),
            ("events out of seq order", watcher.inversions, "0", verdict(watcher.inversions == 0)),
        ],
        figures,
    )
    return figures


if __name__ == "__main__":
    main()
