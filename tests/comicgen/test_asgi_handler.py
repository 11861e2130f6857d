"""comicgen.asgi serves Django's requests with one synchronous middleware chain, entered in one
hop from the event loop to the request's thread, instead of Django's asynchronous chain in
which each middleware class hops there and back."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from asgiref.sync import SyncToAsync

from tests.support.asgi_http import AsgiHttpClient


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of every sync function the request hopped to a thread for."""
    called: list[str] = []
    original = SyncToAsync.__call__

    async def counted(self: SyncToAsync, *args: Any, **kwargs: Any) -> Any:
        called.append(getattr(self.func, "__qualname__", repr(self.func)))
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(SyncToAsync, "__call__", counted)
    return called


@pytest.mark.django_db(transaction=True)
def test_a_page_takes_a_few_hops_to_a_thread_not_one_per_middleware(hops: list[str]) -> None:
    response = AsgiHttpClient().get("/admin/login/")

    assert response.status_code == 200
    assert b"csrfmiddlewaretoken" in response.content  # the middleware chain ran
    # The request_started and request_finished signals' receivers, and the chain: with
    # Django's asynchronous chain, each of the eight middleware classes added one or two.
    assert len(hops) <= 4, hops


@pytest.mark.django_db(transaction=True)
def test_a_4xx_through_asgi_is_still_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="django.request"):
        response = AsgiHttpClient().get("/api/v1/no-such-thing/")

    assert response.status_code == 404
    assert "Not Found: /api/v1/no-such-thing/" in caplog.text
