"""GET /panels/<id>.png: a panel's file, for its owner and staff, or with a signed link only."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.signing import b62_decode, b62_encode
from django.test import Client, override_settings
from PIL import Image
from rest_framework.authtoken.models import Token

from batches import panels, services
from batches.api.serializers import BatchSubmitSerializer
from batches.models import ImageJob, ImageStatus
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def png_bytes(colour: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def finished_panel(user: Any, png: bytes | None = None, name: str | None = None) -> ImageJob:
    """A panel of a batch submitted through the real service, completed with a stored PNG."""
    serializer = BatchSubmitSerializer(
        data={"title": "Vault", "params": {"width": 128, "height": 128, "steps": 4},
              "images": [{"prompt": "Mara opens the vault door"}]}
    )  # fmt: skip
    serializer.is_valid(raise_exception=True)
    batch = services.submit_batch(
        user, serializer.validated_data, serializer.resolved_images()
    ).batch
    stored = default_storage.save(name or panels.panel_storage_name(), ContentFile(png or b""))
    image = batch.images.get()
    image.status = ImageStatus.COMPLETED
    image.image = stored
    image.save(update_fields=["status", "image"])
    return image


@pytest.fixture
def owner(db: Any) -> Any:
    return UserFactory(username="mara")


@pytest.fixture
def panel(owner: Any) -> ImageJob:
    return finished_panel(owner, png_bytes())


def body(response: Any) -> bytes:
    """A streamed (FileResponse) body, whole."""
    return b"".join(response.streaming_content)


def login(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def with_sig(url: str, sig: str) -> str:
    return f"{urlsplit(url).path}?{urlencode({'sig': sig})}"


def sig_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["sig"][0]


# --- who may fetch it ------------------------------------------------------------------------


def test_the_owner_gets_the_png_by_session(owner: Any, panel: ImageJob) -> None:
    response = login(owner).get(f"/panels/{panel.pk}.png")

    assert response.status_code == 200
    assert response["Content-Type"] == "image/png"
    assert body(response) == png_bytes()
    assert response["Cache-Control"] == "private, no-cache"  # a plain URL may change
    assert 'filename="panel-001.png"' in response["Content-Disposition"]


def test_an_api_client_gets_it_with_its_token(owner: Any, panel: ImageJob) -> None:
    token = Token.objects.create(user=owner)

    response = Client().get(
        f"/panels/{panel.pk}.png", headers={"Authorization": f"Token {token.key}"}
    )

    assert response.status_code == 200
    assert body(response) == png_bytes()


def test_staff_get_any_authors_panel(panel: ImageJob) -> None:
    staff = UserFactory(username="staffer", is_staff=True)

    response = login(staff).get(f"/panels/{panel.pk}.png")

    assert response.status_code == 200
    assert body(response) == png_bytes()


def test_an_anonymous_request_without_a_signature_is_refused(panel: ImageJob) -> None:
    response = Client().get(f"/panels/{panel.pk}.png")

    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"
    assert response["WWW-Authenticate"] == "Token"
    # The same for a panel that does not exist: an anonymous caller learns nothing.
    missing = Client().get("/panels/987654321.png")
    assert (missing.status_code, missing.json()) == (401, response.json())


def test_another_user_is_refused_and_cannot_tell_the_panel_exists(panel: ImageJob) -> None:
    intruder = login(UserFactory(username="intruder"))
    unrendered = finished_panel(panel.batch.user)
    ImageJob.objects.filter(pk=unrendered.pk).update(image="", status=ImageStatus.RUNNING)

    theirs = intruder.get(f"/panels/{panel.pk}.png")
    nothing = intruder.get("/panels/987654321.png")

    assert theirs.status_code == 404
    assert theirs.json()["code"] == "not_found"
    assert (nothing.status_code, nothing.content) == (404, theirs.content)
    assert login(panel.batch.user).get(f"/panels/{unrendered.pk}.png").content == theirs.content


def test_a_bad_api_token_is_refused(panel: ImageJob) -> None:
    response = Client().get(f"/panels/{panel.pk}.png", headers={"Authorization": "Token nope"})

    assert response.status_code == 401
    assert response.json()["code"] == "authentication_failed"


def test_other_methods_are_refused_with_json(owner: Any, panel: ImageJob) -> None:
    response = login(owner).post(f"/panels/{panel.pk}.png")

    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"
    assert ImageJob.objects.get(pk=panel.pk).image.name == panel.image.name


# --- signed links ----------------------------------------------------------------------------


def test_the_api_image_url_works_without_any_credentials(owner: Any, panel: ImageJob) -> None:
    api = Client()
    api.force_login(owner)
    image_url = api.get(f"/api/v1/batches/{panel.batch_id}/").json()["images"][0]["image_url"]

    response = Client().get(image_url)

    # Absolute in the API's answers, so a client can hand it to any downloader as it is.
    assert image_url.startswith(f"http://testserver/panels/{panel.pk}.png?sig=")
    assert response.status_code == 200
    assert body(response) == png_bytes()
    max_age = f"max-age={settings.COMICGEN_PANEL_URL_MAX_AGE}"
    assert response["Cache-Control"] == f"private, {max_age}"


def test_a_signed_link_works_for_someone_else_logged_in(panel: ImageJob) -> None:
    url = panels.panel_url(panel)
    assert url is not None

    response = login(UserFactory(username="friend")).get(url)

    assert response.status_code == 200


def test_an_altered_signature_is_refused(panel: ImageJob) -> None:
    url = panels.panel_url(panel)
    assert url is not None
    sig = sig_of(url)
    other = finished_panel(panel.batch.user, png_bytes("blue"))
    flipped = sig[:-1] + ("A" if sig[-1] != "A" else "B")
    timestamp, _, mac = sig.partition(":")

    attempts = [
        with_sig(url, flipped),  # one character changed
        with_sig(url, f"{b62_encode(b62_decode(timestamp) + 1)}:{mac}"),  # a later time
        f"/panels/{other.pk}.png?sig={sig}",  # another panel's id under this signature
        with_sig(url, ""),
        with_sig(url, "∞:é\x00"),  # not even ASCII
    ]
    for attempt in attempts:
        response = Client().get(attempt)
        assert response.status_code == 403, attempt
        assert response.json()["code"] == "bad_signature"


def test_a_signature_made_with_another_key_is_refused(panel: ImageJob) -> None:
    with override_settings(SECRET_KEY="someone-elses-key-" + "x" * 40):
        forged = panels.panel_url(panel)
    assert forged is not None

    response = Client().get(forged)

    assert response.status_code == 403
    assert response.json()["code"] == "bad_signature"


def test_a_link_for_a_missing_panel_answers_as_a_forgery(panel: ImageJob) -> None:
    url = panels.panel_url(panel)
    assert url is not None

    response = Client().get(f"/panels/987654321.png?sig={sig_of(url)}")

    assert response.status_code == 403
    assert response.json()["code"] == "bad_signature"


def test_an_expired_link_is_refused(monkeypatch: pytest.MonkeyPatch, panel: ImageJob) -> None:
    max_age = settings.COMICGEN_PANEL_URL_MAX_AGE
    monkeypatch.setattr(panels, "_clock", lambda: time.time() - max_age - 5)
    expired = panels.panel_url(panel)
    monkeypatch.undo()
    assert expired is not None

    response = Client().get(expired)

    assert response.status_code == 403
    assert response.json()["code"] == "link_expired"


def test_a_link_made_just_now_has_its_full_life(panel: ImageJob) -> None:
    url = panels.panel_url(panel)
    assert url is not None
    signed_at = b62_decode(sig_of(url).split(":")[0])

    # Rounded down to a window so repeated renders share a URL, never by more than a window.
    window = settings.COMICGEN_PANEL_URL_MAX_AGE // 12
    assert time.time() - window <= signed_at <= time.time()
    assert panels.panel_url(panel) == url


def test_the_owners_session_wins_over_an_expired_or_bad_signature(
    monkeypatch: pytest.MonkeyPatch, owner: Any, panel: ImageJob
) -> None:
    monkeypatch.setattr(panels, "_clock", lambda: time.time() - 10 * 24 * 3600)
    expired = panels.panel_url(panel)
    monkeypatch.undo()
    assert expired is not None
    client = login(owner)

    assert client.get(expired).status_code == 200  # a page left open for days still loads
    assert client.get(with_sig(expired, "garbage")).status_code == 200


def test_a_redrawn_panel_makes_old_links_invalid(owner: Any, panel: ImageJob) -> None:
    old = panels.panel_url(panel)
    assert old is not None
    new_name = default_storage.save(panels.panel_storage_name(), ContentFile(png_bytes("green")))
    ImageJob.objects.filter(pk=panel.pk).update(image=new_name)

    assert Client().get(old).status_code == 403
    fresh = panels.panel_url(ImageJob.objects.get(pk=panel.pk))
    assert fresh is not None
    assert body(Client().get(fresh)) == png_bytes("green")


# --- no public route, unguessable names ------------------------------------------------------


def test_there_is_no_public_media_route(owner: Any, panel: ImageJob) -> None:
    assert Path(default_storage.path(panel.image.name)).exists()

    assert Client().get(f"/media/{panel.image.name}").status_code == 404
    assert login(owner).get(f"/media/{panel.image.name}").status_code == 404


def test_stored_names_share_no_guessable_part() -> None:
    first, second = panels.panel_storage_name(), panels.panel_storage_name()

    pattern = re.compile(r"^panels/\d{4}/\d{2}/([0-9a-f]{32})\.png$")
    first_match, second_match = pattern.match(first), pattern.match(second)
    assert first_match is not None
    assert second_match is not None
    one, two = first_match.group(1), second_match.group(1)
    # 128 random bits each: nothing in common beyond the folder of the month.
    assert one != two
    assert sum(a == b for a, b in zip(one, two, strict=True)) < 12


def test_panels_stored_under_old_names_are_still_served(owner: Any) -> None:
    legacy = finished_panel(owner, png_bytes("yellow"), name="panels/7/panel-001-31-a1.png")

    response = login(owner).get(f"/panels/{legacy.pk}.png")

    assert legacy.image.name.startswith("panels/7/panel-001-31-a1")
    assert body(response) == png_bytes("yellow")


# --- how the bytes are sent ------------------------------------------------------------------


def test_x_accel_redirect_hands_the_file_to_nginx(
    settings: Any, owner: Any, panel: ImageJob
) -> None:
    settings.COMICGEN_SENDFILE_HEADER = "X-Accel-Redirect"
    settings.COMICGEN_SENDFILE_PREFIX = "/protected-media/"

    response = login(owner).get(f"/panels/{panel.pk}.png")

    assert response.status_code == 200
    assert response["X-Accel-Redirect"] == f"/protected-media/{panel.image.name}"
    assert response["Content-Type"] == "image/png"
    assert response.content == b""
    assert response["Cache-Control"].startswith("private")


def test_x_sendfile_hands_the_file_path_to_apache(
    settings: Any, owner: Any, panel: ImageJob
) -> None:
    settings.COMICGEN_SENDFILE_HEADER = "X-Sendfile"

    response = login(owner).get(f"/panels/{panel.pk}.png")

    assert response.status_code == 200
    assert response["X-Sendfile"] == str(Path(settings.MEDIA_ROOT) / panel.image.name)
    assert response.content == b""


@pytest.mark.parametrize("mode", ["", "X-Accel-Redirect", "X-Sendfile"])
def test_a_file_missing_on_disk_is_a_clean_404(
    settings: Any, owner: Any, panel: ImageJob, mode: str
) -> None:
    settings.COMICGEN_SENDFILE_HEADER = mode
    default_storage.delete(panel.image.name)

    response = login(owner).get(f"/panels/{panel.pk}.png")

    assert response.status_code == 404
    assert response.json()["code"] == "file_missing"
    assert "X-Accel-Redirect" not in response
    assert "X-Sendfile" not in response


# --- every place that shows a panel uses the private URL -------------------------------------


def test_pages_and_admin_show_signed_urls_only(owner: Any, panel: ImageJob) -> None:
    staff = UserFactory(username="boss", is_staff=True, is_superuser=True)
    pages = [
        login(owner).get(f"/batches/{panel.batch_id}/").content.decode(),
        login(owner).get(f"/batches/{panel.batch_id}/panels/0/").content.decode(),
        login(staff).get(f"/admin/batches/batch/{panel.batch_id}/change/").content.decode(),
    ]

    for html in pages:
        assert "/media/" not in html
        urls = re.findall(rf'src="(/panels/{panel.pk}\.png\?sig=[^"]+)"', html)
        assert urls, html
        # The HTML escapes & as &amp;; there is no & in the URL, so it is used as is.
        assert Client().get(urls[0]).status_code == 200


def test_the_pushed_image_payload_carries_a_signed_url(panel: ImageJob) -> None:
    from batches.events import image_data

    payload = image_data(ImageJob.objects.get(pk=panel.pk))

    assert payload["image_url"] is not None
    assert payload["image_url"].startswith(f"/panels/{panel.pk}.png?sig=")
    assert Client().get(payload["image_url"]).status_code == 200


# --- settings --------------------------------------------------------------------------------


def read_settings(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = (
        "import django; django.setup(); from django.conf import settings; "
        "print(settings.COMICGEN_SENDFILE_HEADER, settings.COMICGEN_SENDFILE_PREFIX)"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "comicgen.settings", **env},
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"COMICGEN_SENDFILE_HEADER": "X-Sendfil"}, "COMICGEN_SENDFILE_HEADER='X-Sendfil'"),
        ({"COMICGEN_SENDFILE_PREFIX": "protected"}, "COMICGEN_SENDFILE_PREFIX='protected'"),
        ({"COMICGEN_PANEL_URL_MAX_AGE": "5"}, "COMICGEN_PANEL_URL_MAX_AGE=5: must be at least"),
    ],
)
def test_a_bad_panel_setting_stops_the_process(env: dict[str, str], message: str) -> None:
    result = read_settings(env)

    assert result.returncode != 0
    assert message in result.stderr


def test_the_sendfile_header_is_read_in_any_case() -> None:
    result = read_settings({"COMICGEN_SENDFILE_HEADER": "x-accel-redirect"})

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["X-Accel-Redirect", "/protected-media/"]
