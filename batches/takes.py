"""Files of a panel's earlier takes (ImageVersion rows): their signed URL and who may fetch them.

The same rules as the current take's file (batches/panels.py): the batch's owner and staff by
their session or API token, or anyone holding a signed link until it expires. The signature
covers the take's id and its file name, under a salt of its own, so a link to a take never
opens a panel's current file or another take.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import signing
from django.core.files.storage import default_storage
from django.http import FileResponse
from django.urls import reverse
from django.utils.http import urlencode

from batches import panels
from batches.authoring import Take
from batches.models import Batch, ImageJob, ImageVersion

_SALT = "comicgen.batches.takes.file"


def _value(version_id: int, name: str) -> str:
    return f"{version_id}:{name}"


def take_url(image: ImageJob, take: Take) -> str | None:
    """The signed, expiring URL of a take's file; None once the file expired."""
    if not take.file_name:
        return None
    if take.current or take.version_id is None:
        return panels.panel_url(image)
    value = _value(take.version_id, take.file_name)
    token = signing.TimestampSigner(salt=_SALT).sign(value)[len(value) + 1 :]
    path = reverse("take-file", args=[take.version_id])
    return f"{path}?{urlencode({panels.SIGNATURE_PARAM: token})}"


def find_take(user: Any, version_id: int, token: str | None) -> ImageVersion:
    """The take the caller may fetch (identity first, then the signature); raises
    panels.PanelRefused otherwise, answering a take that is not the caller's as a missing one."""
    with_file = ImageVersion.objects.exclude(file="")
    if user.is_authenticated:
        version = with_file.filter(
            pk=version_id, image__batch__in=Batch.objects.visible_to(user)
        ).first()
        if version is not None:
            return version
    if token is None:
        if user.is_authenticated:
            raise panels.PanelRefused(404, "not_found", "No such take, or it is not yours.")
        raise panels.PanelRefused(401, "not_authenticated", "Takes are private: log in.")
    version = with_file.filter(pk=version_id).first()
    try:
        if version is None:
            raise signing.BadSignature
        signing.TimestampSigner(salt=_SALT).unsign(
            f"{_value(version.pk, version.file.name)}:{token}",
            max_age=settings.COMICGEN_PANEL_URL_MAX_AGE,
        )
    except signing.SignatureExpired:
        raise panels.PanelRefused(
            403, "link_expired", "This link has expired; fetch the batch again."
        ) from None
    except signing.BadSignature:
        raise panels.PanelRefused(403, "bad_signature", "This link is not valid.") from None
    assert version is not None
    return version


def file_response(version: ImageVersion) -> FileResponse:
    try:
        handle = default_storage.open(version.file.name, "rb")
    except FileNotFoundError:
        raise panels.PanelRefused(404, "file_missing", "This take's file is gone.") from None
    response = FileResponse(handle, content_type="image/png")
    response["Cache-Control"] = "private, no-cache"
    return response
