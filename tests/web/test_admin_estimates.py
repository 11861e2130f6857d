"""Staff see how far the estimates were off: a column and filters on the batch list, and the
estimate accuracy page (by model and week)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from batches.models import Batch, BatchStatus
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

LIST = "/admin/batches/batch/"
ACCURACY = "/admin/batches/batch/estimates/"


def finished(
    expected: str, actual: str, *, model: str = "sdxl", kind: str = "measured", days_ago: int = 0
) -> Batch:
    """A completed batch priced at `expected` (+5 % allowance) that cost `actual`."""
    return Batch.objects.create(
        user=UserFactory(),
        title=f"{model} {kind} {expected}",
        status=BatchStatus.COMPLETED,
        finished_at=timezone.now() - timedelta(days=days_ago),
        expected_cost=Decimal(expected),
        estimated_cost=Decimal(expected) * Decimal("1.05"),
        actual_cost=Decimal(actual),
        estimate_basis={"kind": kind, "samples": 40, "models": {model: {"kind": kind}}},
    )


def test_the_list_shows_each_finished_batchs_estimate_error(staff_client: Client) -> None:
    finished("0.001000", "0.001100")
    finished("0.002000", "0.001000", model="flux-dev", kind="catalogue")

    html = staff_client.get(LIST).content.decode()

    assert "Estimate error" in html
    assert "+10% (measured, sdxl)" in html
    assert "-50% (catalogue, flux-dev)" in html
    assert 'href="/admin/batches/batch/estimates/"' in html


def test_the_list_filters_by_basis_and_by_model(staff_client: Client) -> None:
    finished("0.001000", "0.001100")
    finished("0.002000", "0.001000", model="flux-dev", kind="catalogue")

    measured = staff_client.get(LIST, {"basis": "measured"}).content.decode()
    flux = staff_client.get(LIST, {"model": "flux-dev"}).content.decode()

    assert ("sdxl measured" in measured, "flux-dev catalogue" in measured) == (True, False)
    assert ("sdxl measured" in flux, "flux-dev catalogue" in flux) == (False, True)


def test_the_accuracy_page_gives_the_error_by_model_and_week(staff_client: Client) -> None:
    finished("0.001000", "0.001100")
    finished("0.001000", "0.000900")
    finished("0.002000", "0.001000", model="flux-dev", kind="catalogue")
    finished("0.001000", "0.002000", days_ago=14)
    # Not what was priced: a cancelled batch ran less than its estimate covered.
    cancelled = finished("0.001000", "0.000100")
    Batch.objects.filter(pk=cancelled.pk).update(status=BatchStatus.CANCELLED)

    html = staff_client.get(ACCURACY).content.decode()

    table = html.split('<table id="estimate-accuracy">')[1].split("</table>")[0]
    rows = [re.findall(r"<td>(.*?)</td>", row) for row in table.split("<tr>")[2:]]
    this_week, two_weeks_ago = week_of(timezone.now()), week_of(timezone.now() - timedelta(14))
    # model, week, batches, measured, mean error, mean |error|, worst, over-reserved
    assert rows == [
        ["flux-dev", this_week, "1", "0", "-50.0%", "50.0%", "-50.0%", "+110.0%"],
        # +10 % and -10 %: no bias, 10 % off either way.
        ["sdxl", this_week, "2", "2", "+0.0%", "10.0%", "+10.0%", "+6.1%"],
        ["sdxl", two_weeks_ago, "1", "1", "+100.0%", "100.0%", "+100.0%", "-47.5%"],
    ]


def week_of(moment: datetime) -> str:
    day = timezone.localdate(moment)
    return str(day - timedelta(days=day.weekday()))


def test_the_accuracy_page_is_for_staff_only(client: Client, user: Any) -> None:
    assert client.get(ACCURACY).status_code == 302
    client.force_login(user)
    assert client.get(ACCURACY).status_code == 302
