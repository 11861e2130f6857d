"""2. Orchestration throughput: 2,000 images of 256x256 at zero GPU latency, 64 emulator workers.

With no GPU time, what is left is comicgen's own work per image (two RunPod calls or a webhook,
a PNG stored, a charge in the ledger, two pushed events), plus the emulator rendering the PNG
with the real handler on the same 2 cores. Measured from just before the POST to the later of
the batch's finished_at and the WebSocket client having received every image's `completed`.
"""

from __future__ import annotations

import time

from bench.stack import Stack, StackConfig, report, runpod_calls, verdict

IMAGES = 2000
WORKERS = 64
# Enough that every running chunk (16 threads x 10 images) can have all its images on RunPod.
MAX_IN_FLIGHT = 160
TARGET = 150.0


def main() -> dict[str, object]:
    config = StackConfig(
        emulator={"workers": WORKERS, "latency": 0},
        env={"RUNPOD_MAX_IN_FLIGHT": str(MAX_IN_FLIGHT), "COMICGEN_MAX_BATCH_IMAGES": "20000"},
    )
    with Stack(config) as stack:
        stack.submit(5, prefix="warm-up")
        time.sleep(3)
        stack.reset_emulator()
        stack.reset_statement_count()
        start = time.time()
        batch = stack.submit(IMAGES, prefix="throughput")
        accepted = time.time() - start
        watcher = stack.watch(batch["id"])
        row = stack.wait_terminal(batch["id"], timeout=240)
        watcher.wait_for(IMAGES, timeout=15)
        watcher.stop()
        stored = row["finished_at"].timestamp() - start
        pushed = max(watcher.completed_at.values(), default=start) - start
        elapsed = max(stored, pushed)
        stats = stack.emulator_stats()
        statements = stack.statement_count()
    rate = IMAGES / elapsed
    per_image = statements / IMAGES
    calls = runpod_calls(stats)
    figures = {
        "images": IMAGES, "emulator_workers": WORKERS, "max_in_flight": MAX_IN_FLIGHT,
        "submit_s": round(accepted, 3), "stored_s": round(stored, 3), "pushed_s": round(pushed, 3),
        "images_per_s": round(rate, 1), "status": row["status"],
        "sql_statements": statements, "sql_statements_per_image": round(per_image, 2),
        "pushed_images": len(watcher.completed_at), "runpod_calls": calls,
        "duplicates": stats["runs_per_input"]["duplicates"],
        "websocket_error": repr(watcher.error) if watcher.error else None,
        "websocket_events": watcher.events,
    }  # fmt: skip
    report(
        "throughput",
        [
            ("POST answered (s)", accepted, "", ""),
            ("all stored (s)", stored, "", ""),
            ("all pushed (s)", pushed, "", ""),
            ("images pushed over WebSocket", len(watcher.completed_at), str(IMAGES), ""),
            ("images / s", rate, ">= 150", verdict(rate >= TARGET)),
            ("SQL statements / image (every process)", per_image, "", ""),
        ],
        figures,
    )
    return figures


if __name__ == "__main__":
    main()
