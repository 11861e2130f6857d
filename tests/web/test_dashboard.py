"""The dashboard: `/`."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.test import Client

from batches.models import Batch
from budgets.services import get_budget

pytestmark = pytest.mark.django_db


def test_it_sends_an_anonymous_visitor_to_the_login_page() -> None:
    response = Client().get("/")

    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/"


def test_the_login_page_logs_an_author_in_and_lands_on_the_dashboard(user: Any) -> None:
    client = Client()
    assert client.get("/accounts/login/").status_code == 200

    response = client.post("/accounts/login/", {"username": user.username, "password": "pw"})

    assert response.status_code == 302
    assert response["Location"] == "/"
    assert client.get("/").status_code == 200


def test_logout_is_a_post_and_ends_the_session(author_client: Client) -> None:
    response = author_client.post("/accounts/logout/")

    assert response.status_code == 302
    assert author_client.get("/").status_code == 302


def test_a_new_author_sees_the_empty_state_and_the_budget(author_client: Client, user: Any) -> None:
    response = author_client.get("/")

    html = response.content.decode()
    assert response.status_code == 200
    assert "No batches yet" in html
    assert 'href="/batches/new/"' in html
    budget = get_budget(user)
    assert f"{budget.limit:.2f}" in html  # the limit, in the summary
    assert "Remaining" in html
    assert "Budget left" in html  # and in the top bar


def test_it_lists_the_users_batches_newest_first_with_progress(
    author_client: Client, user: Any, batch_factory: Any
) -> None:
    older = batch_factory(user, ["a", "b"], title="Older chapter")
    newer = batch_factory(user, ["c"], title="Newer chapter")
    older.images.filter(index=0).update(status="completed")

    html = author_client.get("/").content.decode()

    assert html.index("Newer chapter") < html.index("Older chapter")
    assert f'href="/batches/{newer.pk}/"' in html
    assert "<strong>1</strong>/2 done" in html
    assert 'class="badge badge--queued"' in html
    assert "No batches yet" not in html


def test_it_hides_other_users_batches(author_client: Client, batch_factory: Any) -> None:
    from tests.factories import UserFactory

    batch_factory(UserFactory(), ["x"], title="Someone else's chapter")

    html = author_client.get("/").content.decode()

    assert "Someone else" not in html
    assert "No batches yet" in html


def test_staff_see_every_batch_with_its_owner(
    staff_client: Client, user: Any, batch_factory: Any
) -> None:
    batch_factory(user, ["x"], title="An author's chapter")

    html = staff_client.get("/").content.decode()

    assert "An author&#x27;s chapter" in html
    assert f"by <strong>{user.username}</strong>" in html


def test_it_paginates_twenty_per_page(author_client: Client, user: Any) -> None:
    get_budget(user)
    for number in range(25):
        Batch.objects.create(user=user, title=f"Batch number {number:02d}")

    first = author_client.get("/").content.decode()
    second = author_client.get("/?page=2").content.decode()

    assert first.count('class="batch-row card"') == 20
    assert "Batch number 24" in first
    assert "Batch number 04" not in first
    assert second.count('class="batch-row card"') == 5
    assert "Page 2 of 2" in second


def test_with_htmx_it_answers_with_the_list_fragment_only(
    author_client: Client, user: Any, batch_factory: Any
) -> None:
    batch_factory(user, ["x"], title="Running chapter")

    response = author_client.get("/", headers={"HX-Request": "true"})

    html = response.content.decode()
    assert html.lstrip().startswith('<section id="batch-list"')
    assert "<html" not in html
    assert "Running chapter" in html
    assert 'hx-trigger="every 5s"' in html  # refreshes while something is still running


def test_the_budget_summary_shows_spent_and_reserved(author_client: Client, user: Any) -> None:
    budget = get_budget(user)
    budget.spent = Decimal("1.2500")
    budget.reserved = Decimal("0.5000")
    budget.save(update_fields=["spent", "reserved"])

    html = author_client.get("/").content.decode()

    assert "1.2500" in html
    assert "0.5000" in html
    assert f"{budget.remaining:.4f}" in html
