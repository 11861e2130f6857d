"""The REST calls the CLI makes, and how their failures map to exit codes.

Every failure becomes a `CliError` carrying the exit code a script acts on (see `ExitCode`) and
a sentence for the person at the terminal: the API's own `detail` where it gave one.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from enum import IntEnum
from typing import Any

import requests

TIMEOUT = (10, 60)  # seconds to connect, to read
USER_AGENT = "comicgen-cli/0.1"


class ExitCode(IntEnum):
    """The exit codes of the API contract: 0 completed, 1 not completed, 2 any usage or API
    error. An auth or budget refusal is an API error (its message says which and what to do)."""

    OK = 0  # done; a watched batch ended `completed`
    BATCH_NOT_COMPLETED = 1  # a watched batch ended `partial`, `failed` or `cancelled`
    ERROR = 2  # bad usage, or the API refused or failed the request
    AUTH = 2  # no token, or the server refused it (an API error)
    BUDGET = 2  # the batch does not fit the remaining budget (an API error)
    INTERRUPTED = 130  # Ctrl-C (the batch keeps running)


class CliError(Exception):
    def __init__(self, message: str, exit_code: ExitCode = ExitCode.ERROR, **data: Any) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.data = data


def _error_for(response: requests.Response) -> CliError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"code": "http_" + str(response.status_code), "detail": response.reason or ""}
    code = str(body.get("code", ""))
    detail = str(body.get("detail", "")) or f"HTTP {response.status_code}"
    if response.status_code == 401:
        return CliError(
            f"The server refused the token ({detail}). Run `comicgen login` or set "
            "COMICGEN_TOKEN to the token shown on your API token page.",
            ExitCode.AUTH,
            **body,
        )
    if response.status_code == 402 or code == "budget_exceeded":
        return CliError(detail, ExitCode.BUDGET, **body)
    if response.status_code == 429:
        wait = response.headers.get("Retry-After")
        return CliError(detail + (f" (Retry-After: {wait} s)" if wait else ""), **body)
    return CliError(detail, ExitCode.ERROR, status=response.status_code, **body)


class Api:
    """A session on one server with one token."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.session = requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT
        if token:
            self.session.headers["Authorization"] = f"Token {token}"

    def _call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        if not self.token and not path.startswith("/api/v1/auth/"):
            raise CliError(
                "No API token: run `comicgen login`, or set COMICGEN_URL and COMICGEN_TOKEN.",
                ExitCode.AUTH,
            )
        try:
            response = self.session.request(
                method, self.url + path, timeout=TIMEOUT, allow_redirects=False, **kwargs
            )
        except requests.RequestException as error:
            raise CliError(f"Cannot reach {self.url}: {error}") from None
        if response.status_code >= 300:
            raise _error_for(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._call(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise CliError(
                f"{self.url}{path} did not answer JSON; is COMICGEN_URL right?"
            ) from None

    # --- the endpoints -----------------------------------------------------------------------

    def obtain_token(self, username: str, password: str) -> dict[str, Any]:
        try:
            result = self._json(
                "POST", "/api/v1/auth/token/", json={"username": username, "password": password}
            )
        except CliError as error:
            if error.data.get("code") == "invalid_credentials":
                error.exit_code = ExitCode.AUTH
            raise
        return dict(result)

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        # A fresh key per submit: should this POST be repeated (a proxy retrying it), the
        # server returns the same batch instead of making a second one.
        headers = {"Idempotency-Key": str(uuid.uuid4())}
        return dict(self._json("POST", "/api/v1/batches/", json=body, headers=headers))

    def batches(self, page: int = 1) -> dict[str, Any]:
        return dict(self._json("GET", "/api/v1/batches/", params={"page": page}))

    def batch(self, batch_id: int) -> dict[str, Any]:
        return dict(self._json("GET", f"/api/v1/batches/{batch_id}/"))

    def cancel(self, batch_id: int) -> dict[str, Any]:
        return dict(self._json("POST", f"/api/v1/batches/{batch_id}/cancel/"))

    def retry(self, batch_id: int) -> dict[str, Any]:
        return dict(self._json("POST", f"/api/v1/batches/{batch_id}/retry/"))

    def budget(self) -> dict[str, Any]:
        return dict(self._json("GET", "/api/v1/budget/"))

    def download(self, batch_id: int) -> tuple[int | None, Iterator[bytes]]:
        """The ZIP's size (when announced) and its bytes, streamed."""
        response = self._call("GET", f"/api/v1/batches/{batch_id}/download/", stream=True)
        return _size(response), response.iter_content(chunk_size=64 * 1024)

    # --- the authors' tools ------------------------------------------------------------------

    def pause(self, batch_id: int) -> dict[str, Any]:
        return dict(self._json("POST", f"/api/v1/batches/{batch_id}/pause/"))

    def resume(self, batch_id: int) -> dict[str, Any]:
        return dict(self._json("POST", f"/api/v1/batches/{batch_id}/resume/"))

    def redraw(self, batch_id: int, index: int, body: dict[str, Any]) -> dict[str, Any]:
        """A new take of the panel at `index` (from 0, as the API counts)."""
        path = f"/api/v1/batches/{batch_id}/images/{index}/redraw/"
        return dict(self._json("POST", path, json=body))

    def select(self, batch_id: int, index: int, version: int) -> dict[str, Any]:
        path = f"/api/v1/batches/{batch_id}/images/{index}/select/"
        return dict(self._json("POST", path, json={"version": version}))

    def export(self, batch_id: int, kind: str) -> Export:
        """The chapter as pages (`kind` pdf or cbz), streamed."""
        response = self._call(
            "GET", f"/api/v1/batches/{batch_id}/export/", params={"format": kind}, stream=True
        )
        return Export(
            size=_size(response),
            filename=disposition_filename(response.headers.get("Content-Disposition", "")),
            pages=response.headers.get("X-Comicgen-Pages"),
            chunks=response.iter_content(chunk_size=64 * 1024),
        )


@dataclass(frozen=True)
class Export:
    size: int | None  # bytes, when the server announced it (a streamed export may not)
    filename: str | None  # as the server named it: not yet checked, see main.export_target
    pages: str | None
    chunks: Iterator[bytes]


def _size(response: requests.Response) -> int | None:
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def disposition_filename(header: str) -> str | None:
    """The `filename` of a Content-Disposition header (RFC 6266 as the stdlib's email parser
    reads it, `filename*=UTF-8''...` included), or None."""
    if not header:
        return None
    message = Message()
    message["Content-Disposition"] = header
    name = message.get_filename()
    return str(name) if name else None
