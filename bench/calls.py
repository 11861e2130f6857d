"""4. RunPod calls per image (/run + /status + /cancel, counted by the emulator) at 2 s latency,
with webhooks on (COMICGEN_PUBLIC_URL = daphne) and with /status polling only (empty)."""

from __future__ import annotations

import time

from bench.stack import Stack, StackConfig, report, runpod_calls, verdict

IMAGES = 100
WORKERS = 50
LATENCY = 2.0
# Equal to the workers: no job waits in RunPod's queue, where polling would only add calls.
MAX_IN_FLIGHT = 50
TARGETS = {"webhooks": 1.5, "polling": 3.0}


def measure(webhooks: bool) -> dict[str, object]:
    config = StackConfig(
        emulator={"workers": WORKERS, "latency": LATENCY},
        env={"RUNPOD_MAX_IN_FLIGHT": str(MAX_IN_FLIGHT)},
        webhooks=webhooks,
    )
    with Stack(config) as stack:
        stack.reset_emulator()
        start = time.time()
        batch = stack.submit(IMAGES, prefix="calls")
        row = stack.wait_terminal(batch["id"], timeout=120)
        stats = stack.emulator_stats()
    calls = runpod_calls(stats)
    return {
        "calls": calls,
        "per_image": sum(calls.values()) / IMAGES,
        "makespan_s": row["finished_at"].timestamp() - start,
        "status": row["status"],
        "webhooks_delivered": stats["webhooks"]["delivered"],
    }


def main() -> dict[str, object]:
    results = {"webhooks": measure(True), "polling": measure(False)}
    rows = []
    for mode, result in results.items():
        per_image = result["per_image"]
        target = TARGETS[mode]
        rows.append(
            (f"{mode}: calls / image", per_image, f"<= {target}", verdict(per_image <= target))
        )
        rows.append((f"{mode}: /run, /status, /cancel", str(result["calls"]), "", ""))
        rows.append((f"{mode}: makespan (s)", result["makespan_s"], "", ""))
    figures = {
        "images": IMAGES, "emulator_workers": WORKERS, "latency_s": LATENCY,
        "max_in_flight": MAX_IN_FLIGHT,
        **{f"{mode}_{k}": v for mode, result in results.items() for k, v in result.items()},
    }  # fmt: skip
    report("calls", rows, figures)
    return figures


if __name__ == "__main__":
    main()
