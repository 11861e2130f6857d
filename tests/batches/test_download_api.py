"""GET /api/v1/batches/{id}/download/: a streamed ZIP named by panel order."""

from __future__ import annotations

import io
import zipfile
from typing import Any

import pytest

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
