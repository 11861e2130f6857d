"""The RunPod Serverless handler: the worker-sdxl input/output contract over a pluggable source.

Input (``job["input"]``): ``prompt`` (required), ``negative_prompt``, ``width``, ``height``,
``num_inference_steps``, ``guidance_scale``, ``seed``, ``num_images``; other keys are ignored as
worker-sdxl does. Output: ``{"images": ["data:image/png;base64,..."], "seed": seed}``; image
``i`` uses ``seed + i``. Bad input returns ``{"error": "..."}``, which RunPod turns into FAILED.

``IMAGE_SOURCE`` (env, default ``sketch``) picks the renderer: ``sketch`` (Pillow, for the
emulator, tests and demos) or ``diffusers`` (a real diffusion pipeline, worker/diffusers_source.py,
loaded once at start by ``prepare_image_source``). Other renderers are added by registering a
callable with the same signature.

An input may name the catalogue ``model`` it was routed for (comicgen sends it; worker-sdxl
ignores it). With ``COMICGEN_MODEL`` set, the worker refuses any other model, so a panel sent to
the wrong endpoint fails at once instead of being drawn by the wrong model.
"""

from __future__ import annotations

import base64
import os
import random
import sys
import threading
from collections.abc import Callable
from typing import Any

from worker.render import render_panel

# (prompt, negative_prompt, width, height, steps, guidance, seed) -> PNG bytes
ImageSource = Callable[[str, str, int, int, int, float, int], bytes]

DEFAULT_SIZE = 768
DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 7.5
MIN_SIZE, MAX_SIZE = 64, 2048
MAX_STEPS = 150
MAX_IMAGES = 4
MAX_SEED = 2**32 - 1
MAX_GUIDANCE = 50.0


def _sketch(
    prompt: str,
    negative_prompt: str,
    width: int,
    height: int,
    steps: int,
    guidance: float,
    seed: int,
) -> bytes:
    return render_panel(
        prompt,
        seed=seed,
        width=width,
        height=height,
        negative_prompt=negative_prompt,
        steps=steps,
        guidance=guidance,
    )


IMAGE_SOURCES: dict[str, ImageSource] = {"sketch": _sketch}


def register_image_source(name: str, source: ImageSource) -> None:
    """Make ``source`` selectable with ``IMAGE_SOURCE=name``."""
    IMAGE_SOURCES[name] = source


class SourceError(RuntimeError):
    """The configured image source is unknown or could not be loaded."""


def _load_diffusers() -> ImageSource:
    # Imported on demand: torch is heavy, and only the diffusers worker has it.
    from worker.diffusers_source import ModelLoadError, load_from_env

    try:
        return load_from_env()
    except ModelLoadError as error:
        raise SourceError(str(error)) from None


# Sources that load something heavy (a model) once per process, at start.
SOURCE_LOADERS: dict[str, Callable[[], ImageSource]] = {"diffusers": _load_diffusers}
_load_lock = threading.Lock()


def prepare_image_source(name: str | None = None) -> ImageSource:
    """The renderer ``IMAGE_SOURCE`` names, loaded now if it loads a model. Called when the
    worker starts, so a bad model stops it there with its message rather than failing each job.
    Raises SourceError."""
    name = name if name is not None else os.environ.get("IMAGE_SOURCE", "sketch")
    with _load_lock:
        if name not in IMAGE_SOURCES and name in SOURCE_LOADERS:
            register_image_source(name, SOURCE_LOADERS[name]())
    source = IMAGE_SOURCES.get(name)
    if source is None:
        known = ", ".join(sorted({*IMAGE_SOURCES, *SOURCE_LOADERS}))
        raise SourceError(f"unknown IMAGE_SOURCE {name!r} (known: {known})")
    return source


class InputError(ValueError):
    """The job input breaks the contract; reported to RunPod as ``{"error": ...}``."""


