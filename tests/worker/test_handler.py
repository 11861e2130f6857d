"""worker.handler.handler: the worker-sdxl input/output contract."""

from __future__ import annotations

import base64
import importlib.util
import io
from typing import Any

import pytest
from PIL import Image

from worker import handler as handler_module
from worker.handler import handler

PNG_PREFIX = "data:image/png;base64,"


def _images(output: dict[str, Any]) -> list[Image.Image]:
    images: list[Image.Image] = []
    for uri in output["images"]:
        assert uri.startswith(PNG_PREFIX)
        image = Image.open(io.BytesIO(base64.b64decode(uri[len(PNG_PREFIX) :])))
        image.load()
        images.append(image)
    return images


def test_it_returns_a_png_data_uri_of_the_requested_size_and_the_seed() -> None:
    output = handler(
        {
            "id": "j1",
            "input": {"prompt": "Mara opens the vault", "width": 512, "height": 256, "seed": 42},
        }
    )

    (image,) = _images(output)
    assert image.format == "PNG"
    assert image.size == (512, 256)
    assert output["seed"] == 42


def test_defaults_follow_the_template() -> None:
    output = handler({"input": {"prompt": "p", "seed": 1}})

    (image,) = _images(output)
    assert image.size == (768, 768)


def test_it_is_deterministic_for_a_given_seed() -> None:
    job = {
        "input": {
            "prompt": "close-up of her face",
            "width": 256,
            "height": 256,
            "seed": 7,
            "num_inference_steps": 30,
            "guidance_scale": 6.0,
        }
    }

    assert handler(job) == handler(job)


def test_a_missing_seed_is_chosen_and_returned_so_the_image_can_be_reproduced() -> None:
    output = handler({"input": {"prompt": "p", "width": 128, "height": 128}})

    again = handler({"input": {"prompt": "p", "width": 128, "height": 128, "seed": output["seed"]}})
    assert isinstance(output["seed"], int)
    assert again == output


def test_num_images_renders_consecutive_seeds() -> None:
    output = handler(
        {"input": {"prompt": "p", "width": 128, "height": 128, "seed": 10, "num_images": 3}}
    )
    single = handler({"input": {"prompt": "p", "width": 128, "height": 128, "seed": 11}})

    assert len(_images(output)) == 3
    assert output["images"][1] == single["images"][0]
    assert len(set(output["images"])) == 3


def test_unknown_keys_are_ignored_like_worker_sdxl() -> None:
    output = handler(
        {
            "input": {
                "prompt": "p",
                "width": 64,
                "height": 64,
                "seed": 1,
                "scheduler": "K_EULER",
                "refiner_inference_steps": 50,
            }
        }
    )

    assert "images" in output


@pytest.mark.parametrize(
    ("job_input", "message"),
    [
        ({}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": 12}, "prompt"),
        ({"prompt": "p", "width": 100}, "multiples of 8"),
        ({"prompt": "p", "height": 4096}, "height"),
        ({"prompt": "p", "width": 32}, "width"),
        ({"prompt": "p", "width": "512"}, "width"),
        ({"prompt": "p", "width": True}, "width"),
        ({"prompt": "p", "num_inference_steps": 0}, "num_inference_steps"),
        ({"prompt": "p", "num_inference_steps": 151}, "num_inference_steps"),
        ({"prompt": "p", "num_images": 5}, "num_images"),
        ({"prompt": "p", "guidance_scale": "high"}, "guidance_scale"),
        ({"prompt": "p", "seed": -1}, "seed"),
        ({"prompt": "p", "negative_prompt": ["x"]}, "negative_prompt"),
    ],
)
def test_bad_input_returns_an_error_instead_of_raising(job_input: dict, message: str) -> None:
    output = handler({"id": "j", "input": job_input})

    assert set(output) == {"error"}
    assert message in output["error"]


def test_a_missing_input_is_an_error() -> None:
    assert "error" in handler({"id": "j"})


def test_the_image_source_is_pluggable(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_source(*args: Any) -> bytes:
        calls.append(args)
        return b"\x89PNG fake"

    monkeypatch.setitem(handler_module.IMAGE_SOURCES, "fake", fake_source)
    monkeypatch.setenv("IMAGE_SOURCE", "fake")

    output = handler(
        {
            "input": {
                "prompt": "p",
                "negative_prompt": "n",
                "width": 64,
                "height": 72,
                "num_inference_steps": 3,
                "guidance_scale": 2,
                "seed": 5,
            }
        }
    )

    assert calls == [("p", "n", 64, 72, 3, 2.0, 5)]
    assert output["images"] == [PNG_PREFIX + base64.b64encode(b"\x89PNG fake").decode()]


def test_an_unknown_image_source_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGE_SOURCE", "sdxl-not-installed")

    assert "IMAGE_SOURCE" in handler({"input": {"prompt": "p"}})["error"]


def test_a_worker_serving_one_model_refuses_a_panel_routed_for_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COMICGEN_MODEL", "sdxl")

    refused = handler({"input": {"prompt": "p", "width": 64, "height": 64, "model": "flux-dev"}})
    served = handler({"input": {"prompt": "p", "width": 64, "height": 64, "model": "sdxl"}})
    # worker-sdxl's own clients name no model: still served.
    unnamed = handler({"input": {"prompt": "p", "width": 64, "height": 64}})

    assert "flux-dev" in refused["error"]
    assert "RUNPOD_ENDPOINTS" in refused["error"]
    assert "images" in served
    assert "images" in unnamed


def test_the_diffusers_source_without_torch_fails_with_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The web app's venv has no torch, as intended: the source says what the worker needs.
    if importlib.util.find_spec("torch") is not None:
        pytest.skip("torch is installed here; tests/diffusers covers the loaded source")
    monkeypatch.delitem(handler_module.IMAGE_SOURCES, "diffusers", raising=False)
    monkeypatch.setenv("IMAGE_SOURCE", "diffusers")

    with pytest.raises(handler_module.SourceError, match="requirements-diffusers.txt"):
        handler_module.prepare_image_source()
    assert "requirements-diffusers.txt" in handler({"input": {"prompt": "p"}})["error"]
