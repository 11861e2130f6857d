"""GET /api/v1/batches/{id}/download/: a streamed ZIP named by panel order."""

from __future__ import annotations

import io
import zipfile
from typing import Any

import pytest
import requests
from rest_framework.authtoken.models import Token

from tests.batches.test_pipeline import finished, submit
from tests.conftest import wait_for

pytestmark = pytest.mark.integration


def test_it_streams_a_zip_of_the_finished_panels_in_order(live: Any, api: Any) -> None:
    created = submit(api, ["first", "second", "broken [fail:always]", "fourth"])
    wait_for(lambda: finished(created["id"]), timeout=60)

    response = api.get(f"/api/v1/batches/{created['id']}/download/")

    assert response.status_code == 200
    assert response["Content-Type"] == "application/zip"
    assert f"batch-{created['id']}.zip" in response["Content-Disposition"]
    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    assert archive.namelist() == ["panel-001.png", "panel-002.png", "panel-004.png"]
    assert all(archive.read(name).startswith(b"\x89PNG") for name in archive.namelist())


@pytest.mark.django_db
def test_it_answers_409_before_any_panel_exists(api: Any) -> None:
    batch_id = submit(api, ["not yet"])["id"]

    response = api.get(f"/api/v1/batches/{batch_id}/download/")

    assert response.status_code == 409
    assert response.json()["code"] == "not_ready"


def test_the_web_server_streams_the_zip_whole(live: Any, api: Any, user: Any) -> None:
    """Through the real web server (ASGI), where the parts are handed over one at a time."""
    created = submit(api, ["first", "second"])
    wait_for(lambda: finished(created["id"]), timeout=60)
    token = Token.objects.create(user=user)

    response = requests.get(
        f"{live.web_url}/api/v1/batches/{created['id']}/download/",
        headers={"Authorization": f"Token {token.key}"}, timeout=30,
    )  # fmt: skip

    assert response.status_code == 200
    assert int(response.headers["Content-Length"]) == len(response.content)
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert archive.namelist() == ["panel-001.png", "panel-002.png"]
    assert all(archive.read(name).startswith(b"\x89PNG") for name in archive.namelist())
