"""JSON bodies read defensively: a byte cap, a nesting bound and a digit bound, checked before or
while parsing, so no body can make a request answer 500 or hold a worker for long.

Python's json module alone is not enough for input from strangers:
- a few thousand nested `[` raise RecursionError (not ValueError), which nothing catches;
- a number of more than 4,300 digits raises a ValueError with a confusing message, and one of
  a few thousand digits is parsed (quadratic time) only to be refused by a range check later;
- `1e999` becomes `inf`, and `NaN` / `Infinity` are accepted, none of which PostgreSQL's JSON
  types store;
- `"\\ud800"` becomes a str that cannot be encoded as UTF-8, which psycopg then fails to send.

`parse_json` refuses all of these with a `JSONBodyError` that carries a code and a sentence.
`BoundedJSONParser` is the API's parser (REST_FRAMEWORK's DEFAULT_PARSER_CLASSES); the RunPod
webhook (batches/webhooks.py) uses `read_capped` (`receive_capped` where it is served as ASGI)
and `parse_json` directly, with its own cap.

The byte cap: DRF (3.16 and later) hands a JSONParser subclass `BytesIO(request.body)`, and
Django's `request.body` refuses more than DATA_UPLOAD_MAX_MEMORY_SIZE bytes, by Content-Length
and by what it reads (RequestDataTooBig, answered 413 by comicgen/errors.py). A parser that is
not a JSONParser subclass gets the raw request stream with no cap at all, so this one subclasses
JSONParser and, in case a later DRF changes that, caps what it reads itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping
from itertools import accumulate
from typing import IO, Any

from django.conf import settings
from rest_framework import exceptions, status
from rest_framework.parsers import JSONParser

# A submit body is four levels deep ({"images": [{"params": {...}}]}), a RunPod job status three.
MAX_JSON_DEPTH = 32
# The longest number any field takes is a 10-digit seed; a float with an exponent fits too.
MAX_NUMBER_CHARS = 40

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
# An escaped UTF-16 surrogate, the only way a JSON text can produce an unpaired one.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")


class JSONBodyError(ValueError):
    """A body refused before or while parsing; `status` is 400, or 413 for size."""

    def __init__(self, code: str, detail: str, status: int = status.HTTP_400_BAD_REQUEST):
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.status = status


def too_large(limit: int) -> JSONBodyError:
    return JSONBodyError(
        "payload_too_large",
        f"The request body is over {limit} bytes.",
        status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    )


def check_declared_length(declared_length: str | None, limit: int) -> None:
    """Refuse a Content-Length that is not a count of bytes (400) or is over the limit (413),
    before anything is read."""
    if not declared_length:
        return
    try:
        declared = int(declared_length)
    except ValueError:
        raise JSONBodyError(
            "invalid_content_length", "The Content-Length header is not a number."
        ) from None
    if declared < 0:
        raise JSONBodyError("invalid_content_length", "The Content-Length header is negative.")
    if declared > limit:
        raise too_large(limit)


def read_capped(stream: IO[bytes] | Any, limit: int, declared_length: str | None = None) -> bytes:
    """At most `limit` bytes of a body. Refuses (413) a declared Content-Length over the limit
    without reading, and a body that turns out longer (chunked bodies declare none) after
    reading one byte past the limit, never more."""
    check_declared_length(declared_length, limit)
    chunks: list[bytes] = []
    received = 0
    # A socket-backed stream may return fewer bytes than asked: read until it ends or the cap.
    while received <= limit:
        chunk = stream.read(limit + 1 - received)
        if not chunk:
            break
        chunks.append(chunk)
        received += len(chunk)
    if received > limit:
        raise too_large(limit)
    return b"".join(chunks)


class ClientGone(Exception):
    """The client disconnected before its body had arrived."""


async def receive_capped(
    receive: Callable[[], Awaitable[dict[str, Any]]], limit: int, declared_length: str | None
) -> bytes:
    """read_capped for an ASGI request: the body's messages until the last one, refused (413)
    as soon as they add up to more than `limit` (the server decides how big each is, so at
    most one message past the limit is held)."""
    check_declared_length(declared_length, limit)
    chunks: list[bytes] = []
    received = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        received += len(chunk)
        if received > limit:
            raise too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def nesting_depth(text: str) -> int:
    """How deep arrays and objects nest, counting brackets outside strings. Linear and done in C
    (regular expressions, map, accumulate), so it is cheap even for a body of brackets."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0)


def _number_too_long(text: str) -> JSONBodyError:
    return JSONBodyError(
        "number_too_long",
        f"A number in the body has {len(text)} characters; at most {MAX_NUMBER_CHARS} are "
        "accepted.",
    )


def _parse_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise _number_too_long(text)
    return int(text)


def _parse_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise _number_too_long(text)
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise JSONBodyError("number_out_of_range", f"The number {text} is out of range.")
    return value


def _refuse_constant(name: str) -> Any:
    raise JSONBodyError("invalid_json", f"{name} is not a JSON number; send a finite number.")


def parse_json(raw: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse a UTF-8 JSON body, or raise JSONBodyError (400) saying what is wrong with it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise JSONBodyError(
            "invalid_json", f"The body is not UTF-8 text (byte {error.start})."
        ) from None
    # Fewer opening brackets than the limit cannot nest too deep: the usual body skips the scan.
    openings = text.count("[") + text.count("{")
    if openings > max_depth and nesting_depth(text) > max_depth:
        raise JSONBodyError(
            "too_deeply_nested",
            f"The body nests arrays and objects more than {max_depth} levels deep.",
        )
    try:
        data = json.loads(
            text,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_refuse_constant,
        )
    except JSONBodyError:
        raise
    except RecursionError:  # the scan above should have caught it; never a 500 regardless
        raise JSONBodyError(
            "too_deeply_nested", "The body nests arrays and objects too deeply."
        ) from None
    except ValueError as error:
        raise JSONBodyError("invalid_json", f"The body is not valid JSON: {error}.") from None
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise JSONBodyError(
                "invalid_json",
                "The body has an unpaired UTF-16 surrogate escape (\\ud800-\\udfff) in a "
                "string; encode text as UTF-8 or escape whole surrogate pairs.",
            ) from None
    return data


class BodyRefused(exceptions.ParseError):
    """A JSONBodyError as DRF raises it (comicgen/errors.py turns it into {"code", "detail"})."""

    def __init__(self, error: JSONBodyError, detail: str) -> None:
        super().__init__(detail=detail, code=error.code)
        self.status_code = error.status


class BoundedJSONParser(JSONParser):
    """DRF's JSON parser with parse_json's bounds and a byte cap of
    DATA_UPLOAD_MAX_MEMORY_SIZE; a refused body answers 400 or 413 in the API's error shape."""

    def parse(
        self,
        stream: IO[Any] | Any,
        media_type: str | None = None,
        parser_context: Mapping[str, Any] | None = None,
    ) -> Any:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        try:
            raw = read_capped(stream, limit)
            return parse_json(raw)
        except JSONBodyError as error:
            detail = error.detail
            if error.status == status.HTTP_413_REQUEST_ENTITY_TOO_LARGE:
                detail += " Split the batch into smaller ones."
            raise BodyRefused(error, detail) from None
