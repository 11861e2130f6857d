"""API tokens: `Authorization: Token` and `Bearer`, and `POST /api/v1/auth/token/`."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db

TOKEN_URL = "/api/v1/auth/token/"


@pytest.fixture
def token(user: Any) -> Token:
    return Token.objects.create(user=user)


@pytest.mark.parametrize("scheme", ["Token", "Bearer", "bearer", "TOKEN"])
def test_a_token_is_accepted_under_either_scheme(scheme: str, token: Token) -> None:
    response = APIClient().get("/api/v1/budget/", HTTP_AUTHORIZATION=f"{scheme} {token.key}")

    assert response.status_code == 200


@pytest.mark.parametrize(
    "header",
    [
        "Bearer",
        "Bearer a b",
        "Bearer 0123456789abcdef0123456789abcdef0123456z",
        "Bearer " + "a" * 10_000,
        "Bearer abc\x00def",
        "Token \u00e9\u00e9\u00e9",
        "Bearer 0000000000000000000000000000000000000000",
    ],
)
def test_a_malformed_or_wrong_token_is_a_401_with_a_code(header: str, user: Any) -> None:
    response = APIClient().get("/api/v1/budget/", HTTP_AUTHORIZATION=header)

    assert response.status_code == 401
    body = response.json()
    assert body["code"] in ("authentication_failed", "not_authenticated")
    assert body["detail"]


def test_an_inactive_users_token_is_refused(token: Token, user: Any) -> None:
    user.is_active = False
    user.save(update_fields=["is_active"])

    response = APIClient().get("/api/v1/budget/", HTTP_AUTHORIZATION=f"Bearer {token.key}")

    assert response.status_code == 401


def test_the_schema_documents_both_schemes() -> None:
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)

    schemes = schema["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "The same API token as `tokenAuth`, sent as `Bearer <key>`.",
    }
    assert "tokenAuth" in schemes


# --- POST /api/v1/auth/token/ ----------------------------------------------------------------


def test_a_user_gets_their_token_with_username_and_password() -> None:
    user = get_user_model().objects.create_user("mara", password="vault-door-42")

    response = APIClient().post(
        TOKEN_URL, {"username": "mara", "password": "vault-door-42"}, format="json"
    )

    assert response.status_code == 200
    assert response.json() == {"token": Token.objects.get(user=user).key, "username": "mara"}
    # Asking again gives the same token: logging in on a second machine logs out nobody.
    again = APIClient().post(
        TOKEN_URL, {"username": "mara", "password": "vault-door-42"}, format="json"
    )
    assert again.json()["token"] == response.json()["token"]
    assert Token.objects.filter(user=user).count() == 1


def test_a_wrong_password_gets_no_token(user: Any) -> None:
    response = APIClient().post(
        TOKEN_URL, {"username": user.username, "password": "wrong"}, format="json"
    )

    assert response.status_code == 400
    assert response.json()["code"] == "invalid_credentials"
    assert not Token.objects.filter(user=user).exists()


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"username": "x"},
        {"username": ["x"], "password": {"a": 1}},
        {"username": "x" * 100_000, "password": "y"},
        {"username": "a\x00b", "password": "y"},
        [1, 2, 3],
        "just a string",
        None,
    ],
)
def test_a_malformed_login_body_is_a_400(body: Any) -> None:
    response = APIClient().post(TOKEN_URL, body, format="json")

    assert response.status_code == 400
    assert response.json()["code"] in ("invalid", "invalid_credentials")


def test_a_login_body_that_is_not_json_is_a_4xx() -> None:
    response = APIClient().post(TOKEN_URL, "username=a&password=b", content_type="text/plain")

    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"


def test_password_guessing_is_throttled_per_address(settings: Any, user: Any) -> None:
    settings.COMICGEN_THROTTLE_LOGIN = "3/min"
    client = APIClient()
    answers = [
        client.post(TOKEN_URL, {"username": f"u{n}", "password": "p"}, format="json")
        for n in range(4)
    ]

    assert [answer.status_code for answer in answers] == [400, 400, 400, 429]
    assert answers[-1].json()["code"] == "throttled"
    assert int(answers[-1]["Retry-After"]) >= 1


def test_a_forged_x_forwarded_for_does_not_escape_the_login_throttle(
    settings: Any, user: Any
) -> None:
    # With no proxy in front (COMICGEN_PROXY_COUNT=0) the header is the client's own words.
    settings.COMICGEN_THROTTLE_LOGIN = "3/min"
    client = APIClient()
    answers = [
        client.post(
            TOKEN_URL,
            {"username": f"u{n}", "password": "p"},
            format="json",
            HTTP_X_FORWARDED_FOR=f"203.0.113.{n}",
        )  # fmt: skip
        for n in range(4)
    ]

    assert [answer.status_code for answer in answers] == [400, 400, 400, 429]
