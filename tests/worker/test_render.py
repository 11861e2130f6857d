"""worker.render.render_panel: a deterministic, fast PNG of exactly the requested size."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image

from worker.render import render_panel


def _decode(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


@pytest.mark.parametrize(("width", "height"), [(256, 256), (768, 512), (64, 128), (1024, 768)])
def test_it_renders_a_png_of_exactly_the_requested_size(width: int, height: int) -> None:
    image = _decode(render_panel("Mara opens the vault door", seed=1, width=width, height=height))

    assert image.format == "PNG"
    assert image.size == (width, height)


def test_the_same_input_gives_the_same_bytes() -> None:
    args: dict[str, Any] = {
        "seed": 42,
        "width": 256,
        "height": 256,
        "negative_prompt": "blurry",
        "steps": 30,
    }

    assert render_panel("a rooftop chase", **args) == render_panel("a rooftop chase", **args)


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 43},
        {"prompt": "a rooftop chase at dawn"},
        {"negative_prompt": "text"},
        {"steps": 80},
    ],
)
def test_a_different_input_gives_a_different_panel(change: dict[str, Any]) -> None:
    base: dict[str, Any] = {"prompt": "a rooftop chase", "seed": 42, "width": 256, "height": 256}
    other = {**base, **change}

    assert render_panel(**base) != render_panel(**other)


def test_the_panel_has_an_ink_frame_and_paper_inside() -> None:
    image = _decode(render_panel("quiet room", seed=3, width=256, height=256)).convert("L")

    # The frame sits a few pixels in from the edge; the outermost margin is paper.
    assert image.getpixel((0, 128)) == 255
    assert 0 in [image.getpixel((x, 128)) for x in range(2, 12)]


def test_a_long_prompt_still_fits() -> None:
    prompt = "an extremely long prompt " * 40

    image = _decode(render_panel(prompt, seed=9, width=128, height=128))

    assert image.size == (128, 128)


def test_it_rejects_a_degenerate_size() -> None:
    with pytest.raises(ValueError, match="16x16"):
        render_panel("p", seed=1, width=8, height=8)
