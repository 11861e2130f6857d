"""The API reference pages in a real Chromium with every request off this machine blocked:
Swagger UI and ReDoc come from the project's own static files (drf-spectacular-sidecar), so
they render with no internet access. Screenshots land in test-artifacts/."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.web.test_browser import ARTIFACTS
from tests.web.test_browser import browser as browser  # the fixture

pytestmark = [pytest.mark.integration, pytest.mark.browser]

LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def offline_page(chromium: Any) -> tuple[Any, list[str], list[str]]:
    """A page whose requests to any host but this machine fail, as with no internet; returns
    it with the list of blocked URLs and of the page's errors."""
    page = chromium.new_page(viewport={"width": 1280, "height": 900})
    blocked: list[str] = []
    problems: list[str] = []

    def only_loopback(route: Any) -> None:
        url = route.request.url
        if urlsplit(url).scheme in ("http", "https", "ws", "wss") and (
            urlsplit(url).hostname not in LOOPBACK
        ):
            blocked.append(url)
            route.abort("internetdisconnected")
        else:
            route.continue_()

    page.route("**/*", only_loopback)
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    return page, blocked, problems


def test_swagger_ui_renders_every_operation_offline(live: Any, browser: Any) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page, blocked, problems = offline_page(browser)

    page.goto(f"{live.web_url}/api/v1/docs/")
    page.wait_for_selector(".swagger-ui .opblock", timeout=30_000)

    paths = page.locator(".opblock-summary-path").all_inner_texts()
    assert "/api/v1/batches/" in paths
    assert "/api/v1/batches/{batch_id}/download/" in paths
    assert "/api/v1/auth/token/" in paths
    assert len(paths) >= 10
    assert "comicgen API" in page.inner_text(".swagger-ui .info")
    # Every asset came from this server: nothing even tried to leave it.
    assert blocked == []
    assert problems == []
    page.screenshot(path=str(ARTIFACTS / "api-docs-swagger.png"), full_page=False)


def test_redoc_renders_offline(live: Any, browser: Any) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page, blocked, problems = offline_page(browser)

    page.goto(f"{live.web_url}/api/v1/redoc/")
    page.wait_for_selector("text=/api/v1/batches/", timeout=30_000)

    assert "comicgen API" in page.inner_text("body")
    assert blocked == []
    # The one thing refused is the page's own doing: its CSP keeps ReDoc's bundle from
    # fetching the Redocly logo off the internet.
    assert [p for p in problems if "cdn.redoc.ly/redoc/logo-mini.svg" not in p] == []
    page.screenshot(path=str(ARTIFACTS / "api-docs-redoc.png"), full_page=False)
