"""The emulator running the real handler with IMAGE_SOURCE=diffusers on a model folder, end to
end over RunPod's HTTP API: what a developer runs to see real (here: tiny, random) panels."""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from tests.support.emulator import EmulatorError, EmulatorProcess, free_port

# Loading torch and the pipeline before the port opens takes seconds on a busy 2-core machine.
STARTUP_TIMEOUT_S = 240.0


def diffusers_emulator(model: Path, **settings: Any) -> EmulatorProcess:
    return EmulatorProcess(
        env={"IMAGE_SOURCE": "diffusers", "DIFFUSERS_MODEL": str(model), "HF_HUB_OFFLINE": "1"},
        startup_timeout=STARTUP_TIMEOUT_S,
        workers=1,
        latency=0,
        render_threads=1,
        **settings,
    )


def wait_for_job(emulator: EmulatorProcess, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = requests.get(
            f"{emulator.endpoint_url}/status/{job_id}", headers=emulator.auth_headers, timeout=10
        )
        answer.raise_for_status()
        body: dict[str, Any] = answer.json()
        if body["status"] not in ("IN_QUEUE", "IN_PROGRESS"):
            return body
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still running after {timeout}s")


def test_the_emulator_renders_a_job_with_the_diffusers_source(tiny_model: Path) -> None:
    with diffusers_emulator(tiny_model) as emulator:
        submitted = requests.post(
            f"{emulator.endpoint_url}/run",
            headers=emulator.auth_headers,
            json={
                "input": {
                    "prompt": "a cat",
                    "width": 64,
                    "height": 64,
                    "num_inference_steps": 2,
                    "guidance_scale": 4.0,
                    "seed": 11,
                    "num_images": 1,
                    "model": "sdxl",
                }
            },
            timeout=10,
        )
        submitted.raise_for_status()
        done = wait_for_job(emulator, submitted.json()["id"])
        stats = emulator.stats()

    assert done["status"] == "COMPLETED", done
    assert done["output"]["seed"] == 11
    image = done["output"]["images"][0]
    png = base64.b64decode(image.split(",", 1)[1])
    assert Image.open(io.BytesIO(png)).size == (64, 64)
    assert stats["endpoints"][emulator.endpoint_id]["COMPLETED"] == 1
    assert stats["billed_ms"] == done["executionTime"]


def test_the_emulator_with_a_bad_model_path_does_not_start_and_says_why(tmp_path: Path) -> None:
    missing = tmp_path / "missing-model"
    # A fixed port: one start, rather than one per port the harness would otherwise try.
    process = diffusers_emulator(missing, port=free_port())

    with pytest.raises(EmulatorError) as refused:
        process.start()

    assert "cannot load the diffusers" in str(refused.value)
    assert str(missing) in str(refused.value)
