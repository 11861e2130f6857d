"""3. The naive way: what a user writes first, one task per image that calls /run and then
polls /status every second until the job ends, then stores the PNG.

"One task per image" is a thread pool as large as the Celery workers' threads (16 in all): each
thread takes one image at a time, like 16 Celery threads each running one image task. No
in-flight limiter, no webhooks, no retries: a faithful first draft, not a straw man (the HTTP
session is pooled and the PNG is decoded and written to disk, as ours does).
"""

from __future__ import annotations

import base64
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from bench.stack import SMALL_PARAMS

POLL_SECONDS = 1.0


def run(
    endpoint_url: str, api_key: str, images: int, *, threads: int, media_dir: Path,
    prefix: str = "naive", params: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    params = params or SMALL_PARAMS
    media_dir.mkdir(parents=True, exist_ok=True)
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=threads, pool_maxsize=threads)
    session.mount("http://", adapter)
    session.headers["Authorization"] = f"Bearer {api_key}"

    def one(index: int) -> bool:
        job_input = {
            "prompt": f"{prefix} {index}", "width": params["width"], "height": params["height"],
            "num_inference_steps": params["steps"], "seed": index, "num_images": 1,
        }  # fmt: skip
        job = session.post(f"{endpoint_url}/run", json={"input": job_input}, timeout=30).json()
        while True:
            time.sleep(POLL_SECONDS)
            status = session.get(f"{endpoint_url}/status/{job['id']}", timeout=30).json()
            if status["status"] == "COMPLETED":
                data = status["output"]["images"][0].split(",", 1)[1]
                (media_dir / f"panel-{index:05d}.png").write_bytes(base64.b64decode(data))
                return True
            if status["status"] in ("FAILED", "CANCELLED", "TIMED_OUT"):
                return False

    start = time.time()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = list(pool.map(one, range(images)))
    return {"makespan_s": time.time() - start, "failed": results.count(False)}
