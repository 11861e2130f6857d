"""The quality gate in batches/outputs.py: a flat, one-colour output is no panel."""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest
from PIL import Image

from batches import outputs
from worker.render import render_panel


def data_uri(image: Image.Image) -> dict[str, Any]:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return {"images": [f"data:image/png;base64,{encoded}"]}


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGB", (768, 768), (235, 235, 235)),
        Image.new("RGB", (64, 64), (0, 0, 0)),
        Image.new("L", (128, 128), 128),
        Image.new("RGBA", (128, 128), (10, 20, 30, 255)),
    ],
)
def test_a_flat_image_fails_as_blank(image: Image.Image) -> None:
    with pytest.raises(outputs.BlankImage, match="blank image"):
        outputs.png_from_output(data_uri(image))


def test_faint_noise_under_the_threshold_is_still_blank(settings: Any) -> None:
    settings.COMICGEN_BLANK_THRESHOLD = 1.0
    image = Image.new("RGB", (64, 64), (200, 200, 200))
    image.putpixel((3, 3), (201, 200, 200))

    with pytest.raises(outputs.BlankImage):
        outputs.png_from_output(data_uri(image))


def test_a_real_panel_passes() -> None:
    png = render_panel("Mara opens the vault door", seed=1, width=128, height=128)
    uri = "data:image/png;base64," + base64.b64encode(png).decode()

    assert outputs.png_from_output({"images": [uri]}) == png


def test_the_gate_can_be_turned_off(settings: Any) -> None:
    settings.COMICGEN_QUALITY_GATE = False

    assert outputs.png_from_output(data_uri(Image.new("RGB", (64, 64), "white")))


def test_an_unreadable_image_is_still_a_bad_output() -> None:
    with pytest.raises(outputs.BadOutput) as caught:
        outputs.png_from_output({"images": [base64.b64encode(b"\x89PNG\r\n\x1a\nxx").decode()]})
    assert not isinstance(caught.value, outputs.BlankImage)
