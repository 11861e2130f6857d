"""Staff watch the queue page in a real (headless) Chromium while a batch runs on the real stack:
daphne, Celery workers and the RunPod emulator. Screenshots land in test-artifacts/."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from batches.models import Batch
from tests.conftest import wait_for
from tests.web.test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS

pytestmark = [pytest.mark.integration, pytest.mark.browser]


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop running in this thread; the ORM calls of the
    # test body are plain sync calls, so allow them.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def test_staff_watch_a_running_batch_on_the_queue_page(live: Any, browser: Any) -> None:
    from tests.web.conftest import make_batch

    ARTIFACTS.mkdir(exist_ok=True)
    author = get_user_model().objects.create_user("inker", password="pw-inker-1")
    get_user_model().objects.create_superuser("boss", password="pw-boss-1")
    # Two GPUs at 1.5 s a panel: the batch stays in flight long enough to be seen.
    live.emulator.configure(latency=1.5, workers=2)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on(
        "console",
        lambda msg: problems.append(f"{msg.text} {msg.location}") if msg.type == "error" else None,
    )
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on(
        "response",
        lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None,
    )

    # Staff sign in through the admin and find the queue from its index.
    page.goto(f"{live.web_url}/staff/queue/")
    assert "/admin/login/" in page.url
    page.fill("input[name=username]", "boss")
    page.fill("input[name=password]", "pw-boss-1")
    page.click("input[type=submit]")
    page.wait_for_selector("text=Nothing in flight.")
    page.goto(f"{live.web_url}/admin/")
    page.screenshot(path=str(ARTIFACTS / "queue-admin-index.png"))
    page.click("#monitoring-module >> text=Queue monitor")
    page.wait_for_selector("text=Nothing in flight.")
    page.evaluate("window.__marker = 1")

    prompts = [f"panel {n}" for n in range(7)] + ["a shadow moves [fail:1]"]
    batch = make_batch(author, prompts, title="The vault")

    # The open page picks the batch up by itself (htmx polling), without a reload.
    page.wait_for_selector("[data-testid=in-flight-table] >> text=inker", timeout=20_000)
    page.wait_for_selector("[data-testid=runpod-in-queue]")
    assert page.evaluate("window.__marker") == 1
    assert int(page.inner_text("[data-testid=in-flight]")) >= 1
    page.screenshot(path=str(ARTIFACTS / "queue-running.png"), full_page=True)

    # The failed first attempt of the last panel shows among the recent errors, with a link
    # to the batch's admin page; attempts and charges fill in as panels finish.
    page.wait_for_selector("[data-testid=errors-table]", timeout=60_000)
    link = page.locator(
        f"[data-testid=errors-table] a[href='/admin/batches/batch/{batch.pk}/change/']"
    )
    assert link.count() >= 1
    wait_for(lambda: Batch.objects.get(pk=batch.pk).is_terminal, timeout=90)
    page.wait_for_selector("text=Nothing in flight.", timeout=10_000)
    assert page.evaluate("window.__marker") == 1  # all of it live, in the same document
    assert int(page.inner_text("[data-testid=attempts-total]")) == 9  # 8 panels, one retried
    page.screenshot(path=str(ARTIFACTS / "queue-finished.png"), full_page=True)

    # The phone-sized view of the same page.
    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    page.wait_for_selector("[data-testid=attempts-table]")
    page.screenshot(path=str(ARTIFACTS / "queue-phone.png"), full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390

    assert not [p for p in problems if "favicon" not in p], problems
