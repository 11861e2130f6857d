"""2. Orchestration throughput: 2,000 images of 256x256 at zero GPU latency, 64 emulator workers.

With no GPU time, what is left is comicgen's own work per image (a /run call and a webhook,
a PNG checked and stored, a charge in the ledger, two pushed events), plus the emulator
rendering the PNG with the real handler on the same 2 cores. Measured from just before the
POST to the later of the batch's finished_at and the WebSocket client having received every
image's `completed`.

Run twice in one stack: first against an endpoint that answers /run as RunPod documents (at
most RUNPOD_RUN_LIMIT calls per 10 s, then HTTP 429), the verdict; then with that limit off,
what the engine alone does. RunPod's limit caps any client that makes one /run per image at
100 images a second sustained, so the second run is the only one that measures comicgen's own
ceiling once the engine goes faster than that.
"""

from __future__ import annotations

import time
from typing import Any

from bench.stack import Stack, StackConfig, report, runpod_calls, verdict

IMAGES = 2000
WORKERS = 64
# Enough that every running chunk (16 threads x 10 images) can have all its images on RunPod.
MAX_IN_FLIGHT = 160
TARGET = 150.0
# RunPod's documented rate limit for /run (and /runsync) per endpoint: calls per 10 s.
RUNPOD_RUN_LIMIT = 1000


def one_run(stack: Stack, prefix: str) -> dict[str, Any]:
    """Submit IMAGES panels and time them until stored and pushed."""
    stack.reset_emulator()
    stack.reset_statement_count()
    start = time.time()
    batch = stack.submit(IMAGES, prefix=prefix)
    accepted = time.time() - start
    watcher = stack.watch(batch["id"])
    row = stack.wait_terminal(batch["id"], timeout=240)
    watcher.wait_for(IMAGES, timeout=15)
    watcher.stop()
    stored = row["finished_at"].timestamp() - start
    pushed = max(watcher.completed_at.values(), default=start) - start
    stats = stack.emulator_stats()
    statements = stack.statement_count()
    return {
        "submit_s": round(accepted, 3), "stored_s": round(stored, 3), "pushed_s": round(pushed, 3),
        "images_per_s": round(IMAGES / max(stored, pushed), 1), "status": row["status"],
        "sql_statements": statements, "sql_statements_per_image": round(statements / IMAGES, 2),
        "pushed_images": len(watcher.completed_at), "runpod_calls": runpod_calls(stats),
        "run_429s": stats["requests"]["run"].get("429", 0),
        "duplicates": stats["runs_per_input"]["duplicates"],
        "websocket_error": repr(watcher.error) if watcher.error else None,
        "websocket_events": watcher.events,
    }  # fmt: skip


def main() -> dict[str, object]:
    config = StackConfig(
        emulator={"workers": WORKERS, "latency": 0, "rate_limit_run": RUNPOD_RUN_LIMIT},
        env={"RUNPOD_MAX_IN_FLIGHT": str(MAX_IN_FLIGHT), "COMICGEN_MAX_BATCH_IMAGES": "20000"},
    )
    with Stack(config) as stack:
        stack.warm_up()
        time.sleep(10)  # the warm-up's /run calls leave RunPod's rate-limit window
        as_runpod = one_run(stack, "throughput")
        stack.configure_emulator(rate_limit_run=0)
        time.sleep(10)  # the first run's /run calls leave the limiter's window either way
        unlimited = one_run(stack, "unlimited")
    rate, alone = as_runpod["images_per_s"], unlimited["images_per_s"]
    figures = {
        "images": IMAGES, "emulator_workers": WORKERS, "max_in_flight": MAX_IN_FLIGHT,
        "runpod_run_limit_per_10s": RUNPOD_RUN_LIMIT, **as_runpod, "without_run_limit": unlimited,
    }  # fmt: skip
    report(
        "throughput",
        [
            ("POST answered (s)", as_runpod["submit_s"], "", ""),
            ("all stored (s)", as_runpod["stored_s"], "", ""),
            ("all pushed (s)", as_runpod["pushed_s"], "", ""),
            ("images pushed over WebSocket", as_runpod["pushed_images"], str(IMAGES), ""),
            ("images / s", rate, ">= 150", verdict(rate >= TARGET)),
            ("  /run answered 429 (RunPod's limit)", as_runpod["run_429s"], "", ""),
            ("  RunPod's /run limit, sustained (images / s)", RUNPOD_RUN_LIMIT / 10, "", ""),
            ("images / s, the /run limit off", alone, ">= 150", verdict(alone >= TARGET)),
            ("  images pushed, the /run limit off", unlimited["pushed_images"], str(IMAGES), ""),
            (
                "SQL statements / image (every process)",
                as_runpod["sql_statements_per_image"],
                "",
                "",
            ),
        ],  # fmt: skip
        figures,
    )
    return figures


if __name__ == "__main__":
    main()
