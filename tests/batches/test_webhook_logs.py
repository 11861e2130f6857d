"""A webhook URL's token is its only proof, so it must never reach a log: Django logs every 4xx
with its path ("Bad Request: /api/v1/runpod/webhook/.../<token>/"), and the settings' filter
takes the token out of those records before any handler sees them."""

from __future__ import annotations

import logging

import pytest
from django.test import Client

from tests.batches.test_webhook_api import url
from tests.support.asgi_http import AsgiHttpClient

FORGED = "0123456789abcdef0123456789abcdef"


def logged_text(caplog: pytest.LogCaptureFixture) -> str:
    """Each record's message and the path of the request it carries, as handlers see them."""
    parts = []
    for record in caplog.records:
        parts.append(record.getMessage())
        request = getattr(record, "request", None)
        if request is not None:
            parts.append(request.get_full_path())
    return "\n".join(parts)


@pytest.mark.django_db
def test_a_forged_webhook_token_is_logged_without_the_token(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="django.request"):
        response = client.post(url(token=FORGED), {}, content_type="application/json")

    assert response.status_code == 403
    text = logged_text(caplog)
    assert "Forbidden: /api/v1/runpod/webhook/7/0/70/1/[redacted]/" in text
    assert FORGED not in text


@pytest.mark.django_db
def test_a_real_token_with_a_bad_body_is_logged_without_the_token(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    real = url().rstrip("/").rsplit("/", 1)[1]
    with caplog.at_level(logging.WARNING, logger="django.request"):
        response = client.post(url(), b"not json", content_type="application/json")
        unknown = client.post(url() + "extra/", {}, content_type="application/json")

    assert response.status_code == 400
    assert unknown.status_code == 404
    text = logged_text(caplog)
    assert "Bad Request: /api/v1/runpod/webhook/7/0/70/1/[redacted]/" in text
    assert "Not Found: /api/v1/runpod/webhook/7/0/70/1/[redacted]/[redacted]/" in text
    assert real not in text


def test_a_refusal_served_as_asgi_is_logged_without_the_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="batches.webhooks"):
        response = AsgiHttpClient().post(url(token=FORGED), {})

    assert response.status_code == 403
    text = logged_text(caplog)
    assert "webhook refused 403 forbidden: /api/v1/runpod/webhook/7/0/70/1/[redacted]/" in text
    assert FORGED not in text


def test_a_line_break_in_a_webhook_path_cannot_forge_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The server hands over the path percent-decoded: %0A is a real line break there."""
    forged = "x%0A2026-11-30 12:00:00,000 ERROR batches.tasks FORGED"
    with caplog.at_level(logging.WARNING, logger="batches.webhooks"):
        response = AsgiHttpClient().post(url(token=forged), {})

    assert response.status_code == 403
    assert "\n" not in logged_text(caplog)


def test_paths_other_than_webhooks_are_logged_as_they_are(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="django.request"):
        client.get("/api/v1/no-such-thing/abcdef0123456789/")

    assert "Not Found: /api/v1/no-such-thing/abcdef0123456789/" in logged_text(caplog)
