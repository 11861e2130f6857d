"""Streamed responses stay streamed under ASGI: Django collects a synchronous iterator whole
before sending it there, so comicgen.streaming hands it an asynchronous one."""

from __future__ import annotations

import io
from collections.abc import Iterator

from asgiref.sync import async_to_sync
from django.core.handlers.asgi import ASGIRequest
from django.test import RequestFactory

from comicgen.streaming import streaming_response


def asgi_request() -> ASGIRequest:
    scope = {"type": "http", "method": "GET", "path": "/x/", "query_string": b"", "headers": []}
    return ASGIRequest(scope, io.BytesIO())


def test_under_asgi_each_part_is_made_only_when_the_one_before_has_gone() -> None:
    made: list[int] = []

    def parts() -> Iterator[bytes]:
        for number in range(3):
            made.append(number)
            yield b"part %d" % number

    response = streaming_response(asgi_request(), parts(), "application/zip")
    # What the parts made so far were when each part reached the sender.
    seen: list[tuple[bytes, int]] = []

    async def send_all() -> None:
        async for part in response:
            seen.append((part, len(made)))

    async_to_sync(send_all)()

    assert response.is_async
    assert seen == [(b"part 0", 1), (b"part 1", 2), (b"part 2", 3)]


def test_under_wsgi_the_parts_stream_as_they_are() -> None:
    response = streaming_response(RequestFactory().get("/x/"), iter([b"a", b"b"]), "text/plain")

    assert not response.is_async
    assert b"".join(response.streaming_content) == b"ab"
