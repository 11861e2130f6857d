"""Streamed responses that stay streamed under ASGI.

Django's ASGI handler sends a StreamingHttpResponse by iterating it asynchronously. Given a
synchronous iterator (a ZipStream, a generator), StreamingHttpResponse.__aiter__ first collects
every part into a list in a thread (`sync_to_async(list)`): a 500-panel ZIP was held whole in
the web process's memory before its first byte left. Under ASGI, `streaming_response` gives
Django an asynchronous iterator that takes one part at a time from the synchronous one, in the
request's thread; under WSGI (and Django's test client) the synchronous iterator streams as it
is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.http import StreamingHttpResponse


def streaming_response(
    request: Any, parts: Iterable[bytes], content_type: str
) -> StreamingHttpResponse:
    """A StreamingHttpResponse of `parts` that holds one part at a time however it is served.
    `request`: Django's, or DRF's (which wraps it)."""
    django_request = getattr(request, "_request", request)
    content: Iterable[bytes] | AsyncIterator[bytes] = parts
    if isinstance(django_request, ASGIRequest):
        content = one_part_at_a_time(iter(parts))
    return StreamingHttpResponse(content, content_type=content_type)


async def one_part_at_a_time(parts: Iterator[bytes]) -> AsyncIterator[bytes]:
    """The parts of a synchronous iterator, each taken in the request's thread (where the
    view ran) only when the previous one has been sent."""

    def next_part() -> bytes | None:
        return next(parts, None)

    take = sync_to_async(next_part, thread_sensitive=True)
    while (part := await take()) is not None:
        yield part
