"""5. Submit latency and rate: POST /api/v1/batches/ with 50 images.

One client, sequential: p50/p95 of the request's round trip. Then 16 clients at once (threads,
one HTTP session each) for a fixed time: batches accepted (202) per second. The whole stack runs
meanwhile (the web server as the Procfile runs it: `COMICGEN_WEB_WORKERS` sets its processes),
so the workers start the submitted batches as they would in production. Last, the SQL
statements of one 50-image submit, counted inside Django (CaptureQueriesContext) by a
`manage.py shell` on the stack's database: the bench process itself never imports Django.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time

from bench.stack import ROOT, VENV_BIN, Stack, StackConfig, percentile, report, verdict

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
        statements = count_statements(stack)
    p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
    rate = sum(accepted) / elapsed
    figures = {
        "images_per_batch": IMAGES, "sequential_requests": SEQUENTIAL,
        "p50_ms": round(p50, 1), "p95_ms": round(p95, 1), "max_ms": round(max(latencies), 1),
        "clients": CLIENTS, "accepted": sum(accepted), "seconds": round(elapsed, 2),
        "batches_per_s": round(rate, 1), "errors": len(errors), "first_errors": errors[:3],
        "concurrent_p50_ms": round(percentile(concurrent_latencies, 50), 1),
        "concurrent_p95_ms": round(percentile(concurrent_latencies, 95), 1),
        "sql_statements_per_submit": len(statements), "sql_statements": statements,
    }  # fmt: skip
    report(
        "submit",
        [
            ("p50 one client (ms)", p50, "", ""),
            ("p95 one client (ms)", p95, "< 60", verdict(p95 < 60)),
            ("batches accepted / s (16 clients)", rate, ">= 40", verdict(rate >= 40)),
            ("p95 under 16 clients (ms)", figures["concurrent_p95_ms"], "", ""),
            ("errors", len(errors), "0", verdict(not errors)),
            ("SQL statements per submit", len(statements), "", ""),
        ],
        figures,
    )
    return figures


# One submit through Django's own request handler (token auth, throttle, view, service), its
# statements captured. The transaction commits for real: one more batch for the workers.
_COUNT_STATEMENTS = """
import json, sys
import django
django.setup()
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
body = json.loads(sys.argv[1])
with CaptureQueriesContext(connection) as queries:
    response = Client().post(
        "/api/v1/batches/", body, content_type="application/json", HTTP_HOST="127.0.0.1",
        HTTP_AUTHORIZATION="Token " + sys.argv[2],
    )
assert response.status_code == 202, response.content[:500]
print(json.dumps([query["sql"][:160] for query in queries.captured_queries]))
"""


def count_statements(stack: Stack) -> list[str]:
    """The SQL statements of one 50-image submit (after the warm-up: budget and estimate
    history exist and are cached, as for an author's every submit but the first)."""
    body = {
        "title": "bench statements",
        "params": {"width": 256, "height": 256, "steps": 4},
        "images": [{"prompt": f"statements {n}"} for n in range(IMAGES)],
    }
    output = subprocess.run(
        [str(VENV_BIN / "python"), "-c", _COUNT_STATEMENTS, json.dumps(body), stack.token],
        cwd=ROOT, env=stack.env(), check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return list(json.loads(output.strip().splitlines()[-1]))


if __name__ == "__main__":
    main()
