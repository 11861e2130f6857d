"""Panel files: where a panel's PNG is stored, the URL that serves it, and who may fetch it.

Panels are private. No route serves MEDIA_ROOT; every panel goes through
`batches.views.panel_file` (`/panels/<image id>.png`), which serves it

- to the batch's owner and to staff, recognised by the session cookie (pages, `<img>` tags) or
  by the API's own authentication (`Authorization: Token <key>`), and
- to anyone holding a signed link (`?sig=...`, the `image_url` of the API, the pages and the
  pushed events) until it expires, so an API client can hand `image_url` to a downloader that
  sends no headers.

When a request carries both, the caller's own identity is checked first and the signature only
when that identity does not grant access: an owner's page left open past the link's lifetime
still loads its images, and a stale or mangled signature never takes away access a login gives.
A valid signature serves the panel whoever sends it (logged in as someone else or not at all):
it is a capability the owner was handed to share.

A signature covers the image's id and its stored file name: a redrawn panel (a new file) makes
the old links invalid. Refusals never tell another user whether a panel exists: a panel that
is not the caller's answers exactly as a missing one does.

Once access is granted, the bytes come from Django (FileResponse) or, in a real deployment,
from the web server in front of it (`COMICGEN_SENDFILE_HEADER`: nginx's X-Accel-Redirect or
Apache's X-Sendfile), so a slow download never holds a Django worker.
"""

from __future__ import annotations

import logging
import secrets
import time
from enum import Enum
from typing import Any
from urllib.parse import quote

from django.conf import settings
from django.core import signing
from django.core.exceptions import SuspiciousFileOperation
from django.core.files.storage import default_storage
from django.http import FileResponse, HttpResponse
from django.http.response import HttpResponseBase
from django.urls import reverse
from django.utils import timezone
from django.utils.http import content_disposition_header, urlencode

from batches.models import Batch, ImageJob

logger = logging.getLogger(__name__)

SIGNATURE_PARAM = "sig"
_SALT = "comicgen.batches.panels.file"

# The clock signatures are stamped with; a test moves it back to make a link that has expired.
_clock = time.time


# --- storage ---------------------------------------------------------------------------------


def panel_storage_name() -> str:
    """Where a new panel's PNG is stored, relative to MEDIA_ROOT: 128 random bits, nothing
    sequential nor derived from ids, so a leaked name tells nothing about any other panel. The
    year/month folders only keep directories small."""
    now = timezone.now()
    return f"panels/{now:%Y}/{now:%m}/{secrets.token_hex(16)}.png"


# --- signed links ----------------------------------------------------------------------------


class SignatureCheck(Enum):
    VALID = "valid"
    EXPIRED = "expired"
    INVALID = "invalid"


