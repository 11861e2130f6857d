"""The WebSocket takes the API token in an `Authorization` header (Token or Bearer) as well as
`?token=`, and refuses anything malformed as anonymous (4401), never with a server error."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async

from tests.batches.test_batch_consumer import connect, run_async, setup
from tests.web.test_page_consumer import ORIGIN, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize("scheme", [b"Token", b"Bearer"])
@run_async
async def test_a_token_in_the_authorization_header_opens_the_socket(scheme: bytes) -> None:
    batch, _, token = await setup()

    communicator, connected, _ = await connect(
        f"/ws/batches/{batch.pk}/",
        headers=[ORIGIN, (b"authorization", scheme + b" " + token.encode())],
    )

    assert connected
    snapshot = await communicator.receive_json_from(timeout=5)
    assert snapshot["type"] == "batch.snapshot"
    assert snapshot["batch"]["id"] == batch.pk
    await communicator.disconnect()


@pytest.mark.parametrize(
    "header",
    [
        b"Bearer 0000000000000000000000000000000000000000",
        b"Basic dXNlcjpwYXNz",
        b"Bearer",
        b"Bearer a\x00b",
        b"Bearer \xff\xfe",
        b"Token " + b"a" * 10_000,
    ],
)
@run_async
async def test_a_wrong_or_malformed_header_is_refused_as_anonymous(header: bytes) -> None:
    batch, _, _ = await setup()

    _, connected, code = await connect(
        f"/ws/batches/{batch.pk}/", headers=[ORIGIN, (b"authorization", header)]
    )

    assert (connected, code) == (False, 4401)


@run_async
async def test_a_wrong_header_token_does_not_fall_back_to_the_session() -> None:
    batch, staff, _ = await setup(staff=True)
    cookie = await database_sync_to_async(session_cookie)(staff)

    _, connected, code = await connect(
        f"/ws/batches/{batch.pk}/",
        headers=[ORIGIN, (b"cookie", cookie), (b"authorization", b"Bearer " + b"0" * 40)],
    )

    assert (connected, code) == (False, 4401)


@pytest.mark.parametrize("query", ["token=%00", "token=" + "a" * 5000, "token=%ff%fe", "token="])
@run_async
async def test_a_malformed_query_token_is_refused_as_anonymous(query: str) -> None:
    batch, _, _ = await setup()

    _, connected, code = await connect(f"/ws/batches/{batch.pk}/?{query}")

    assert (connected, code) == (False, 4401)


@run_async
async def test_another_users_token_in_the_header_is_refused_with_4403() -> None:
    batch, other, _ = await setup()
    from rest_framework.authtoken.models import Token

    other_key = await database_sync_to_async(lambda: Token.objects.create(user=other).key)()

    _, connected, code = await connect(
        f"/ws/batches/{batch.pk}/",
        headers=[ORIGIN, (b"authorization", b"Bearer " + other_key.encode())],
    )

    assert (connected, code) == (False, 4403)
