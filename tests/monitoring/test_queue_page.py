"""The staff queue page: `/staff/queue/`."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.test import Client

from batches.models import Priority
from monitoring import pushlag
from tests.factories import UserFactory
from tests.monitoring.conftest import charge, make_batch

pytestmark = pytest.mark.django_db


def test_it_sends_an_anonymous_visitor_to_the_admin_login() -> None:
    response = Client().get("/staff/queue/")

    assert response.status_code == 302
    assert response["Location"] == "/admin/login/?next=/staff/queue/"


def test_an_author_is_sent_to_the_admin_login_and_sees_no_figures() -> None:
    make_batch(UserFactory(username="mara"), ["running"])
    client = Client()
    client.force_login(UserFactory(username="jon"))

    response = client.get("/staff/queue/")

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")
    assert b"mara" not in response.content


def test_an_htmx_poll_after_the_session_ended_reloads_the_whole_page() -> None:
    response = Client().get("/staff/queue/", headers={"HX-Request": "true"})

    assert response.status_code == 200
    assert response["HX-Refresh"] == "true"


def test_staff_see_the_queue_with_its_figures(
    staff_client: Client, runpod_health: Any, now: Any
) -> None:
    mara = UserFactory(username="mara")
    batch = make_batch(mara, ["submitted", "running", "running", "retrying", "completed"],
                       title="The vault")  # fmt: skip
    make_batch(UserFactory(username="boss"), ["submitted"], priority=Priority.HIGH)
    retrying = batch.images.get(index=3)
    retrying.attempts, retrying.error = 1, "RunPod job ended FAILED: CUDA out of memory"
    retrying.save(update_fields=["attempts", "error"])
    charge(retrying, 1, now - dt.timedelta(seconds=10), "0.020000")
    pushlag.observe(0.004)
    pushlag.observe(0.3)

    response = staff_client.get("/staff/queue/")

    html = response.content.decode()
    assert response.status_code == 200
    assert response["Cache-Control"].startswith("max-age=0")
    assert 'hx-trigger="every 2s"' in html
    # In flight: 4 on RunPod (2 queued there, 2 rendering), 1 waiting here.
    assert 'data-testid="in-flight">4<' in html
    assert 'data-testid="waiting">1<' in html
    table = html.split('data-testid="in-flight-table"')[1].split("</table>")[0]
    assert table.index("boss") < table.index("mara")  # high priority first
    assert "ep-sdxl" in table
    # RunPod's own queue and workers.
    assert 'data-testid="runpod-in-queue">5<' in html
    assert "Workers initializing" in html
    # Attempts, charges, the error with a link to the batch's admin page.
    assert 'data-testid="attempts-total">1<' in html
    assert "0.0200" in html
    assert "CUDA out of memory" in html
    assert f'href="/admin/batches/batch/{batch.pk}/change/"' in html
    assert 'data-testid="push-lag">≤ 500 ms<' in html  # p95 of 4 ms and 300 ms


def test_staff_see_helpful_empty_states_on_an_idle_system(
    staff_client: Client, runpod_health: Any
) -> None:
    response = staff_client.get("/staff/queue/")

    html = response.content.decode()
    assert response.status_code == 200
    assert "Nothing in flight." in html
    assert "No attempt ended in the last 15 minutes." in html
    assert "Nothing charged in the last 24 hours." in html
    assert "No failed attempt in the last 24 hours." in html
    assert "no panel finished yet" in html


def test_an_htmx_poll_gets_the_figures_fragment_only(
    staff_client: Client, runpod_health: Any
) -> None:
    make_batch(UserFactory(username="mara"), ["running"])

    response = staff_client.get("/staff/queue/", headers={"HX-Request": "true"})

    html = response.content.decode()
    assert response.status_code == 200
    assert html.lstrip().startswith('<div id="queue-figures"')
    assert "<html" not in html
    assert 'data-testid="in-flight">1<' in html


def test_an_unreachable_runpod_shows_as_such_and_the_page_still_answers(
    staff_client: Client, runpod_health: Any, settings: Any
) -> None:
    runpod_health.replace(
        "GET", f"{settings.RUNPOD_BASE_URL}/{settings.RUNPOD_ENDPOINT_ID}/health", status=503
    )

    response = staff_client.get("/staff/queue/")

    assert response.status_code == 200
    assert "Unreachable" in response.content.decode()


def test_the_admin_index_and_the_staff_nav_link_to_the_queue(staff_client: Client) -> None:
    assert 'href="/staff/queue/"' in staff_client.get("/admin/").content.decode()
    assert 'href="/staff/queue/"' in staff_client.get("/").content.decode()


def test_an_authors_nav_has_no_queue_link(author_client: Client) -> None:
    assert 'href="/staff/queue/"' not in author_client.get("/").content.decode()
