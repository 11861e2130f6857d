"""A job's output is checked before anything is stored: shapes, hosts, sizes, and the PNG."""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest
import responses
from PIL import Image

from batches import outputs


def png(width: int = 8, height: int = 8) -> bytes:
    buffer = io.BytesIO()
    image = Image.new("RGB", (width, height), (10, 20, 30))
    image.putpixel((0, 0), (250, 250, 250))  # not one flat colour: the quality gate passes it
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def as_output(value: Any) -> dict[str, Any]:
    return {"images": [value], "seed": 1}


def test_a_data_uri_and_plain_base64_give_the_png() -> None:
    data = png()
    encoded = base64.b64encode(data).decode()
    assert outputs.png_from_output(as_output(f"data:image/png;base64,{encoded}")) == data
    assert outputs.png_from_output(as_output(encoded)) == data


@pytest.mark.parametrize(
    ("output", "reason"),
    [
        (None, "not an object"),
        ([1, 2], "not an object"),
        ({"images": {"0": "x"}}, "no list of images"),
        ({"images": []}, "no list of images"),
        ({"images": [42]}, "not a string"),
        (as_output("data:image/png;base64"), "without base64"),
        (as_output("data:image/png,abc"), "without base64"),
        (as_output("!!!"), "bad base64"),
        (as_output(base64.b64encode(b"GIF89a....").decode()), "not a PNG"),
        (as_output(base64.b64encode(png()[:40]).decode()), "damaged"),
        (as_output("ftp://bucket.runpod.io/x.png"), "bad base64"),
    ],
)
def test_a_malformed_output_is_refused_with_a_reason(output: Any, reason: str) -> None:
    with pytest.raises(outputs.BadOutput, match=reason):
        outputs.png_from_output(output)


def test_a_decompression_bomb_is_refused() -> None:
    # A small file that claims a huge canvas: Pillow's guard trips before it is decoded.
    with pytest.raises(outputs.BadOutput, match="larger than expected|bomb"):
        outputs.check_png(png(5000, 5000))


def test_an_oversized_base64_image_is_refused_before_decoding(settings: Any) -> None:
    settings.RUNPOD_OUTPUT_MAX_BYTES = 1024
    with pytest.raises(outputs.BadOutput, match="larger than"):
        outputs.png_from_output(as_output("A" * 4000))


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://runpod.io/a.png", True),
        ("https://bucket.runpod.io/a.png", True),
        ("https://x.y.runpod.ai/a.png", True),
        ("http://bucket.runpod.io/a.png", False),  # not https
        ("https://runpod.io.evil.test/a.png", False),
        ("https://evilrunpod.io/a.png", False),
        ("https://169.254.169.254/latest/meta-data", False),
        ("https://127.0.0.1/a.png", False),
        ("https://bucket.runpod.io:8443/a.png", False),
        ("https://user@bucket.runpod.io/a.png", False),
        ("https://[::1]/a.png", False),
        ("https://bucket.runpod.io:99999/a.png", False),
    ],
)
def test_only_https_urls_on_allowed_hosts_are_fetched(url: str, allowed: bool) -> None:
    assert outputs.url_allowed(url) is allowed


@responses.activate
def test_an_allowed_url_is_fetched_without_following_redirects(settings: Any) -> None:
    data = png()
    responses.get("https://bucket.runpod.io/good.png", body=data)
    responses.get(
        "https://bucket.runpod.io/moved.png",
        status=302,
        headers={"Location": "http://169.254.169.254/"},
    )
    responses.get("https://bucket.runpod.io/gone.png", status=404)

    assert outputs.png_from_output(as_output("https://bucket.runpod.io/good.png")) == data
    with pytest.raises(outputs.BadOutput, match="HTTP 302"):
        outputs.png_from_output(as_output("https://bucket.runpod.io/moved.png"))
    with pytest.raises(outputs.BadOutput, match="HTTP 404"):
        outputs.png_from_output(as_output("https://bucket.runpod.io/gone.png"))
    assert [call.request.url for call in responses.calls][-2:] == [
        "https://bucket.runpod.io/moved.png",
        "https://bucket.runpod.io/gone.png",
    ]


@responses.activate
def test_a_download_larger_than_the_cap_is_cut_off(settings: Any) -> None:
    settings.RUNPOD_OUTPUT_MAX_BYTES = 2048
    responses.get("https://bucket.runpod.io/huge.png", body=png() + b"\0" * 10_000)
    with pytest.raises(outputs.BadOutput, match="larger than"):
        outputs.png_from_output(as_output("https://bucket.runpod.io/huge.png"))


def test_a_url_on_another_host_is_never_requested() -> None:
    with responses.RequestsMock() as mock:  # any request at all would fail this test
        with pytest.raises(outputs.BadOutput, match="not allowed"):
            outputs.png_from_output(as_output("https://metadata.internal/computeMetadata"))
        assert len(mock.calls) == 0
