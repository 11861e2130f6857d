"""HTTP requests sent to comicgen's ASGI application as a server would send them, for routes
served outside Django's request handling (RunPod's webhook: batches.webhooks.asgi_webhook).

`AsgiHttpClient` has the few methods of django.test.Client that such tests use (`post`,
`generic`, `get`), so one test can run against both; its responses have `status_code`,
`content`, `json()` and header lookup. The body can also be sent in pieces with no length
declared (a chunked body), or made to fail the test if anything reads it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote

from asgiref.sync import async_to_sync


class AsgiResponse:
    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], content: bytes) -> None:
        self.status_code = status
        self.headers = {name.decode().lower(): value.decode() for name, value in headers}
        self.content = content

    def json(self) -> Any:
        return json.loads(self.content)

    def __getitem__(self, name: str) -> str:
        return self.headers[name.lower()]


class BodyRead(AssertionError):
    """Raised when a body that must not be read is read."""


class AsgiHttpClient:
    """Requests to comicgen.asgi's HTTP application, one event loop per request."""

    def __init__(self, host: str = "testserver", *, send_host_header: bool = True) -> None:
        self.host = host
        self.send_host_header = send_host_header

    def post(self, path: str, data: Any, content_type: str = "application/json") -> AsgiResponse:
        raw = data if isinstance(data, bytes) else json.dumps(data).encode()
        return self.generic("POST", path, raw, content_type=content_type)

    def get(self, path: str) -> AsgiResponse:
        return self.generic("GET", path, b"")

    def generic(
        self, method: str, path: str, raw: bytes = b"", content_type: str = "application/json"
    ) -> AsgiResponse:
        return self.send(method, path, [raw], content_type=content_type, length=len(raw))

    def send(
        self,
        method: str,
        path: str,
        pieces: Iterable[bytes] | None,
        *,
        content_type: str = "application/json",
        length: int | None = None,
    ) -> AsgiResponse:
        """`pieces`: the body's messages, in order (None: reading the body fails the test).
        `length`: the Content-Length declared (None: none, as for a chunked body)."""
        headers = [(b"content-type", content_type.encode())]
        if self.send_host_header:
            headers.append((b"host", self.host.encode()))
        if length is not None:
            headers.append((b"content-length", str(length).encode()))
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": method, "scheme": "http", "path": unquote(path),
            "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": headers, "client": ("127.0.0.1", 50000), "server": (self.host, 80),
        }  # fmt: skip
        return async_to_sync(self._call)(scope, None if pieces is None else list(pieces))

    async def _call(self, scope: dict[str, Any], pieces: list[bytes] | None) -> AsgiResponse:
        from comicgen.asgi import http_application

        self.pieces_read = 0
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            if pieces is None:
                raise BodyRead("the body was read")
            if self.pieces_read >= len(pieces):
                # The client waits for its answer: a server would send http.disconnect only
                # once it has gone (Django listens for that while its view runs).
                await asyncio.Event().wait()
            self.pieces_read += 1
            more = self.pieces_read < len(pieces)
            return {"type": "http.request", "body": pieces[self.pieces_read - 1], "more_body": more}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await http_application(scope, receive, send)
        start = next(message for message in sent if message["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return AsgiResponse(start["status"], start.get("headers", []), body)
