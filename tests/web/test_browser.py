"""An author in a real (headless) Chromium against the real stack: daphne, a Celery worker and
the RunPod emulator. Screenshots land in test-artifacts/ for a human to look at."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from batches.models import Batch, BatchStatus, ImageJob, ImageStatus
from tests.conftest import fresh_connection, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.browser]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CHAPTER = "\n".join(
    [
        "Mara opens the vault door",
        "close-up of her face, shocked",
        "42 | the vault is empty except for a feather",
        "a shadow moves behind her [fail:always]",
        "she turns, torch raised",
        "wide shot: the corridor, nobody there",
    ]
)

# Counts the completed tiles after every DOM change, so the test can tell that tiles turned
# complete one by one in the open page rather than all at once on a reload.
WATCH_TILES = """() => {
  window.__marker = 1;
  window.__seen = [];
  const grid = document.getElementById("panel-grid");
  new MutationObserver(() => {
    window.__seen.push(grid.querySelectorAll(".tile--completed").length);
  }).observe(grid, {childList: true, subtree: true});
}"""


BUSY_ROW = {
    ImageStatus.COMPLETED: range(0, 12),
    ImageStatus.FAILED: range(12, 15),
    ImageStatus.CANCELLED: range(15, 18),
    ImageStatus.RUNNING: range(18, 20),
    ImageStatus.SUBMITTED: range(20, 28),
    ImageStatus.RETRYING: range(28, 30),
    ImageStatus.PENDING: range(30, 40),
}
PHONE_WIDTH = 390
# The elements wider than the viewport, named, so a failure says what overflows.
OVERFLOWING = """(width) => Array.from(document.querySelectorAll("body *"))
  .filter((el) => el.getBoundingClientRect().right > width + 0.5)
  .slice(0, 5)
  .map((el) => el.tagName.toLowerCase() + "." + Array.from(el.classList).join("."))"""


def assert_no_sideways_scroll(page: Any) -> None:
    """Nothing on the page is wider than a phone's screen."""
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE_WIDTH, page.evaluate(OVERFLOWING, PHONE_WIDTH)


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop running in this thread, which makes Django
    # refuse ORM calls from the test body; they are plain sync calls, so allow them.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        fresh_connection()
        yield chromium
        chromium.close()


def test_an_author_submits_a_chapter_and_watches_it_render_live(
    live: Any, browser: Any, tmp_path: Path
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    get_user_model().objects.create_user("mara", password="vault-door-42")
    # Two GPU workers and 0.3 s per image: the six panels finish over a few seconds.
    live.emulator.configure(latency=0.3, workers=2)
    page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    problems: list[str] = []
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))

    # Log in: the dashboard needs it.
    page.goto(f"{live.web_url}/")
    assert "/accounts/login/" in page.url
    page.fill("input[name=username]", "mara")
    page.fill("input[name=password]", "vault-door-42")
    page.click("button:has-text('Log in')")
    page.wait_for_selector("text=No batches yet")
    page.screenshot(path=str(ARTIFACTS / "dashboard-empty.png"), full_page=True)

    # The form prices the chapter as it is typed.
    page.click("text=Create your first batch")
    page.fill("input[name=title]", "Chapter 3: The vault")
    page.fill("input[name=style]", "ink comic, high contrast")
    page.select_option("select[name=width]", "512")
    page.select_option("select[name=height]", "512")
    page.fill("input[name=steps]", "4")
    page.fill("textarea[name=panels]", CHAPTER)
    page.wait_for_selector("#estimate :text('6 panels')")
    assert "Fits your budget" in page.inner_text("#estimate")
    page.screenshot(path=str(ARTIFACTS / "batch-form-estimate.png"), full_page=True)

    page.click("button:has-text('Generate panels')")
    page.wait_for_url("**/batches/*/")
    batch = Batch.objects.get(title="Chapter 3: The vault")
    assert batch.images.count() == 6
    assert batch.images.get(index=2).seed == 42

    # Live: the tiles change in this same document, without a reload.
    page.evaluate(WATCH_TILES)
    page.wait_for_function("window.comicgenSocketOpen === true", timeout=10_000)
    page.wait_for_selector("[data-testid=batch-status]:has-text('Partial')", timeout=90_000)
    assert page.evaluate("window.__marker") == 1  # still the same page
    seen = page.evaluate("window.__seen")
    assert any(0 < count < 5 for count in seen), seen  # tiles completed one after another
    assert page.locator(".tile--completed").count() == 5
    assert page.locator(".tile--failed").count() == 1
    assert page.locator(".tile--completed img[loading=lazy]").count() == 5
    assert "gave up after" in page.inner_text(".tile--failed")
    page.wait_for_selector("text=Download ZIP")
    page.wait_for_timeout(400)  # let the last images decode before the screenshot
    page.screenshot(path=str(ARTIFACTS / "batch-finished.png"), full_page=True)

    # The ZIP holds the five finished panels, named by panel order.
    with page.expect_download() as download_info:
        page.click("text=Download ZIP")
    archive = tmp_path / "batch.zip"
    download_info.value.save_as(archive)
    with zipfile.ZipFile(archive) as zipped:
        assert sorted(zipped.namelist()) == [
            "panel-001.png",
            "panel-002.png",
            "panel-003.png",
            "panel-005.png",
            "panel-006.png",
        ]

    # Retry the failed panel: it is requeued (and, failing always, fails again).
    page.click("button:has-text('Retry 1 failed panel')")
    page.wait_for_selector("text=1 panel requeued.")
    batch.refresh_from_db()
    assert batch.status in (BatchStatus.RUNNING, BatchStatus.PARTIAL)
    assert batch.images.get(index=3).attempts_this_round <= 3  # a fresh set of attempts
    page.wait_for_selector("[data-testid=batch-status]:has-text('Partial')", timeout=60_000)

    # A phone (390 px wide): the batch page and the dashboard fit without scrolling sideways.
    page.set_viewport_size({"width": PHONE_WIDTH, "height": 844})
    page.reload()
    page.wait_for_timeout(300)
    page.screenshot(path=str(ARTIFACTS / "batch-phone.png"), full_page=True)
    assert_no_sideways_scroll(page)
    # A busy row beside it: a long title and every kind of count, the widest a row gets. Made
    # directly in the database as a batch being cancelled (its last jobs still stopping), so
    # the live stack's workers and sweeper leave it as it is while the test looks at it.
    busy = Batch.objects.create(
        user=batch.user,
        title="Chapter 4: The longest night in the history of the northern lighthouse keepers",
        status=BatchStatus.CANCELLED,
        cancel_reason="Cancelled by the user.",
    )
    ImageJob.objects.bulk_create(
        ImageJob(batch=busy, index=index, prompt=f"panel {index}", seed=index, status=status)
        for status, indexes in BUSY_ROW.items()
        for index in indexes
    )
    busy.images.filter(status=ImageStatus.CANCELLED).update(error="Cancelled by the user.")
    page.goto(f"{live.web_url}/batches/{busy.pk}/")
    legend = page.inner_text("#batch-progress .legend")
    assert "2 rendering" in legend
    assert "8 queued at RunPod" in legend
    assert page.locator(".tile--cancelled .tile__note").count() == 3  # neutral, not an error
    page.screenshot(path=str(ARTIFACTS / "batch-busy-phone.png"), full_page=True)
    assert_no_sideways_scroll(page)
    page.goto(f"{live.web_url}/")
    assert "Chapter 3: The vault" in page.inner_text("#batch-list")
    assert "8 queued at RunPod" in page.inner_text("#batch-list")
    page.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"), full_page=True)
    assert_no_sideways_scroll(page)
    page.set_viewport_size({"width": 1280, "height": 900})
    page.reload()
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

    assert not [p for p in problems if "favicon" not in p], problems
    wait_for(lambda: Batch.objects.get(pk=batch.pk).is_terminal, timeout=30)


