"""POST /accounts/login/ and /admin/login/: password guesses are limited per client address,
on one count with the API's token endpoint; over it, a 429 page that says when to try again."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db

LOGIN_URL = "/accounts/login/"
ADMIN_LOGIN_URL = "/admin/login/"


@pytest.fixture
def three_a_minute(settings: Any) -> None:
    settings.COMICGEN_THROTTLE_LOGIN = "3/min"


def guess(client: Client, url: str = LOGIN_URL, username: str = "mara") -> Any:
    return client.post(url, {"username": username, "password": "not her password"})


@pytest.mark.usefixtures("three_a_minute")
def test_password_guessing_on_the_login_page_is_refused_with_a_page_saying_when(
    user: Any,
) -> None:
    client = Client()

    answers = [guess(client, username=f"user{n}") for n in range(4)]

    assert [answer.status_code for answer in answers] == [200, 200, 200, 429]
    refused = answers[-1]
    wait = int(refused["Retry-After"])
    assert 1 <= wait <= 60
    page = refused.content.decode()
    assert "Too many sign-in attempts" in page
    assert re.search(rf"try again in {wait} seconds?", page), page
    assert refused["Content-Type"].startswith("text/html")


@pytest.mark.usefixtures("three_a_minute")
def test_the_right_password_is_refused_too_once_over_the_limit(user: Any) -> None:
    user.set_password("right")
    user.save(update_fields=["password"])
    client = Client()
    for _ in range(3):
        guess(client)

    answer = client.post(LOGIN_URL, {"username": user.username, "password": "right"})

    assert answer.status_code == 429
    assert "_auth_user_id" not in client.session


@pytest.mark.usefixtures("three_a_minute")
def test_the_login_page_the_admin_login_and_the_api_share_one_count() -> None:
    client = Client()
    guess(client)
    guess(client, ADMIN_LOGIN_URL)
    APIClient().post("/api/v1/auth/token/", {"username": "a", "password": "b"}, format="json")

    admin = guess(client, ADMIN_LOGIN_URL)
    page = guess(client)

    assert admin.status_code == 429
    assert "Too many sign-in attempts" in admin.content.decode()
    assert page.status_code == 429


@pytest.mark.usefixtures("three_a_minute")
def test_reading_the_login_page_and_other_addresses_are_not_limited() -> None:
    client = Client()
    for _ in range(4):
        guess(client)

    assert client.get(LOGIN_URL).status_code == 200
    elsewhere = Client(REMOTE_ADDR="198.51.100.7")
    assert guess(elsewhere).status_code == 200


@pytest.mark.usefixtures("three_a_minute")
def test_a_forged_x_forwarded_for_does_not_escape_the_login_page_throttle() -> None:
    client = Client()
    answers = [
        client.post(
            LOGIN_URL,
            {"username": "mara", "password": "p"},
            HTTP_X_FORWARDED_FOR=f"203.0.113.{n}",
        )
        for n in range(4)
    ]

    assert [answer.status_code for answer in answers] == [200, 200, 200, 429]


def test_under_the_limit_both_forms_still_sign_in(user: Any) -> None:
    user.set_password("right")
    user.is_staff = True
    user.save(update_fields=["password", "is_staff"])

    page = Client().post(LOGIN_URL, {"username": user.username, "password": "right"})
    admin = Client().post(
        f"{ADMIN_LOGIN_URL}?next=/admin/",
        {"username": user.username, "password": "right", "next": "/admin/"},
    )

    assert page.status_code == 302
    assert admin.status_code == 302
    assert admin["Location"] == "/admin/"
