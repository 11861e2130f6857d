"""comicgen/parsers.py: JSON from strangers is capped, bounded and refused with a reason."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from asgiref.sync import async_to_sync

from comicgen.parsers import (
    MAX_JSON_DEPTH,
    BodyRefused,
    BoundedJSONParser,
    ClientGone,
    JSONBodyError,
    nesting_depth,
    parse_json,
    read_capped,
    receive_capped,
)


class TrickleStream(io.RawIOBase):
    """A socket-like body that hands out at most `step` bytes per read and counts them."""

    def __init__(self, data: bytes, step: int = 1000) -> None:
        self.data, self.step, self.position = data, step, 0

    def read(self, size: int = -1) -> bytes:
        size = self.step if size < 0 else min(size, self.step)
        chunk = self.data[self.position : self.position + size]
        self.position += len(chunk)
        return chunk


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ("{}", 1),
        ('{"images": [{"params": {"width": 8}}]}', 4),
        ('"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["', 0),  # brackets inside a string
        ('["\\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["]', 1),  # after an escaped quote
        ("[" * 40 + "]" * 40, 40),
        ("[]" * 10_000, 1),
    ],
)
def test_nesting_depth_counts_brackets_outside_strings(text: str, depth: int) -> None:
    assert nesting_depth(text) == depth


def test_nesting_depth_counts_a_body_of_a_million_brackets() -> None:
    # One pass over the text: a quadratic count would not finish within pytest's timeout.
    assert nesting_depth("[" * 1_000_000 + "]" * 1_000_000) == 1_000_000
    assert nesting_depth("[]" * 1_000_000) == 1


def test_a_body_at_the_depth_limit_parses_and_one_deeper_does_not() -> None:
    assert parse_json(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH) is not None
    with pytest.raises(JSONBodyError) as error:
        parse_json(b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1))
    assert error.value.code == "too_deeply_nested"
    assert error.value.status == 400


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"[" * 50_000, "too_deeply_nested"),  # unbalanced as well
        (b'{"a": ' * 3000 + b"1" + b"}" * 3000, "too_deeply_nested"),
        (b"1" + b"0" * 5000, "number_too_long"),  # over Python's 4,300-digit int limit
        (b"1" + b"0" * 100, "number_too_long"),
        (b"0." + b"1" * 5000, "number_too_long"),
        (b"1e999", "number_out_of_range"),
        (b"-1e999", "number_out_of_range"),
        (b"NaN", "invalid_json"),
        (b"[Infinity]", "invalid_json"),
        (b"\xff", "invalid_json"),
        (b'"\xed\xa0\x80"', "invalid_json"),  # a UTF-8-encoded surrogate is not UTF-8
        (b'"\\udc00"', "invalid_json"),
        (b'["ok", "\\ud83d"]', "invalid_json"),
        (b"{'single': 'quotes'}", "invalid_json"),
        (b"", "invalid_json"),
    ],
)
def test_hostile_bodies_are_refused_with_a_code(raw: bytes, code: str) -> None:
    with pytest.raises(JSONBodyError) as error:
        parse_json(raw)

    assert error.value.code == code
    assert error.value.status == 400
    assert error.value.detail


def test_ordinary_json_parses_as_usual() -> None:
    body = {"title": "Ch. 3 😀", "seed": 4294967295, "guidance": 7.5, "x": [None, True, "\\"]}

    assert parse_json(json.dumps(body).encode()) == body
    assert parse_json(json.dumps(body, ensure_ascii=False).encode()) == body
    assert parse_json(b'"\\ud83d\\ude00"') == "😀"  # an escaped pair is fine


def test_read_capped_refuses_a_declared_length_over_the_cap_without_reading() -> None:
    stream = TrickleStream(b"x" * 10)
    with pytest.raises(JSONBodyError) as error:
        read_capped(stream, 100, declared_length="101")

    assert error.value.status == 413
    assert stream.position == 0


@pytest.mark.parametrize("declared", ["ten", "-1", "1e3"])
def test_read_capped_refuses_a_nonsense_content_length(declared: str) -> None:
    with pytest.raises(JSONBodyError) as error:
        read_capped(TrickleStream(b"{}"), 100, declared_length=declared)

    assert error.value.code == "invalid_content_length"


def test_read_capped_stops_one_byte_past_the_cap_of_an_undeclared_body() -> None:
    stream = TrickleStream(b"x" * 1_000_000)
    with pytest.raises(JSONBodyError) as error:
        read_capped(stream, 5000)

    assert error.value.status == 413
    assert stream.position == 5001


def test_read_capped_gathers_a_body_that_arrives_in_pieces() -> None:
    assert read_capped(TrickleStream(b"y" * 5000, step=7), 5000) == b"y" * 5000


def messages(*pieces: bytes, disconnect: bool = False) -> Any:
    """An ASGI `receive` giving these body pieces (then a disconnect, if asked), counting
    what was taken in `receive.taken`."""
    queue = [{"type": "http.request", "body": piece, "more_body": True} for piece in pieces]
    if disconnect:
        queue.append({"type": "http.disconnect"})
    else:
        queue[-1]["more_body"] = False

    async def receive() -> dict[str, Any]:
        receive.taken += 1  # type: ignore[attr-defined]
        return queue.pop(0)

    receive.taken = 0  # type: ignore[attr-defined]
    return receive


def test_receive_capped_gathers_the_pieces_of_a_body() -> None:
    assert async_to_sync(receive_capped)(messages(b"ab", b"", b"cd"), 4, None) == b"abcd"


def test_receive_capped_refuses_at_the_first_piece_past_the_cap() -> None:
    receive = messages(b"x" * 3000, b"x" * 3000, b"x" * 3000)
    with pytest.raises(JSONBodyError) as error:
        async_to_sync(receive_capped)(receive, 5000, None)

    assert error.value.status == 413
    assert receive.taken == 2


def test_receive_capped_refuses_a_declared_length_over_the_cap_without_receiving() -> None:
    receive = messages(b"{}")
    with pytest.raises(JSONBodyError) as error:
        async_to_sync(receive_capped)(receive, 100, "101")

    assert error.value.status == 413
    assert receive.taken == 0


def test_receive_capped_says_when_the_client_left() -> None:
    with pytest.raises(ClientGone):
        async_to_sync(receive_capped)(messages(b"{", disconnect=True), 100, None)


def test_the_api_parser_caps_what_it_reads(settings: object) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048  # type: ignore[attr-defined]
    parser = BoundedJSONParser()

    assert parser.parse(io.BytesIO(b'{"a": 1}')) == {"a": 1}
    with pytest.raises(BodyRefused) as error:
        parser.parse(TrickleStream(b"[" + b"1," * 5000 + b"1]"))
    assert error.value.status_code == 413
    assert error.value.detail.code == "payload_too_large"
    with pytest.raises(BodyRefused) as error:
        parser.parse(io.BytesIO(b"[" * 100 + b"]" * 100))
    assert error.value.status_code == 400
    assert error.value.detail.code == "too_deeply_nested"
