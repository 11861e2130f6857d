"""The OpenAPI schema that API clients (and the fuzz test) rely on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command


def test_the_schema_generates_and_validates_without_warnings(tmp_path: Path) -> None:
    target = tmp_path / "schema.yml"

    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(target))

    schema = target.read_text()
    for path in ("/api/v1/batches/", "/api/v1/batches/{batch_id}/cancel/", "/api/v1/budget/"):
        assert f"  {path}:" in schema


@pytest.mark.django_db
def test_the_schema_is_served_to_authenticated_clients(api: Any) -> None:
    response = api.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")

    assert response.status_code == 200
    assert "/api/v1/batches/estimate/" in response.json()["paths"]
