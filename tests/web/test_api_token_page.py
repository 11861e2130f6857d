"""The "Your API token" page: see, copy, rotate (with confirmation)."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db

URL = "/account/api-token/"


def test_it_shows_the_authors_token_making_one_on_the_first_visit(
    author_client: Client, user: Any
) -> None:
    assert not Token.objects.filter(user=user).exists()

    response = author_client.get(URL)

    assert response.status_code == 200
    token = Token.objects.get(user=user)
    html = response.content.decode()
    assert f'value="{token.key}"' in html
    assert "Authorization: Bearer" in html
    assert 'href="/account/api-token/"' in html  # linked from the nav
    # Visiting again shows the same token.
    author_client.get(URL)
    assert Token.objects.get(user=user).key == token.key


def test_rotating_with_confirmation_replaces_the_token(author_client: Client, user: Any) -> None:
    old = Token.objects.create(user=user).key

    response = author_client.post(URL, {"confirm": "rotate"}, follow=True)

    new = Token.objects.get(user=user).key
    assert new != old
    html = response.content.decode()
    assert f'value="{new}"' in html
    assert "The old one no longer works" in html
    assert APIClient().get("/api/v1/budget/", HTTP_AUTHORIZATION=f"Token {old}").status_code == 401
    assert APIClient().get("/api/v1/budget/", HTTP_AUTHORIZATION=f"Token {new}").status_code == 200


@pytest.mark.parametrize("data", [{}, {"confirm": "yes"}, {"confirm": "rotate" * 1000}])
def test_rotating_without_confirmation_changes_nothing(
    data: dict[str, str], author_client: Client, user: Any
) -> None:
    old = Token.objects.create(user=user).key

    response = author_client.post(URL, data, follow=True)

    assert response.status_code == 200
    assert Token.objects.get(user=user).key == old
    assert "Tick the box to confirm" in response.content.decode()


def test_rotating_needs_the_csrf_token(user: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    old = Token.objects.create(user=user).key

    response = client.post(URL, {"confirm": "rotate"})

    assert response.status_code == 403
    assert Token.objects.get(user=user).key == old


def test_an_anonymous_visitor_is_sent_to_log_in() -> None:
    response = Client().get(URL)

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    assert not Token.objects.exists()


def test_other_methods_are_refused(author_client: Client) -> None:
    assert author_client.put(URL).status_code == 405
    assert author_client.delete(URL).status_code == 405
