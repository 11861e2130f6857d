"""/panels/takes/<id>.png: an earlier take's file, on the same terms as a panel's own."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from batches.models import ImageVersion
from tests.authoring.support import finished
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def kept_take_url(api: Any, user: Any) -> tuple[str, ImageVersion]:
    batch = finished(user, ["one"])
    body = api.post(f"/api/v1/batches/{batch.pk}/images/0/redraw/", {}, format="json").json()
    return body["versions"][0]["image_url"], ImageVersion.objects.get()


def test_the_owner_and_a_signed_link_get_the_file(api: Any, user: Any) -> None:
    url, version = kept_take_url(api, user)
    owner = Client()
    owner.force_login(user)

    mine = owner.get(f"/panels/takes/{version.pk}.png")
    signed = Client().get(url)

    assert mine.status_code == 200
    assert mine.getvalue().startswith(b"\x89PNG")
    assert signed.status_code == 200


def test_others_anonymous_and_forged_links_are_refused(api: Any, user: Any) -> None:
    url, version = kept_take_url(api, user)
    stranger = Client()
    stranger.force_login(UserFactory())

    assert stranger.get(f"/panels/takes/{version.pk}.png").status_code == 404
    assert Client().get(f"/panels/takes/{version.pk}.png").status_code == 401
    forged = Client().get(url[:-3] + "abc")
    assert forged.status_code == 403
    assert forged.json()["code"] == "bad_signature"
    # A take's signature opens that take only, never the panel's current file.
    assert Client().get(url.replace("/panels/takes/", "/panels/")).status_code == 403
