"""POST /api/v1/batches/estimate/: the abuse limits (pricing itself: tests/budgets)."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission
from rest_framework.test import APIClient

from batches.models import Batch
from tests.factories import UserFactory

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
