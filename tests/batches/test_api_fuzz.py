"""Property-based fuzzing of the REST API from its own OpenAPI schema (schemathesis): whatever
the body, query or path, the API answers with a 4xx it chose, never a 5xx.

Runs the Django app in-process (WSGI) inside a pytest-django database test, authenticated with a
real token. Half the cases aim their `{batch_id}` at real batches of the user (queued, finished,
partial), so detail, cancel, retry and download see more than 404s. Submits enqueue nothing:
the test's transaction never commits, so no on_commit hook runs.

COMICGEN_FUZZ_EXAMPLES sets the examples per operation (default 250: about 2,000 cases over the
8 operations in some 40 s); raise it locally for a longer hunt.

The schema only describes well-typed requests, so two hypothesis tests add what an attacker
sends instead: hostile bodies (deep nesting, numbers of thousands of digits, huge strings and
arrays, random bytes, wrong types in a submit body) on every POST endpoint, and the RunPod
webhook (not in the schema: it is not a DRF view) with any path, token and body, forged or
with a valid token. COMICGEN_FUZZ_HOSTILE_EXAMPLES sets their examples (default 120 each).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework.authtoken.models import Token

from batches import webhooks
from batches.models import Batch, BatchStatus, ImageJob, ImageStatus
from tests.factories import UserFactory

EXAMPLES = int(os.environ.get("COMICGEN_FUZZ_EXAMPLES", "250"))
HOSTILE_EXAMPLES = int(os.environ.get("COMICGEN_FUZZ_HOSTILE_EXAMPLES", "120"))


@pytest.fixture(autouse=True)
def _unthrottled(settings: Any) -> None:
    """Thousands of requests from one user: the fuzz explores the endpoints, not the limits."""
    settings.COMICGEN_THROTTLE_SUBMIT = "1000000/min"
    settings.COMICGEN_THROTTLE_ESTIMATE = "1000000/min"


@pytest.fixture
def _keep_the_test_connection(db: Any) -> Iterator[None]:
    """As Django's own test client does: a request's end must not close the connection that
    holds the test's transaction (close_old_connections closes one inside an atomic block)."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def fuzz_user(db: Any) -> dict[str, Any]:
    """A user with a token and three batches in different states to aim path ids at."""
    user = UserFactory()
    token = Token.objects.create(user=user)
    batch_ids = []
    for status, image_status in (
        (BatchStatus.QUEUED, ImageStatus.PENDING),
        (BatchStatus.COMPLETED, ImageStatus.COMPLETED),
        (BatchStatus.PARTIAL, ImageStatus.FAILED),
    ):
        batch = Batch.objects.create(user=user, title=f"fuzz {status}", status=status)
        params = {"model": "sdxl", "width": 128, "height": 128, "steps": 4, "guidance": 7.5}
        ImageJob.objects.create(
            batch=batch, index=0, prompt="a panel", seed=1, params=params, status=image_status,
            cost=Decimal("0"),
        )  # fmt: skip
        batch_ids.append(batch.pk)
    return {"headers": {"Authorization": f"Token {token.key}"}, "batch_ids": batch_ids}


# Loaded at collection (pytest-django has set Django up by then; the schema view needs no
# database). schemathesis' lazy `from_fixture` loader does not run on pytest 9.
schema = schemathesis.openapi.from_wsgi("/api/v1/schema/", get_wsgi_application()).exclude(
    # The schema documents itself; health answers 503 by design when Celery or RunPod is down.
    path_regex=r"^/api/v1/(schema|docs|health)/",
)


@schema.parametrize()
@pytest.mark.usefixtures("_keep_the_test_connection")
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)
def test_no_request_makes_the_api_answer_a_server_error(
    case: Any, fuzz_user: dict[str, Any]
) -> None:
    if case.path_parameters and "batch_id" in case.path_parameters:
        ids = fuzz_user["batch_ids"]
        chosen = hash(repr(case.body)) % (2 * len(ids))
        if chosen < len(ids):
            case.path_parameters["batch_id"] = ids[chosen]
    response = case.call(headers=fuzz_user["headers"])
    assert response.status_code < 500, (
        f"HTTP {response.status_code} for:\n{case.as_curl_command()}\n{response.text[:2000]}"
    )


# Hostile bodies, as raw bytes: what no schema-following client sends.

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=25,
)
hostile_leaves = st.one_of(
    json_values,
    st.integers(min_value=-(10**60), max_value=10**60),
    st.integers(1, 100_000).map(lambda n: "x" * n),
    st.integers(1, 100_000).map(lambda n: [0] * n),
    st.integers(1, 20_000).map(lambda n: [{"prompt": "p"}] * n),
)
SUBMIT_KEYS = ["title", "priority", "style", "negative_prompt", "params", "images"]


