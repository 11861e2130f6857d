"""6. Push latency: from an image's row stored as completed in PostgreSQL (ImageJob.finished_at)
to a WebSocket client (`/ws/batches/<id>/?token=`) receiving its `image.updated` event.

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
        watcher.stop()
        finished = stack.image_finished_at(batch["id"])
    latencies = [
        (received - finished[image_id]) * 1000
        for image_id, received in watcher.completed_at.items()
        if image_id in finished
    ]
    p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
    figures = {
        "images": IMAGES, "received": len(latencies), "p50_ms": round(p50, 1),
        "p95_ms": round(p95, 1), "max_ms": round(max(latencies, default=float("nan")), 1),
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
        ],
        figures,
    )
    return figures


if __name__ == "__main__":
    main()
