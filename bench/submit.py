"""5. Submit latency and rate: POST /api/v1/batches/ with 50 images.

One client, sequential: p50/p95 of the request's round trip. Then 16 clients at once (threads,
one HTTP session each) for a fixed time: batches accepted (202) per second. The whole stack runs
meanwhile, so the workers start the submitted batches as they would in production.
"""

from __future__ import annotations

import threading
import time

from bench.stack import Stack, StackConfig, percentile, report, verdict

IMAGES = 50
SEQUENTIAL = 100
CLIENTS = 16
CONCURRENT_SECONDS = 10.0


def main() -> dict[str, object]:
    config = StackConfig(emulator={"workers": 8, "latency": 1.5})
    with Stack(config) as stack:
        for _ in range(3):
            stack.submit(IMAGES, prefix="warm-up")
        latencies = []
        for n in range(SEQUENTIAL):
            started = time.perf_counter()
            stack.submit(IMAGES, prefix=f"sequential {n}")
            latencies.append((time.perf_counter() - started) * 1000)

        accepted = [0] * CLIENTS
        errors: list[str] = []
        concurrent_latencies: list[float] = []
        deadline = time.monotonic() + CONCURRENT_SECONDS

        def client(number: int) -> None:
            session = stack.new_session()
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    stack.submit(IMAGES, prefix=f"client {number}", session=session)
                except Exception as error:
                    errors.append(str(error)[:200])
                    continue
                concurrent_latencies.append((time.perf_counter() - started) * 1000)
                accepted[number] += 1

        threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
        began = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - began
    p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
    rate = sum(accepted) / elapsed
    figures = {
        "images_per_batch": IMAGES, "sequential_requests": SEQUENTIAL,
        "p50_ms": round(p50, 1), "p95_ms": round(p95, 1), "max_ms": round(max(latencies), 1),
        "clients": CLIENTS, "accepted": sum(accepted), "seconds": round(elapsed, 2),
        "batches_per_s": round(rate, 1), "errors": len(errors), "first_errors": errors[:3],
        "concurrent_p50_ms": round(percentile(concurrent_latencies, 50), 1),
        "concurrent_p95_ms": round(percentile(concurrent_latencies, 95), 1),
    }  # fmt: skip
    report(
        "submit",
        [
            ("p50 one client (ms)", p50, "", ""),
            ("p95 one client (ms)", p95, "< 60", verdict(p95 < 60)),
            ("batches accepted / s (16 clients)", rate, ">= 40", verdict(rate >= 40)),
            ("p95 under 16 clients (ms)", figures["concurrent_p95_ms"], "", ""),
            ("errors", len(errors), "0", verdict(not errors)),
        ],
        figures,
    )
    return figures


if __name__ == "__main__":
    main()
