"""Staff raise a limit or start a new period from the admin; the ledger records both. Money
moves only through those actions: budgets are never deleted, amounts never edited by hand."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.test import Client

from budgets import services
from budgets.models import Budget, LedgerEntry
from budgets.services import get_budget
from tests.factories import UserFactory

URL = "/admin/budgets/budget/"


@pytest.fixture
def staff_client(db: Any) -> Client:
    client = Client()
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


def test_the_list_shows_spent_reserved_and_remaining(staff_client: Client, user: Any) -> None:
    budget = get_budget(user)
    Budget.objects.filter(pk=budget.pk).update(spent=Decimal("1.5"), reserved=Decimal("0.5"))

    page = staff_client.get(URL).content.decode()

    assert user.username in page
    assert "23.0000" in page  # remaining of the default 25


def test_set_limit_action_raises_a_limit(staff_client: Client, user: Any) -> None:
    budget = get_budget(user)

    response = staff_client.post(
        URL,
        {
            "action": "set_limit",
            "_selected_action": [budget.pk],
            "apply": "1",
            "limit": "80",
            "note": "pro plan",
        },
        follow=True,
    )

    assert response.status_code == 200
    budget.refresh_from_db()
    assert budget.limit == Decimal("80")
    assert LedgerEntry.objects.get(budget=budget, kind="limit_change").note == "pro plan"


def test_set_limit_refuses_a_limit_below_what_is_used(staff_client: Client, user: Any) -> None:
    budget = get_budget(user)
    Budget.objects.filter(pk=budget.pk).update(spent=Decimal("10"))

    response = staff_client.post(
        URL,
        {"action": "set_limit", "_selected_action": [budget.pk], "apply": "1", "limit": "5"},
        follow=True,
    )

    html = response.content.decode()
    assert "below what is already spent" in html
    # One message per outcome: the refusal alone, no "Limit set on 0 budget(s)" beside it.
    assert "set on 0" not in html
    assert "Monthly limit set" not in html
    assert html.count('class="error"') == 1
    budget.refresh_from_db()
    assert budget.limit == Decimal("25")


def test_set_limit_on_several_budgets_says_which_changed_and_which_were_refused(
    staff_client: Client, user: Any
) -> None:
    refused = get_budget(user)
    Budget.objects.filter(pk=refused.pk).update(spent=Decimal("10"))
    changed = get_budget(UserFactory(username="roomy"))

    response = staff_client.post(
        URL,
        {
            "action": "set_limit",
            "_selected_action": [refused.pk, changed.pk],
            "apply": "1",
            "limit": "5",
        },
        follow=True,
    )

    messages = [str(message) for message in response.context["messages"]]
    assert messages == [
        "Monthly limit set to 5 for roomy.",
        f"Limit not changed for {user.username} (The new limit is below what is already spent "
        "and reserved.)",
    ]
    changed.refresh_from_db()
    assert changed.limit == Decimal("5")


def test_the_budget_page_links_to_setting_its_limit(staff_client: Client, user: Any) -> None:
    budget = get_budget(user)
    set_limit_url = f"{URL}{budget.pk}/set-limit/"

    page = staff_client.get(f"{URL}{budget.pk}/change/").content.decode()
    form = staff_client.get(set_limit_url)

    assert f'href="{set_limit_url}"' in page
    assert form.status_code == 200
    assert 'name="limit"' in form.content.decode()


def test_the_limit_is_set_from_the_budget_page(staff_client: Client, user: Any) -> None:
    budget = get_budget(user)

    response = staff_client.post(
        f"{URL}{budget.pk}/set-limit/", {"limit": "60", "note": "bigger chapter"}
    )

    assert response.status_code == 302
    assert response["Location"] == f"{URL}{budget.pk}/change/"
    budget.refresh_from_db()
    assert budget.limit == Decimal("60")
    assert LedgerEntry.objects.get(budget=budget, kind="limit_change").note == "bigger chapter"
    page = staff_client.get(response["Location"]).content.decode()
    assert f"Monthly limit of {user.username} set to 60." in page


def test_a_refused_limit_stays_on_the_form_with_the_reason(staff_client: Client, user: Any) -> None:
    budget = get_budget(user)
    Budget.objects.filter(pk=budget.pk).update(spent=Decimal("10"))

    response = staff_client.post(f"{URL}{budget.pk}/set-limit/", {"limit": "5"})

    assert response.status_code == 200
    assert "below what is already spent" in response.content.decode()
    assert [str(message) for message in response.context["messages"]] == []
    budget.refresh_from_db()
    assert budget.limit == Decimal("25")
    assert not LedgerEntry.objects.filter(budget=budget).exists()


def test_the_set_limit_page_needs_staff(user: Any) -> None:
    budget = get_budget(user)
    client = Client()
    client.force_login(user)

    response = client.post(f"{URL}{budget.pk}/set-limit/", {"limit": "1000"})

    assert response.status_code == 302  # to the admin login
    assert "/admin/login/" in response["Location"]
    budget.refresh_from_db()
    assert budget.limit == Decimal("25")


def test_the_budget_page_links_to_its_ledger_instead_of_listing_every_row(
    staff_client: Client, user: Any
) -> None:
    budget = get_budget(user)
    other = get_budget(UserFactory(username="someone-else"))
    for n in range(30):
        services.set_limit(budget, Decimal(30 + n), f"raise {n}")
    services.set_limit(other, Decimal("99"), "not theirs")

    page = staff_client.get(f"{URL}{budget.pk}/change/").content.decode()
    ledger_url = f"/admin/budgets/ledgerentry/?budget__id__exact={budget.pk}"
    ledger = staff_client.get(ledger_url)

    assert f'href="{ledger_url}"' in page
    assert "All 30 ledger entries of this budget" in page
    assert "raise 29" in page  # the latest rows are shown
    assert "raise 0<" not in page  # not all of them
    assert ledger.status_code == 200
    listed = ledger.content.decode()
    assert "raise 0" in listed
    assert "raise 29" in listed
    assert "not theirs" not in listed
    assert ledger.context["cl"].result_count == 30


def test_start_new_period_action_resets_spent(staff_client: Client, user: Any) -> None:
    budget = get_budget(user)
    Budget.objects.filter(pk=budget.pk).update(spent=Decimal("4"))

    staff_client.post(URL, {"action": "start_new_period", "_selected_action": [budget.pk]})

    budget.refresh_from_db()
    assert budget.spent == 0
    assert LedgerEntry.objects.filter(budget=budget, kind="period_reset").count() == 1


def test_a_budget_cannot_be_deleted(staff_client: Client, user: Any) -> None:
    budget = get_budget(user)
    services.set_limit(budget, Decimal("30"), "raise")

    page = staff_client.get(f"{URL}{budget.pk}/delete/")
    action = staff_client.post(
        URL, {"action": "delete_selected", "_selected_action": [budget.pk], "post": "yes"}
    )

    assert page.status_code == 403
    assert action.status_code in (200, 302)  # "no action selected": the action is not offered
    assert Budget.objects.filter(pk=budget.pk).exists()
    assert LedgerEntry.objects.filter(budget=budget).count() == 1
    assert "delete_selected" not in staff_client.get(URL).content.decode()


def test_posting_the_budget_change_form_changes_no_money(staff_client: Client, user: Any) -> None:
    budget = get_budget(user)
    Budget.objects.filter(pk=budget.pk).update(spent=Decimal("2"), reserved=Decimal("1"))
    before: dict[str, Any] = dict(Budget.objects.values().get(pk=budget.pk))

    response = staff_client.post(
        f"{URL}{budget.pk}/change/",
        {
            "limit": "1000",
            "spent": "0",
            "reserved": "0",
            "currency": "EUR",
            "period_start": "2000-01-01",
            "period_end": "2100-01-01",
            "entries-TOTAL_FORMS": "1",
            "entries-INITIAL_FORMS": "0",
            "entries-MIN_NUM_FORMS": "0",
            "entries-MAX_NUM_FORMS": "0",
            "entries-0-kind": "charge",
            "entries-0-amount": "-5",
        },
    )

    assert response.status_code in (200, 302)
    after: dict[str, Any] = dict(Budget.objects.values().get(pk=budget.pk))
    assert {key: after[key] for key in after if key != "updated_at"} == {
        key: before[key] for key in before if key != "updated_at"
    }
    assert not LedgerEntry.objects.filter(budget=budget).exists()


def test_ledger_entries_are_view_only(staff_client: Client, user: Any) -> None:
    budget = get_budget(user)
    services.set_limit(budget, Decimal("30"), "raise")
    entry = LedgerEntry.objects.get(budget=budget)
    url = f"/admin/budgets/ledgerentry/{entry.pk}/change/"

    page = staff_client.get(url)
    change = staff_client.post(url, {"kind": "charge", "amount": "99", "budget": budget.pk})
    delete = staff_client.post(f"/admin/budgets/ledgerentry/{entry.pk}/delete/", {"post": "yes"})

    assert page.status_code == 200
    assert (change.status_code, delete.status_code) == (403, 403)
    entry.refresh_from_db()
    assert (entry.kind, entry.amount) == ("limit_change", Decimal("30"))
    assert staff_client.get("/admin/budgets/ledgerentry/add/").status_code == 403


def test_the_budget_change_page_renders_for_staff(staff_client: Client, user: Any) -> None:
    budget = get_budget(user)
    services.set_limit(budget, Decimal("30"), "raise")

    page = staff_client.get(f"{URL}{budget.pk}/change/")

    assert page.status_code == 200
    assert "raise" in page.content.decode()  # the latest ledger rows