def test_staff_follow_a_batch_live_on_its_admin_page(live: Any, browser: Any) -> None:
    from tests.web.conftest import make_batch

    ARTIFACTS.mkdir(exist_ok=True)
    author = get_user_model().objects.create_user("inker", password="pw-inker-1")
    get_user_model().objects.create_superuser("boss", password="pw-boss-1")
    live.emulator.configure(latency=0.3, workers=2)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{live.web_url}/admin/login/?next=/admin/")
    page.fill("input[name=username]", "boss")
    page.fill("input[name=password]", "pw-boss-1")
    page.click("input[type=submit]")
    page.wait_for_selector("text=Site administration")

    batch = make_batch(author, [f"panel {n}" for n in range(4)], title="Staff view")
    page.goto(f"{live.web_url}/admin/batches/batch/{batch.pk}/change/")
    page.evaluate("window.__marker = 1")
    page.wait_for_selector("[data-testid=batch-status]:has-text('Completed')", timeout=60_000)

    # The "State and money" fields below follow too (refreshed while the batch ran).
    page.wait_for_selector("#batch-live-facts [data-field=status]:has-text('Completed')")
    assert page.evaluate("window.__marker") == 1  # updated live, not reloaded
    assert page.locator("#panel-grid .tile--completed").count() == 4
    charged = page.inner_text("#batch-live-facts [data-field=actual_cost]").split()[0]
    assert float(charged) > 0
    assert page.locator("#batch_form select, #batch_form textarea").count() == 0
    page.screenshot(path=str(ARTIFACTS / "admin-batch.png"), full_page=True)
    page.goto(f"{live.web_url}/admin/batches/batch/")
    assert "Staff view" in page.inner_text("#result_list")
    page.screenshot(path=str(ARTIFACTS / "admin-batch-list.png"))

    # The author's budget: the limit is changed from its page, the ledger is a link away.
    budget = author.budget
    page.goto(f"{live.web_url}/admin/budgets/budget/{budget.pk}/change/")
    page.screenshot(path=str(ARTIFACTS / "admin-budget.png"), full_page=True)
    page.click("#set-limit-link")
    page.fill("input[name=limit]", "40")
    page.click("input[name=apply]")
    page.wait_for_selector(f"text=Monthly limit of {author.username} set to 40.")
    page.click("#ledger-link")
    page.wait_for_selector("#result_list")
    page.screenshot(path=str(ARTIFACTS / "admin-ledger.png"), full_page=True)
