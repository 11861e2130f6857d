"""POST /api/v1/batches/estimate/: the abuse limits (pricing itself: tests/budgets)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from rest_framework.test import APIClient

from batches.models import Batch
from tests.factories import UserFactory
from tests.support.history import record_history

URL = "/api/v1/batches/estimate/"
BODY = {"images": [{"prompt": "a"}, {"prompt": "b"}]}

pytestmark = pytest.mark.django_db


def test_estimates_past_the_rate_get_429_with_retry_after(api: APIClient, settings: Any) -> None:
    settings.COMICGEN_THROTTLE_ESTIMATE = "2/min"
    answers = [api.post(URL, BODY, format="json") for _ in range(3)]

    assert [response.status_code for response in answers] == [200, 200, 429]
    assert answers[-1].json()["code"] == "throttled"
    assert int(answers[-1]["Retry-After"]) >= 1


def test_estimates_and_submits_are_counted_apart(api: APIClient, settings: Any) -> None:
    settings.COMICGEN_THROTTLE_ESTIMATE = "1/min"
    settings.COMICGEN_THROTTLE_SUBMIT = "1/min"

    assert api.post(URL, BODY, format="json").status_code == 200
    assert api.post("/api/v1/batches/", BODY, format="json").status_code == 202
    assert api.post(URL, BODY, format="json").status_code == 429


def test_the_default_rate_lets_a_form_price_as_the_author_types(api: APIClient) -> None:
    for _ in range(60):
        assert api.post(URL, BODY, format="json").status_code == 200


def test_an_estimate_of_a_high_priority_batch_is_refused_as_its_submit_would_be(
    api: APIClient, user: Any
) -> None:
    body = {**BODY, "priority": "high"}
    refused = api.post(URL, body, format="json")

    assert refused.status_code == 403
    assert refused.json()["code"] == "priority_not_allowed"
    user.user_permissions.add(Permission.objects.get(codename="submit_high_priority"))
    api.force_authenticate(type(user).objects.get(pk=user.pk))  # as the next request loads it
    assert api.post(URL, body, format="json").status_code == 200


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"[" * 100_000 + b"]" * 100_000, 400),
        (b'{"images": [{"prompt": "a", "seed": ' + b"1" * 4500 + b"}]}", 400),
        (b'{"images": [{"prompt": "a", "params": {"steps": 1e400}}]}', 400),
        (b'{"images": "' + b"x" * 3_000_000 + b'"}', 413),
        (b"\x00\x01\x02", 400),
    ],
)
def test_a_hostile_body_is_a_4xx(api: APIClient, raw: bytes, status: int) -> None:
    response = api.generic("POST", URL, raw, content_type="application/json")

    assert response.status_code == status
    assert set(response.json()) == {"code", "detail"}


def test_a_hundred_thousand_images_are_refused_by_count(api: APIClient) -> None:
    response = api.post(URL, {"images": [{"prompt": "a"}] * 100_000}, format="json")

    assert response.status_code == 400
    assert "at most 500 images" in str(response.json()["fields"]["images"])
    assert not Batch.objects.exists()


def test_anonymous_callers_are_refused_before_any_throttle(db: Any) -> None:
    response = APIClient().post(URL, BODY, format="json")

    assert response.status_code in (401, 403)
    other = APIClient()
    other.force_authenticate(UserFactory())
    assert other.post(URL, BODY, format="json").status_code == 200


# -- what the estimate is based on -----------------------------------------------------------


def test_with_no_history_the_estimate_says_it_comes_from_the_catalogue(api: APIClient) -> None:
    data = api.post(URL, BODY, format="json").json()

    assert data["basis"] == {
        "kind": "catalogue",
        "samples": 0,
        "models": {
            "sdxl": {
                "kind": "catalogue",
                "samples": 0,
                "panels": 2,
                "failure_rate": None,
                "allowance_rate": "0.2500",
            }
        },
    }
    assert Decimal(data["expected_cost"]) + Decimal(data["allowance"]) == Decimal(
        data["estimated_cost"]
    )
    # The older names stay, for clients written before expected_cost and allowance.
    assert (data["base_cost"], data["retry_allowance"]) == (
        data["expected_cost"],
        data["allowance"],
    )


def test_with_history_the_estimate_is_measured_and_names_its_sample(api: APIClient) -> None:
    record_history(240, seconds=0.5)

    data = api.post(URL, BODY, format="json").json()

    assert data["basis"]["kind"] == "measured"
    assert data["basis"]["samples"] == 240
    assert data["basis"]["models"]["sdxl"]["failure_rate"] == 0.0
    # 0.5 s a panel at 0.00031 per second, and the 5 % floor of the allowance.
    assert Decimal(data["expected_cost"]) == Decimal("0.000310")
    assert Decimal(data["allowance"]) == Decimal("0.000016")
    assert Decimal(data["retry_allowance_rate"]) == Decimal("0.05")
    assert not Batch.objects.filter(title="Untitled chapter").exists()


@pytest.mark.parametrize(
    "body",
    [
        # What the estimate answers is not something a client can tell it.
        {**BODY, "basis": {"kind": "measured", "samples": 10**9}},
        {**BODY, "expected_cost": "0"},
        {"images": [{"prompt": "a", "params": {"model": "sdxl" * 10_000}}]},
        {"images": [{"prompt": "a", "params": {"model": ["sdxl"]}}]},
        {"images": [{"prompt": "a", "params": {"width": 768 * 10**30}}]},
    ],
)
def test_a_hostile_estimate_body_is_a_400_that_names_the_field(
    api: APIClient, body: dict[str, Any]
) -> None:
    response = api.post(URL, body, format="json")

    assert response.status_code == 400
    assert {"code", "detail"} <= set(response.json())
    assert "basis" not in response.json()


def test_the_schema_documents_the_basis(api: APIClient) -> None:
    schema = api.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()

    estimate = schema["components"]["schemas"]["Estimate"]["properties"]
    assert {"expected_cost", "allowance", "basis"} <= set(estimate)
    basis = schema["components"]["schemas"]["EstimateBasis"]["properties"]
    assert set(basis) == {"kind", "samples", "models"}
    assert "measured" in str(schema["components"]["schemas"]["ModelBasis"])