def _submit_with(key: str, value: Any, where: str) -> bytes:
    """A valid submit body with one value replaced by a hostile one."""
    body: dict[str, Any] = {"title": "t", "images": [{"prompt": "p", "seed": 1}]}
    if where == "batch":
        body[key] = value
    elif where == "image":
        body["images"][0][key] = value
    else:
        body["params"] = {key: value}
    return json.dumps(body, allow_nan=True).encode()


hostile_bodies = st.one_of(
    st.integers(1, 200_000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 50_000).map(lambda n: b'{"a": ' * n + b"1" + b"}" * n),
    st.integers(1, 50_000).map(lambda n: b"[" * n),  # unbalanced
    st.integers(1, 20_000).map(
        lambda n: b'{"images": [{"prompt": "p", "seed": ' + b"9" * n + b"}]}"
    ),
    st.integers(1, 20_000).map(lambda n: b"[0." + b"1" * n + b"]"),
    st.sampled_from([b"1e999", b"-1e999", b"NaN", b"[Infinity]", b'"\\ud800"', b"\xff\xfe"]),
    st.integers(1, 3_000_000).map(lambda n: b'{"title": "' + b"x" * n + b'"}'),
    st.integers(1, 500_000).map(lambda n: b'{"images": [' + b"{}," * n + b"{}]}"),
    st.binary(max_size=300),
    json_values.map(lambda value: json.dumps(value, allow_nan=True).encode()),
    st.builds(
        _submit_with,
        st.sampled_from(SUBMIT_KEYS + ["prompt", "seed", "width", "steps", "guidance", "model"]),
        hostile_leaves,
        st.sampled_from(["batch", "image", "params"]),
    ),
)

HOSTILE_SETTINGS = settings(
    max_examples=HOSTILE_EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)


def assert_a_chosen_4xx_or_success(response: Any, what: str) -> None:
    assert response.status_code < 500, f"HTTP {response.status_code} for {what}"
    if response.status_code >= 400:
        data = json.loads(response.content)
        assert {"code", "detail"} <= set(data), f"{what}: {data}"


@HOSTILE_SETTINGS
@given(
    raw=hostile_bodies,
    endpoint=st.sampled_from(["", "estimate/", "{id}/cancel/", "{id}/retry/"]),
    content_type=st.sampled_from(
        ["application/json", "application/json; charset=latin-1", "text/plain"]
    ),
)
def test_no_hostile_body_makes_a_post_endpoint_answer_a_server_error(
    fuzz_user: dict[str, Any], raw: bytes, endpoint: str, content_type: str
) -> None:
    client = Client(headers=fuzz_user["headers"])
    path = "/api/v1/batches/" + endpoint.format(id=fuzz_user["batch_ids"][0])

    response = client.generic("POST", path, raw, content_type=content_type)

    assert_a_chosen_4xx_or_success(response, f"POST {path} {raw[:200]!r}")


# Any one path segment (a "/", even percent-encoded, would make another route's path).
path_numbers = st.one_of(
    st.integers(0, 10**6).map(str),
    st.integers(0, 10**40).map(str),
    st.text(st.characters(exclude_characters="/"), min_size=1, max_size=20),
)


@HOSTILE_SETTINGS
@given(
    numbers=st.tuples(path_numbers, path_numbers, path_numbers, path_numbers),
    token=st.one_of(st.none(), st.text(st.characters(exclude_characters="/"), min_size=1)),
    raw=st.one_of(
        hostile_bodies,
        st.fixed_dictionaries(
            {"id": json_values, "status": st.sampled_from(["COMPLETED", "FAILED", "x"])},
            optional={"output": json_values, "executionTime": json_values},
        ).map(lambda body: json.dumps(body, allow_nan=True).encode()),
    ),
)
def test_no_webhook_makes_the_api_answer_a_server_error(
    db: Any, numbers: tuple[str, str, str, str], token: str | None, raw: bytes
) -> None:
    """token None: the valid one for the path (when the path is numeric), so the body is read."""
    from urllib.parse import quote

    if token is None:
        token = (
            webhooks.webhook_token(*(int(number) for number in numbers))
            if all(number.isascii() and number.isdigit() for number in numbers)
            else "0" * 32
        )
    # Percent-encoded UTF-8; a lone surrogate becomes bytes that are not UTF-8, as an attacker
    # can send them.
    segments = "/".join(
        quote(part.encode("utf-8", "surrogatepass"), safe="") for part in (*numbers, token)
    )
    path = f"/api/v1/runpod/webhook/{segments}/"

    response = Client().generic("POST", path, raw, content_type="application/json")

    assert_a_chosen_4xx_or_success(response, f"POST {path} {raw[:200]!r}")