def _window() -> int:
    """Signatures are stamped with the time rounded down to this many seconds, so every render
    within a window (page reloads, a reconnect's snapshot) gives the same URL and the browser
    reuses the image it has. A link therefore lives between max age - window and max age."""
    return max(1, settings.COMICGEN_PANEL_URL_MAX_AGE // 12)


class _PanelSigner(signing.TimestampSigner):
    def timestamp(self) -> str:
        window = _window()
        return signing.b62_encode(int(_clock()) // window * window)


def _signed_value(image_id: int, name: str) -> str:
    return f"{image_id}:{name}"


def signature(image_id: int, name: str) -> str:
    """The `sig` of a link to this image's current file: `<timestamp>:<hmac>`."""
    value = _signed_value(image_id, name)
    return _PanelSigner(salt=_SALT).sign(value)[len(value) + 1 :]


def check_signature(
    image_id: int, name: str | None, token: str, *, any_age: bool = False
) -> SignatureCheck:
    """Whether `token` signs this image's current file and is recent enough
    (COMICGEN_PANEL_URL_MAX_AGE, unless any_age). A panel with no file (or none at all) has
    nothing a signature could match: INVALID, as for a forgery, so the answer tells nothing
    about which panels exist."""
    if not name:
        return SignatureCheck.INVALID
    max_age = None if any_age else settings.COMICGEN_PANEL_URL_MAX_AGE
    try:
        _PanelSigner(salt=_SALT).unsign(f"{_signed_value(image_id, name)}:{token}", max_age=max_age)
    except signing.SignatureExpired:
        return SignatureCheck.EXPIRED
    except signing.BadSignature:
        return SignatureCheck.INVALID
    return SignatureCheck.VALID


def panel_path(image_id: int) -> str:
    """The panel's file URL without a signature: works for the owner and staff only."""
    return reverse("panel-file", args=[image_id])


def panel_url(image: ImageJob) -> str | None:
    """The signed, expiring URL of an image's file (None before it has one). Every place that
    shows a panel uses this: the API's `image_url`, the pages, the pushed events, the admin."""
    if not image.image:
        return None
    token = signature(image.pk, image.image.name)
    return f"{panel_path(image.pk)}?{urlencode({SIGNATURE_PARAM: token})}"


# --- access ----------------------------------------------------------------------------------


class PanelRefused(Exception):
    """Why a panel file is not served, as the view answers it: status, code, detail."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


def _not_found() -> PanelRefused:
    return PanelRefused(
        404,
        "not_found",
        "No panel image here: it does not exist, is not rendered yet, or is not yours.",
    )


def find_panel(user: Any, image_id: int, token: str | None) -> tuple[ImageJob, bool]:
    """The image whose file the caller may fetch, and whether the URL names that very file
    (an authentic signature, even an expired one: the response may then be cached). Raises
    PanelRefused otherwise. Identity first, then the signature (the module's docstring says
    why)."""
    with_file = ImageJob.objects.exclude(image="")
    if user.is_authenticated:
        image = with_file.filter(pk=image_id, batch__in=Batch.objects.visible_to(user)).first()
        if image is not None:
            names_file = token is not None and (
                check_signature(image.pk, image.image.name, token, any_age=True)
                is SignatureCheck.VALID
            )
            return image, names_file
    if token is None:
        if user.is_authenticated:
            raise _not_found()
        raise PanelRefused(
            401,
            "not_authenticated",
            "Panels are private: log in, send `Authorization: Token <key>`, or use the signed "
            "image_url the API gives.",
        )
    image = with_file.filter(pk=image_id).first()
    verdict = check_signature(image_id, image.image.name if image else None, token)
    if verdict is SignatureCheck.EXPIRED:
        raise PanelRefused(
            403,
            "link_expired",
            "This panel link has expired; fetch the batch again for a fresh image_url.",
        )
    if verdict is SignatureCheck.INVALID or image is None:
        raise PanelRefused(
            403,
            "bad_signature",
            "This panel link is not valid (altered, or the panel was redrawn since); fetch the "
            "batch again for a fresh image_url.",
        )
    return image, True


# --- serving ---------------------------------------------------------------------------------


def file_response(image: ImageJob, *, cacheable: bool) -> HttpResponseBase:
    """The image's PNG: streamed by Django, or handed to the web server in front of it
    (COMICGEN_SENDFILE_HEADER) once access has been checked. Raises PanelRefused (404) when
    the file is gone from storage."""
    name = image.image.name
    mode = settings.COMICGEN_SENDFILE_HEADER
    response: HttpResponseBase
    try:
        if mode and not default_storage.exists(name):
            raise FileNotFoundError(name)
        if mode == "X-Accel-Redirect":
            # nginx serves it from an `internal` location aliased to MEDIA_ROOT (README).
            response = HttpResponse(content_type="image/png")
            response[mode] = settings.COMICGEN_SENDFILE_PREFIX + quote(name)
        elif mode == "X-Sendfile":
            response = HttpResponse(content_type="image/png")
            response[mode] = default_storage.path(name)
        else:
            response = FileResponse(default_storage.open(name, "rb"), content_type="image/png")
    except (FileNotFoundError, SuspiciousFileOperation):
        logger.warning("image %s: its file %r is missing from storage", image.pk, name)
        raise PanelRefused(
            404,
            "file_missing",
            "This panel's file is missing from storage; render the panel again.",
        ) from None
    response["Content-Disposition"] = content_disposition_header(False, image.filename) or ""
    # Private: no shared cache may keep it. A signed URL always means the same file (the
    # signature names it), so the browser may keep it as long as a link lives; a plain URL may
    # show a redrawn panel next time, so it is fetched again.
    response["Cache-Control"] = (
        f"private, max-age={settings.COMICGEN_PANEL_URL_MAX_AGE}"
        if cacheable
        else "private, no-cache"
    )
    return response
