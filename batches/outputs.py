"""The PNG inside a finished RunPod job's output, taken only once it has been checked.

A job's output comes from outside (the worker, RunPod, or anyone who can reach the webhook with
a valid token), so nothing in it is trusted: its shape is checked, a URL is fetched only from
the allowed hosts without redirects and with a size cap, and the bytes must decode as a PNG of
sane size, with Pillow's decompression-bomb guard turned into an error.

Then the quality gate (COMICGEN_QUALITY_GATE, on by default): an image of one flat colour is
what SDXL's safety checker returns in place of a panel it refused, so it is no panel. It fails
its attempt as "blank image" (BlankImage); the chunk charges that attempt (RunPod ran it) and
retries the panel with a new seed, since the same seed would draw the same refused image.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from typing import Any
from urllib.parse import urlsplit

import requests
from django.conf import settings
from PIL import Image, ImageStat

# The largest panel comicgen asks for is 2048 x 2048; a bigger image is not one of ours.
MAX_SIDE = 4096
DOWNLOAD_TIMEOUT = (3.05, 30)


class BadOutput(ValueError):
    """The output holds no usable image; the message says why, for the panel's error."""


class BlankImage(BadOutput):
    """A whole, readable PNG of one flat colour: the panel is retried with a new seed."""


def png_from_output(output: Any) -> bytes:
    """The checked PNG bytes of a worker-sdxl output `{"images": [data URI, base64 or URL]}`."""
    if not isinstance(output, dict):
        raise BadOutput(f"output is {type(output).__name__}, not an object")
    images = output.get("images")
    if not isinstance(images, list) or not images:
        raise BadOutput("output has no list of images")
    first = images[0]
    if not isinstance(first, str) or not first:
        raise BadOutput("the first image is not a string")
    if first.startswith(("http://", "https://")):
        data = fetch_image_url(first)
    else:
        data = decode_base64_image(first)
    check_png(data, quality_gate=settings.COMICGEN_QUALITY_GATE)
    return data


def decode_base64_image(value: str) -> bytes:
    if value.startswith("data:"):
        header, comma, encoded = value.partition(",")
        if not comma or ";base64" not in header:
            raise BadOutput("a data: URI without base64 content")
    else:
        encoded = value
    # base64 is 4/3 of the bytes: refuse an oversized string before decoding it.
    if len(encoded) > settings.RUNPOD_OUTPUT_MAX_BYTES * 4 // 3 + 4:
        raise BadOutput("the image is larger than RUNPOD_OUTPUT_MAX_BYTES")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as error:
        raise BadOutput(f"bad base64: {error}") from None


def url_allowed(url: str) -> bool:
    """https on a host in RUNPOD_OUTPUT_URL_HOSTS (or a subdomain of one), default port."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    host = (parts.hostname or "").rstrip(".").lower()
    if parts.scheme != "https" or not host or port not in (None, 443) or parts.username:
        return False
    allowed = [name.lower().strip(".") for name in settings.RUNPOD_OUTPUT_URL_HOSTS]
    return any(host == name or host.endswith(f".{name}") for name in allowed if name)


def fetch_image_url(url: str) -> bytes:
    """Download an output image from an allowed host: no redirects, at most the size cap."""
    if not url_allowed(url):
        try:
            host = urlsplit(url).hostname
        except ValueError:
            host = None
        raise BadOutput(f"image URL on a host that is not allowed ({host or 'no host'})")
    limit = settings.RUNPOD_OUTPUT_MAX_BYTES
    try:
        with requests.get(
            url, timeout=DOWNLOAD_TIMEOUT, stream=True, allow_redirects=False
        ) as response:
            if response.is_redirect or response.status_code != 200:
                raise BadOutput(f"image URL answered HTTP {response.status_code}")
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > limit:
                raise BadOutput("the image is larger than RUNPOD_OUTPUT_MAX_BYTES")
            body = bytearray()
            for chunk in response.iter_content(chunk_size=65536):
                body += chunk
                if len(body) > limit:
                    raise BadOutput("the image is larger than RUNPOD_OUTPUT_MAX_BYTES")
    except requests.RequestException as error:
        raise BadOutput(f"image URL could not be fetched ({type(error).__name__})") from None
    return bytes(body)


def check_png(data: bytes, *, quality_gate: bool = False) -> None:
    """Refuse anything but a whole, sane PNG, before it is stored or shown to anyone; with the
    quality gate, a blank one too (check_not_blank), measured on the pixels decoded here rather
    than decoding them again."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise BadOutput("not a PNG")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width > MAX_SIDE or height > MAX_SIDE:
                    raise BadOutput(f"the image is {width} x {height}, larger than expected")
                image.verify()
        # verify() checks the chunks' checksums only: decode the pixels too (the side limit
        # above bounds the memory), so a truncated image is never stored as a finished panel.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                if quality_gate:
                    check_not_blank(image)
    except BadOutput:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadOutput("the image is a decompression bomb") from None
    except Exception as error:  # Pillow raises many kinds for a damaged file
        raise BadOutput(f"the PNG is damaged ({type(error).__name__})") from None


# The gate measures a reduced copy: a flat image stays flat at any size, and a 2048 x 2048 panel
# is measured in a few milliseconds rather than hundreds.
BLANK_CHECK_SIDE = 256


def check_not_blank(image: Image.Image) -> None:
    """Refuse an image whose every colour band is (nearly) one value: its standard deviation at
    or under COMICGEN_BLANK_THRESHOLD levels of 255. `image` is decoded (check_png)."""
    pixels = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    pixels.thumbnail((BLANK_CHECK_SIDE, BLANK_CHECK_SIDE), Image.Resampling.NEAREST)
    spread = max(ImageStat.Stat(pixels).stddev)
    extrema = pixels.getextrema()
    # Exactly one colour is blank whatever the threshold (a threshold of 0 keeps only this).
    bands: Any = extrema if isinstance(extrema[0], tuple) else (extrema,)
    flat = all(low == high for low, high in bands)
    if flat or spread <= settings.COMICGEN_BLANK_THRESHOLD:
        raise BlankImage(f"blank image (one flat colour, spread {spread:.2f} of 255)")
