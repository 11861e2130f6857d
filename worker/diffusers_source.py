"""``IMAGE_SOURCE=diffusers``: real panels from a diffusers text-to-image pipeline.

The pipeline is loaded once per worker process, at start (``worker.handler.prepare_image_source``
runs before the worker takes jobs), from local files only: a deployed image has its weights baked
in at build time (worker/Dockerfile.diffusers), so a cold start never downloads, and a missing
or broken model stops the worker with a message instead of failing every job it is handed.

Environment:

- ``DIFFUSERS_MODEL``: a Hugging Face model id already in the local cache (``HF_HOME``), or a
  folder holding a diffusers pipeline (its ``model_index.json``). Default: SDXL base 1.0. Any
  text-to-image pipeline ``AutoPipelineForText2Image`` knows works (SDXL, SDXL-Turbo, SD 1.5,
  FLUX, a fine-tune saved with ``save_pretrained``).
- ``DIFFUSERS_VARIANT``: the weights variant to load, e.g. ``fp16`` (what the image baked in:
  worker/Dockerfile.diffusers' ``MODEL_VARIANT``); empty loads the default weights.
- ``DIFFUSERS_DEVICE``: ``cuda`` or ``cpu``; default ``cuda`` when a GPU is visible.
- ``DIFFUSERS_DTYPE``: ``bfloat16``, ``float16`` or ``float32``. Default on CUDA: bfloat16 where
  the GPU supports it (Ampere and later: every class in budgets/pricing.py), else float16 (SDXL's
  VAE can overflow to black images in float16 on some inputs; bfloat16 has float32's range).
  On the CPU: float32 (half precision on a CPU is slow or unsupported).

Rendering follows the worker-sdxl input: one image per call, its ``seed`` through a
``torch.Generator`` on the CPU (the same seed gives the same image on the same hardware and
software, whichever device runs the model), PNG bytes out. This module imports torch: only the
worker does, never the web app.
"""

from __future__ import annotations

import io
import os
import threading
from typing import Any

DEFAULT_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"
DTYPES = ("bfloat16", "float16", "float32")
DEVICES = ("cuda", "cpu")


class ModelLoadError(RuntimeError):
    """The pipeline could not be loaded: the message says what to fix."""


class DiffusersSource:
    """A loaded pipeline, callable as a ``worker.handler.ImageSource``."""

    def __init__(self, pipeline: Any, *, model: str, device: str, dtype: str) -> None:
        self.pipeline = pipeline
        self.model = model
        self.device = device
        self.dtype = dtype
        # A pipeline is not thread-safe (its scheduler keeps the current run's timesteps), and
        # the emulator calls the handler from a thread pool: one render at a time.
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DiffusersSource({self.model!r}, device={self.device}, dtype={self.dtype})"

    def __call__(
        self,
        prompt: str,
        negative_prompt: str,
        width: int,
        height: int,
        steps: int,
        guidance: float,
        seed: int,
    ) -> bytes:
        import torch

        # A CPU generator: diffusers draws the initial noise on it and moves it to the device,
        # so a seed means the same starting latents on a GPU as on a CPU.
        generator = torch.Generator(device="cpu").manual_seed(seed)
        with self._lock, torch.inference_mode():
            result = self.pipeline(
                prompt=prompt,
                # None rather than "": SDXL then uses zero embeddings for "no negative prompt",
                # as it was trained to (force_zeros_for_empty_prompt).
                negative_prompt=negative_prompt or None,
                width=width,
                height=height,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=generator,
                num_images_per_prompt=1,
                output_type="pil",
            )
        image = result.images[0]
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        return buffer.getvalue()


def _choose_device(torch: Any, wanted: str) -> str:
    if wanted:
        if wanted not in DEVICES:
            raise ModelLoadError(f"DIFFUSERS_DEVICE={wanted!r}: expected one of {DEVICES}")
        if wanted == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError("DIFFUSERS_DEVICE=cuda, but torch sees no CUDA GPU")
        return wanted
    return "cuda" if torch.cuda.is_available() else "cpu"


def _choose_dtype(torch: Any, device: str, wanted: str) -> str:
    if wanted:
        if wanted not in DTYPES:
            raise ModelLoadError(f"DIFFUSERS_DTYPE={wanted!r}: expected one of {DTYPES}")
        return wanted
    if device == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"


def load_source(
    model: str, *, device: str = "", dtype: str = "", variant: str = ""
) -> DiffusersSource:
    """Load `model` (a local folder, or a model id in the local cache) once; raises
    ModelLoadError with what to do when it cannot."""
    try:
        import torch
        from diffusers import AutoPipelineForText2Image
    except ImportError as error:
        raise ModelLoadError(
            f"IMAGE_SOURCE=diffusers needs torch and diffusers ({error}); install "
            "worker/requirements-diffusers.txt (torch first), or use worker/Dockerfile.diffusers"
        ) from None
    device = _choose_device(torch, device)
    dtype = _choose_dtype(torch, device, dtype)
    try:
        pipeline = AutoPipelineForText2Image.from_pretrained(
            model, dtype=getattr(torch, dtype), variant=variant or None, local_files_only=True
        )
        pipeline.to(device)
    except Exception as error:  # any failure here is the same fix: a model that loads
        where = "folder" if os.path.isdir(model) else "model"
        raise ModelLoadError(
            f"cannot load the diffusers {where} {model!r} from local files "
            f"({type(error).__name__}: {error}). DIFFUSERS_MODEL must be a folder holding a "
            "diffusers pipeline (model_index.json) or a model id already in the Hugging Face "
            "cache: weights are baked into the image at build time (worker/Dockerfile.diffusers, "
            "build argument MODEL_ID), never downloaded by a running worker."
        ) from error
    pipeline.set_progress_bar_config(disable=True)
    return DiffusersSource(pipeline, model=model, device=device, dtype=dtype)


def load_from_env() -> DiffusersSource:
    """The source the environment asks for (see the module docstring)."""
    return load_source(
        os.environ.get("DIFFUSERS_MODEL", "").strip() or DEFAULT_MODEL,
        device=os.environ.get("DIFFUSERS_DEVICE", "").strip().lower(),
        dtype=os.environ.get("DIFFUSERS_DTYPE", "").strip().lower(),
        variant=os.environ.get("DIFFUSERS_VARIANT", "").strip(),
    )