def _integer(data: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = data.get(key)
    if value is None:
        return default
    # bool is an int subclass: `"width": true` is a client bug, not 1 pixel.
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise InputError(f"{key} must be an integer")
    value = int(value)
    if not low <= value <= high:
        raise InputError(f"{key} must be between {low} and {high}")
    return value


def validate_input(data: Any) -> dict[str, Any]:
    """Check and complete a job input; raises ``InputError`` with a message for the client."""
    if not isinstance(data, dict):
        raise InputError("input must be a JSON object")
    prompt = data.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("prompt is required and must be a non-empty string")
    negative_prompt = data.get("negative_prompt") or ""
    if not isinstance(negative_prompt, str):
        raise InputError("negative_prompt must be a string")
    width = _integer(data, "width", DEFAULT_SIZE, MIN_SIZE, MAX_SIZE)
    height = _integer(data, "height", DEFAULT_SIZE, MIN_SIZE, MAX_SIZE)
    if width % 8 or height % 8:
        raise InputError("width and height must be multiples of 8")
    steps = _integer(data, "num_inference_steps", DEFAULT_STEPS, 1, MAX_STEPS)
    guidance = data.get("guidance_scale", DEFAULT_GUIDANCE)
    if guidance is None:
        guidance = DEFAULT_GUIDANCE
    if isinstance(guidance, bool) or not isinstance(guidance, int | float):
        raise InputError("guidance_scale must be a number")
    if not 0 <= guidance <= MAX_GUIDANCE:
        raise InputError(f"guidance_scale must be between 0 and {MAX_GUIDANCE:g}")
    seed = data.get("seed")
    # A missing seed is drawn here and returned, so the image can still be reproduced.
    seed = random.randint(0, MAX_SEED) if seed is None else _integer(data, "seed", 0, 0, MAX_SEED)
    num_images = _integer(data, "num_images", 1, 1, MAX_IMAGES)
    return {
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "width": width,
        "height": height,
        "num_inference_steps": steps,
        "guidance_scale": float(guidance),
        "seed": seed,
        "num_images": num_images,
    }


def handler(job: dict[str, Any]) -> dict[str, Any]:
    """RunPod entry point: render ``num_images`` panels for ``job["input"]``."""
    try:
        params = validate_input(job.get("input"))
    except InputError as exc:
        return {"error": str(exc)}
    served = os.environ.get("COMICGEN_MODEL", "").strip()
    asked = job.get("input", {}).get("model")
    if served and isinstance(asked, str) and asked != served:
        return {
            "error": f"this endpoint renders model {served!r}, not {asked!r}: the model is "
            "routed to the wrong endpoint (check RUNPOD_ENDPOINTS)"
        }
    try:
        source = prepare_image_source()
    except SourceError as exc:
        return {"error": str(exc)}
    images = []
    for index in range(params["num_images"]):
        png = source(
            params["prompt"],
            params["negative_prompt"],
            params["width"],
            params["height"],
            params["num_inference_steps"],
            params["guidance_scale"],
            (params["seed"] + index) % (MAX_SEED + 1),
        )
        images.append("data:image/png;base64," + base64.b64encode(png).decode("ascii"))
    return {"images": images, "seed": params["seed"]}


def main() -> None:
    """The worker process: load the image source, then take jobs from RunPod."""
    import runpod  # only in the worker image: the SDK is not a dependency of the web app

    try:
        source = prepare_image_source()
    except SourceError as exc:
        # RunPod shows the worker's log and marks it unhealthy; no job is taken and billed.
        sys.stderr.write(f"comicgen worker cannot start: {exc}\n")
        sys.exit(1)
    name = os.environ.get("IMAGE_SOURCE", "sketch")
    sys.stdout.write(f"comicgen worker ready: IMAGE_SOURCE={name} ({source!r})\n")
    sys.stdout.flush()
    runpod.serverless.start({"handler": handler})


if __name__ == "__main__":
    main()
