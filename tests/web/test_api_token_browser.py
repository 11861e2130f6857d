"""The "Your API token" page in Chromium: reached from the nav, the copy button copies, rotating
asks for confirmation. Screenshots (desktop and phone) land in test-artifacts/."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

from tests.web.test_browser import ARTIFACTS
from tests.web.test_browser import browser as browser  # the fixture

pytestmark = [pytest.mark.integration, pytest.mark.browser]


def test_an_author_copies_and_rotates_their_token(live: Any, browser: Any) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    user = get_user_model().objects.create_user("mara", password="vault-door-42")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live.web_url)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(f"{live.web_url}/accounts/login/")
    page.fill("input[name=username]", "mara")
    page.fill("input[name=password]", "vault-door-42")
    page.click("button:has-text('Log in')")

    page.click("nav >> text=API token")
    page.wait_for_selector("h1:has-text('Your API token')")
    key = Token.objects.get(user=user).key
    assert page.input_value("[data-testid=api-token]") == key
    page.click("#copy-token")
    page.wait_for_selector("#copy-status:has-text('Copied.')")
    assert page.evaluate("navigator.clipboard.readText()") == key
    page.screenshot(path=str(ARTIFACTS / "api-token.png"), full_page=True)

    # The box must be ticked: the browser refuses the form without it.
    page.click("button:has-text('Rotate token')")
    assert Token.objects.get(user=user).key == key
    page.check("input[name=confirm]")
    page.click("button:has-text('Rotate token')")
    page.wait_for_selector("text=The old one no longer works")
    new_key = Token.objects.get(user=user).key
    assert new_key != key
    assert page.input_value("[data-testid=api-token]") == new_key

    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    page.screenshot(path=str(ARTIFACTS / "api-token-phone.png"), full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert problems == []
    context.close()
