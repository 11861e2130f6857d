"""Every /api/v1/ answer is JSON `{"code", "detail"}`: unknown paths, wrong methods, missing and
other users' objects included."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from tests.factories import UserFactory
from tests.web.conftest import make_batch

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("method", ["get", "post", "put", "patch", "delete", "options", "head"])
@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/nope/",
        "/api/v1/batches/abc/",
        "/api/v1/batches/1/frobnicate/",
        "/api/v1/%00/",
        "/api/v1/" + "x" * 5000,
        "/api/v1/batches/1/../../../etc/passwd",
    ],
)
def test_an_unknown_api_path_answers_a_json_404_for_every_method(
    method: str, path: str, api: APIClient
) -> None:
    response = getattr(api, method)(path)

    assert response.status_code == 404
    assert response["Content-Type"].startswith("application/json")
    if method != "head":
        body = response.json()
        assert body["code"] == "not_found"
        assert "/api/v1/docs/" in body["detail"]


def test_an_unknown_api_path_answers_json_to_anonymous_callers_too() -> None:
    response = APIClient().get("/api/v1/no-such-thing/")

    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


def test_a_path_missing_its_trailing_slash_is_named_with_it(api: APIClient) -> None:
    response = api.post("/api/v1/batches", {}, format="json")

    assert response.status_code == 404
    assert response.json()["detail"] == (
        "No API endpoint at /api/v1/batches; did you mean /api/v1/batches/ ?"
    )


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("put", "/api/v1/batches/"),
        ("delete", "/api/v1/batches/"),
        ("get", "/api/v1/batches/estimate/"),
        ("patch", "/api/v1/budget/"),
        ("post", "/api/v1/health/"),
        ("post", "/api/v1/docs/"),
        ("get", "/api/v1/auth/token/"),
    ],
)
def test_a_wrong_method_answers_a_json_405(method: str, path: str, api: APIClient) -> None:
    response = getattr(api, method)(path)

    assert response.status_code == 405
    body = response.json()
    assert body["code"] == "method_not_allowed"
    assert method.upper() in body["detail"]


def test_a_missing_batch_answers_not_found(api: APIClient) -> None:
    for path in ("/api/v1/batches/999999/", "/api/v1/batches/999999/download/"):
        response = api.get(path)

        assert response.status_code == 404
        assert response.json() == {
            "code": "not_found",
            "detail": "Nothing here: it does not exist, or it is not yours.",
        }


def test_another_users_batch_answers_exactly_as_a_missing_one(api: APIClient, user: Any) -> None:
    theirs = make_batch(UserFactory(), ["their panel"])
    missing = api.post("/api/v1/batches/999999/cancel/").json()

    response = api.post(f"/api/v1/batches/{theirs.pk}/cancel/")

    assert response.status_code == 404
    assert response.json() == missing
    theirs.refresh_from_db()
    assert theirs.status == "queued"


def test_a_batch_id_beyond_any_bigint_is_a_404_not_a_500(api: APIClient) -> None:
    response = api.get("/api/v1/batches/" + "9" * 40 + "/")

    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
