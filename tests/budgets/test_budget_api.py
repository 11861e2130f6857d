"""GET /api/v1/budget/ and POST /api/v1/batches/estimate/."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from rest_framework.test import APIClient

from batches.models import Batch
from budgets import pricing
from budgets.models import Budget


@pytest.mark.django_db
def test_the_budget_shows_limit_spent_reserved_and_the_period(
    api: APIClient, settings: Any
) -> None:
    data = api.get("/api/v1/budget/").json()

    assert Decimal(data["limit"]) == settings.COMICGEN_DEFAULT_MONTHLY_BUDGET
    assert Decimal(data["spent"]) == Decimal(data["reserved"]) == 0
    assert Decimal(data["remaining"]) == Decimal(data["limit"])
    assert data["currency"] == "USD"
    assert data["period_start"].endswith("-01")


@pytest.mark.django_db
def test_an_estimate_prices_the_body_and_creates_nothing(api: APIClient, user: Any) -> None:
    body = {
        "params": {"width": 512, "height": 512, "steps": 20},
        "images": [{"prompt": "a"}, {"prompt": "b", "params": {"width": 1024}}],
    }

    data = api.post("/api/v1/batches/estimate/", body, format="json").json()

    base = pricing.expected_cost({"model": "sdxl", "width": 512, "height": 512, "steps": 20}) + (
        pricing.expected_cost({"model": "sdxl", "width": 1024, "height": 512, "steps": 20})
    )
    assert Decimal(data["base_cost"]) == base
    assert Decimal(data["estimated_cost"]) == base + Decimal(data["retry_allowance"])
    assert Decimal(data["retry_allowance_rate"]) == pricing.RETRY_ALLOWANCE
    assert data["within_budget"] is True
    assert data["images"] == 2
    assert not Batch.objects.exists()
    assert Budget.objects.get(user=user).reserved == 0


@pytest.mark.django_db
def test_an_estimate_says_when_it_does_not_fit(api: APIClient, user: Any) -> None:
    api.get("/api/v1/budget/")
    Budget.objects.filter(user=user).update(limit=Decimal("0.0001"))

    data = api.post(
        "/api/v1/batches/estimate/", {"images": [{"prompt": "a"}]}, format="json"
    ).json()

    assert data["within_budget"] is False
    assert Decimal(data["remaining"]) == Decimal("0.0001")


@pytest.mark.django_db
def test_an_estimate_validates_like_a_submit(api: APIClient) -> None:
    response = api.post("/api/v1/batches/estimate/", {"images": []}, format="json")

    assert response.status_code == 400
    assert "images" in response.json()["fields"]
