"""Staff raise a limit or start a new period from the admin; the ledger records both."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.test import Client

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

    assert "below what is already spent" in response.content.decode()
    budget.refresh_from_db()
    assert budget.limit == Decimal("25")


def test_start_new_period_action_resets_spent(staff_client: Client, user: Any) -> None:
    budget = get_budget(user)
    Budget.objects.filter(pk=budget.pk).update(spent=Decimal("4"))

    staff_client.post(URL, {"action": "start_new_period", "_selected_action": [budget.pk]})

    budget.refresh_from_db()
    assert budget.spent == 0
    assert LedgerEntry.objects.filter(budget=budget, kind="period_reset").count() == 1
