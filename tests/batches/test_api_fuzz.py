"""Property-based fuzzing of the REST API from its own OpenAPI schema (schemathesis): whatever
the body, query or path, the API answers with a 4xx it chose, never a 5xx.

Runs the Django app in-process (WSGI) inside a pytest-django database test, authenticated with a
real token. Half the cases aim their `{batch_id}` at real batches of the user (queued, finished,
partial), so detail, cancel, retry and download see more than 404s. Submits enqueue nothing:
the test's transaction never commits, so no on_commit hook runs.

COMICGEN_FUZZ_EXAMPLES sets the examples per operation (default 250: about 2,000 cases over the
8 operations in some 40 s); raise it locally for a longer hunt.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from rest_framework.authtoken.models import Token

from batches.models import Batch, BatchStatus, ImageJob, ImageStatus
from tests.factories import UserFactory

EXAMPLES = int(os.environ.get("COMICGEN_FUZZ_EXAMPLES", "250"))


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
