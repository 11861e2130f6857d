"""8. Memory: peak RSS (VmHWM, summed over each process tree) of the web server (uvicorn and its
worker processes) and of the Procfile's `worker` line (its Celery processes, summed too), after
a 1,000-image batch and then a 10,000-image batch at zero latency (256x256). The emulator keeps
results for --result-ttl only (lowered here to 20 s).

VmHWM is a high-water mark, so the 1,000 figure is read before the 10,000 batch starts. The
10,000 batch is given PROCESS_SECONDS (60 s) to run; how far it got is reported with the figures.
"""

from __future__ import annotations

import time

from bench.stack import Stack, StackConfig, report, verdict

SIZES = (1000, 10000)
WORKERS = 64
MAX_IN_FLIGHT = 160
PROCESS_SECONDS = 60.0
LIMIT_MB = 300


def main() -> dict[str, object]:
    config = StackConfig(
        emulator={"workers": WORKERS, "latency": 0, "result_ttl": 20},
        env={"RUNPOD_MAX_IN_FLIGHT": str(MAX_IN_FLIGHT), "COMICGEN_MAX_BATCH_IMAGES": "20000"},
    )
    results = {}
    with Stack(config) as stack:
        baseline = {name: stack.memory_mb(name) for name in ("web", "worker")}
        for size in SIZES:
            start = time.time()
            batch = stack.submit(size, prefix=f"memory {size}")
            # The snapshot of every image is part of the load; daphne may be too busy with the
            # batch's webhooks to send it in time, which is itself a figure.
            connect_started = time.time()
            try:
                watcher = stack.watch(batch["id"], connect_timeout=30)
                snapshot_s: float | None = round(time.time() - connect_started, 1)
            except RuntimeError:
                watcher, snapshot_s = None, None
            try:
                row = stack.wait_terminal(batch["id"], timeout=PROCESS_SECONDS)
                finished = True
            except TimeoutError:
                row, finished = stack.batch_row(batch["id"]), False
            if watcher:
                watcher.stop()
            done = stack.sql(
                "SELECT count(*) FROM batches_imagejob WHERE batch_id = %s "
                "AND status = 'completed'",
                batch["id"],
            )[0][0]
            results[size] = {
                "web": stack.memory_mb("web"),
                "worker": stack.memory_mb("worker"),
                "completed": done, "finished": finished, "status": row["status"],
                "seconds": round(time.time() - start, 1), "snapshot_s": snapshot_s,
            }  # fmt: skip
            # An unfinished batch is left to the teardown: cancelling 10,000 images in one
            # request takes minutes (one event per image, each counting the whole batch).
    small, large = results[SIZES[0]], results[SIZES[1]]
    rows = []
    for name in ("web", "worker"):
        rows.append((f"{name} idle RSS (MB)", baseline[name]["rss_mb"], "", ""))
        for size in SIZES:
            peak = results[size][name]["peak_mb"]
            rows.append((f"{name} peak after {size} (MB)", peak, "< 300", verdict(peak < LIMIT_MB)))
        growth = large[name]["peak_mb"] - small[name]["peak_mb"]
        rows.append((f"{name} growth 1k -> 10k (MB)", round(growth, 1), "~ 0", ""))
    for size in SIZES:
        rows.append((f"{size}: completed in time", f"{results[size]['completed']}", str(size), ""))
        rows.append((f"{size}: WebSocket snapshot (s)", str(results[size]["snapshot_s"]), "", ""))
    figures = {"baseline": baseline, "results": results, "process_seconds": PROCESS_SECONDS}
    report("memory", rows, figures)
    return figures


if __name__ == "__main__":
    main()
