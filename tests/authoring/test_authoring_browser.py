"""An author's loop in a real (headless) Chromium against the real stack: redraw a panel with
an edited prompt, pick the old take back, pause and resume a batch, open the pages and download
the PDF. Screenshots land in test-artifacts/ for a human to look at."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from batches.models import Batch, BatchStatus, ImageJob
from tests.authoring.test_export_api import pdf_pages
from tests.conftest import wait_for
from tests.web.test_browser import ARTIFACTS, browser  # noqa: F401 (the fixture)

pytestmark = [pytest.mark.integration, pytest.mark.browser]


def submit_as(user: Any, title: str, prompts: list[str]) -> int:
    api = APIClient()
    api.force_authenticate(user)
    response = api.post(
        "/api/v1/batches/",
        {
            "title": title,
            "params": {"width": 256, "height": 256, "steps": 4},
            "images": [{"prompt": prompt} for prompt in prompts],
        },
        format="json",
    )
    assert response.status_code == 202, response.json()
    return int(response.json()["id"])


def done(batch_id: int) -> Batch | None:
    batch = Batch.objects.get(pk=batch_id)
    return batch if batch.is_terminal else None


def test_an_author_redraws_picks_a_take_pauses_and_exports_pages(
    live: Any,
    browser: Any,  # noqa: F811
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    author = get_user_model().objects.create_user("lena", password="vault-door-42")
    chapter = submit_as(
        author,
        "Chapter 4: The feather",
        [
            "Mara opens the vault door",
            "close-up of her face, shocked",
            "the vault is empty except for a feather",
            "she turns, torch raised",
            "wide shot: the corridor, nobody there",
        ],
    )
    wait_for(lambda: done(chapter), timeout=60)
    page = browser.new_page(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(f"{live.web_url}/accounts/login/")
    page.fill("input[name=username]", "lena")
    page.fill("input[name=password]", "vault-door-42")
    page.click("button:has-text('Log in')")
    page.goto(f"{live.web_url}/batches/{chapter}/")
    page.wait_for_selector("[data-testid=batch-status]:has-text('Completed')")

    # Redraw panel 1 with an edited prompt (a new seed is the default).
    tile = page.locator("#panel-grid article").first
    tile.locator("[data-testid=redraw-open]").click()
    prompt = tile.locator("[data-testid=redraw-prompt]")
    assert prompt.input_value() == "Mara opens the vault door"
    assert tile.locator("input[name=new_seed]").is_checked()
    prompt.fill("Mara slams the vault door shut, dust everywhere")
    page.screenshot(path=str(ARTIFACTS / "authoring-redraw-form.png"), full_page=True)
    tile.locator("[data-testid=redraw-submit]").click()
    image = ImageJob.objects.get(batch_id=chapter, index=0)
    wait_for(lambda: ImageJob.objects.get(pk=image.pk).version == 2, timeout=30)
    page.wait_for_selector("text=is being redrawn")
    # The redraw finishes and the tile, updated live, offers both takes.
    page.wait_for_selector("[data-testid=take-2]", timeout=60_000)
    page.wait_for_selector("[data-testid=batch-status]:has-text('Completed')", timeout=60_000)
    assert ImageJob.objects.get(pk=image.pk).prompt.startswith("Mara slams")
    page.wait_for_timeout(400)
    page.screenshot(path=str(ARTIFACTS / "authoring-two-takes.png"), full_page=True)

    # Pick the first take back: the ZIP and the pages use it.
    page.locator("[data-testid=take-1]").first.click()
    page.wait_for_selector("text=take 1 is used")
    assert ImageJob.objects.get(pk=image.pk).selected_version == 1
    assert "✓" in page.locator("[data-testid=take-1]").first.inner_text()
    loaded = "[...document.querySelectorAll('.takes img')].every(i => i.complete && i.naturalWidth)"
    page.wait_for_function(loaded)
    page.screenshot(path=str(ARTIFACTS / "authoring-take-picked.png"), full_page=True)

    # Pause a long batch while it runs, then resume it.
    live.emulator.configure(latency=1.0)
    long_one = submit_as(author, "Chapter 5", [f"panel {n}" for n in range(30)])
    page.goto(f"{live.web_url}/batches/{long_one}/")
    page.wait_for_selector("[data-testid=pause]")
    page.click("[data-testid=pause]")
    page.wait_for_selector("[data-testid=batch-status]:has-text('Paused')")
    assert Batch.objects.get(pk=long_one).status == BatchStatus.PAUSED
    page.screenshot(path=str(ARTIFACTS / "authoring-paused.png"), full_page=True)
    live.emulator.configure(latency=0.05)
    page.click("[data-testid=resume]")
    page.wait_for_selector("text=is running again")
    page.wait_for_selector("[data-testid=batch-status]:has-text('Completed')", timeout=90_000)

    # The chapter as pages, then the PDF.
    page.goto(f"{live.web_url}/batches/{chapter}/")
    page.click("[data-testid=pages-link]")
    page.wait_for_url(re.compile(r".*/pages/$"))
    assert page.locator("[data-testid=comic-page]").count() == 2  # 5 panels, 2 x 2 grid
    page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / "authoring-pages-grid.png"), full_page=True)
    page.click("[data-testid=layout-two_one]")
    page.wait_for_selector("[data-testid=layout-two_one][aria-current=true]")
    page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / "authoring-pages-two-one.png"), full_page=True)
    with page.expect_download() as download_info:
        page.click("[data-testid=export-pdf]")
    download = download_info.value
    assert download.suggested_filename == "Chapter-4-The-feather.pdf"
    target = ARTIFACTS / "authoring-chapter.pdf"
    download.save_as(str(target))
    data = target.read_bytes()
    assert data.startswith(b"%PDF")
    assert len(pdf_pages(data)) == 2  # 2 + 1: five panels on two pages
    assert problems == []
