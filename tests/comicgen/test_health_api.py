"""GET /api/v1/health/: every component really checked, 503 naming what is down."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from tests.support.emulator import free_port

pytestmark = pytest.mark.integration


def test_it_answers_200_when_everything_is_up(live: Any) -> None:
    response = APIClient().get("/api/v1/health/")

    assert response.status_code == 200, response.json()
    data = response.json()
    assert data["status"] == "up"
    assert set(data["components"]) == {"database", "redis", "celery", "runpod"}
    assert data["components"]["celery"]["workers"]
    assert "idle" in data["components"]["runpod"]["workers"]


def test_it_answers_503_naming_what_is_down(live: Any, settings: Any) -> None:
    settings.RUNPOD_BASE_URL = f"http://127.0.0.1:{free_port()}/v2"

    response = APIClient().get("/api/v1/health/")

    assert response.status_code == 503
    data = response.json()
    assert data["down"] == ["runpod"]
    assert data["components"]["runpod"]["status"] == "down"
    assert data["components"]["runpod"]["error"]
