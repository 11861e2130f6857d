"""IMAGE_SOURCE=diffusers: the real loading code and the real handler on a tiny random SDXL
pipeline, on the CPU, with nothing downloaded."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from worker.diffusers_source import DiffusersSource, ModelLoadError, load_source

REPO_ROOT = Path(__file__).resolve().parents[2]


def job(**fields: Any) -> dict[str, Any]:
    return {
        "id": "job-1",
        "input": {
            "prompt": "a cat on a rooftop",
            "negative_prompt": "blurry",
            "width": 64,
            "height": 96,
            "num_inference_steps": 2,
            "guidance_scale": 5.0,
            "seed": 7,
            **fields,
        },
    }


def pngs(output: dict[str, Any]) -> list[bytes]:
    assert "error" not in output, output
    prefix = "data:image/png;base64,"
    assert all(image.startswith(prefix) for image in output["images"])
    return [base64.b64decode(image[len(prefix) :]) for image in output["images"]]


def test_it_renders_pngs_of_the_requested_size_with_the_worker_sdxl_shape(
    diffusers_env: Any,
) -> None:
    output = diffusers_env.handler(job(num_images=2))

    images = pngs(output)
    assert output["seed"] == 7
    assert len(images) == 2
    for png in images:
        picture = Image.open(io.BytesIO(png))
        assert picture.format == "PNG"
        assert picture.size == (64, 96)
    # Image i is drawn from seed + i, as the sketch source does: two different pictures.
    assert images[0] != images[1]


def test_the_same_seed_gives_the_same_image_and_another_seed_another(
    diffusers_env: Any,
) -> None:
    first = pngs(diffusers_env.handler(job(seed=1234)))
    again = pngs(diffusers_env.handler(job(seed=1234)))
    other = pngs(diffusers_env.handler(job(seed=1235)))

    assert first == again
    assert first != other
    # The second image of a seed-1234 job is the first image of a seed-1235 job.
    assert pngs(diffusers_env.handler(job(seed=1234, num_images=2)))[1] == other[0]


def test_the_pipeline_is_loaded_once_per_process(diffusers_env: Any) -> None:
    loaded = diffusers_env.prepare_image_source()
    diffusers_env.handler(job())
    diffusers_env.handler(job(seed=8))

    assert isinstance(loaded, DiffusersSource)
    assert diffusers_env.prepare_image_source() is loaded
    assert (loaded.device, loaded.dtype) == ("cpu", "float32")


def test_the_loader_takes_a_folder_and_renders_the_asked_size(tiny_model: Path) -> None:
    source = load_source(str(tiny_model), device="cpu")

    png = source("a dog", "", 96, 64, 2, 0.0, 3)

    assert Image.open(io.BytesIO(png)).size == (96, 64)


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        ("/nonexistent/comicgen-model", "folder|model"),
        ("nobody/no-such-model-anywhere", "model"),
    ],
)
def test_a_model_that_is_not_on_disk_is_refused_with_what_to_do(model: str, reason: str) -> None:
    with pytest.raises(ModelLoadError, match="cannot load the diffusers") as refused:
        load_source(model)

    message = str(refused.value)
    assert model in message
    assert "model_index.json" in message
    assert "MODEL_ID" in message


def test_a_folder_without_a_pipeline_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a model")

    with pytest.raises(ModelLoadError, match="cannot load the diffusers folder"):
        load_source(str(tmp_path))


def test_a_bad_setting_is_refused_by_name() -> None:
    with pytest.raises(ModelLoadError, match="DIFFUSERS_DTYPE"):
        load_source("/nonexistent", dtype="float8")
    with pytest.raises(ModelLoadError, match="DIFFUSERS_DEVICE"):
        load_source("/nonexistent", device="tpu")


def test_the_worker_with_a_bad_model_stops_at_start_with_the_message(tmp_path: Path) -> None:
    missing = tmp_path / "no-model-here"
    result = subprocess.run(
        [sys.executable, "-m", "worker.handler"],
        cwd=REPO_ROOT,
        env={
            "PATH": "/usr/bin:/bin",
            "IMAGE_SOURCE": "diffusers",
            "DIFFUSERS_MODEL": str(missing),
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
        },
        capture_output=True,
        text=True,
        timeout=240,
    )

    assert result.returncode == 1, result.stdout + result.stderr
    assert "comicgen worker cannot start" in result.stderr
    assert str(missing) in result.stderr


def test_the_handler_and_emulator_do_not_import_torch_until_the_source_is_diffusers() -> None:
    # The web app imports worker.handler's contract (the emulator, tests) but must never load
    # torch: checked here, where torch is installed and an import would succeed silently.
    code = (
        "import sys, worker.handler, worker.emulator.server, worker.emulator.__main__; "
        "worker.handler.prepare_image_source('sketch'); "
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
