"""`/ws/batches/<id>/`: the JSON event stream for API clients, through the real ASGI stack
(origin check, session or token auth) on the real channels-redis layer."""

from __future__ import annotations

from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from rest_framework.authtoken.models import Token

from batches import consumers, events
from batches.models import ImageJob, ImageStatus
from comicgen.asgi import application
from tests.factories import UserFactory
from tests.support.asgi import async_test
from tests.web.test_page_consumer import ORIGIN, make_batch, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)


# An async test on asgiref's loop, its consumers ended before the loop closes (see
# tests/support/asgi.py: a refused socket's consumer once hung a test's shutdown).
run_async = async_test


async def connect(path: str, headers: list[tuple[bytes, bytes]] | None = None) -> Any:
    communicator = WebsocketCommunicator(application, path, headers=headers or [ORIGIN])
    connected, code = await communicator.connect(timeout=5)
    return communicator, connected, code


@database_sync_to_async
def setup(staff: bool = False) -> tuple[Any, Any, str]:
    owner, other = UserFactory(), UserFactory(is_staff=staff)
    batch = make_batch(owner, ["one", "two"])
    return batch, other, Token.objects.create(user=owner).key


@run_async
async def test_an_anonymous_client_is_refused_with_4401() -> None:
    batch, _, _ = await setup()

    communicator, connected, code = await connect(f"/ws/batches/{batch.pk}/")

    assert (connected, code) == (False, 4401)


@run_async
async def test_a_wrong_token_is_refused_with_4401() -> None:
    batch, _, _ = await setup()

    _, connected, code = await connect(f"/ws/batches/{batch.pk}/?token=not-a-token")

    assert (connected, code) == (False, 4401)


@run_async
async def test_another_users_batch_is_refused_with_4403() -> None:
    batch, other, _ = await setup()
    other_token = await database_sync_to_async(lambda: Token.objects.create(user=other).key)()

    _, connected, code = await connect(f"/ws/batches/{batch.pk}/?token={other_token}")

    assert (connected, code) == (False, 4403)


@run_async
async def test_a_foreign_origin_is_refused() -> None:
    batch, _, token = await setup()

    _, connected, _ = await connect(
        f"/ws/batches/{batch.pk}/?token={token}", headers=[(b"origin", b"http://evil.example")]
    )

    assert connected is False


@run_async
async def test_staff_may_watch_any_batch_by_session() -> None:
    batch, staff, _ = await setup(staff=True)
    cookie = await database_sync_to_async(session_cookie)(staff)

    communicator, connected, _ = await connect(
        f"/ws/batches/{batch.pk}/", headers=[ORIGIN, (b"cookie", cookie)]
    )

    assert connected
    assert (await communicator.receive_json_from(timeout=5))["type"] == "batch.snapshot"
    await communicator.disconnect()


@run_async
async def test_an_event_sent_while_the_snapshot_is_read_still_reaches_the_socket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker's event sent just after the snapshot was read is newer than it, and must follow
    it. The consumer once read the snapshot before joining the batch's group: such an event
    went to a group the socket was not in yet, and the socket waited a second, then resynced
    (CI saw a busy batch's first 121 events lost that way)."""
    batch, _, token = await setup()
    image_id = await database_sync_to_async(lambda: batch.images.get(index=0).pk)()
    real_load = consumers._load_snapshot

    async def load_then_a_worker_sends(user: Any, batch_id: int) -> Any:
        snapshot = await real_load(user, batch_id)

        @database_sync_to_async
        def a_worker_sends() -> None:
            ImageJob.objects.filter(pk=image_id).update(status=ImageStatus.RUNNING)
            events.push_image_updated(image_id)
            assert events.flush_events()

        await a_worker_sends()
        return snapshot

    monkeypatch.setattr(consumers, "_load_snapshot", load_then_a_worker_sends)
    communicator, connected, _ = await connect(f"/ws/batches/{batch.pk}/?token={token}")
    assert connected

    snapshot = await communicator.receive_json_from(timeout=5)
    # Lost, it would come back only inside a resync's snapshot, a second later.
    event = await communicator.receive_json_from(timeout=5)

    assert snapshot["type"] == "batch.snapshot"
    assert (event["type"], event["seq"]) == ("image.updated", snapshot["seq"] + 1)
    assert event["image"]["status"] == "running"
    await communicator.disconnect()


@run_async
async def test_a_snapshot_comes_first_then_events_in_seq_order() -> None:
    batch, _, token = await setup()
    communicator, connected, _ = await connect(f"/ws/batches/{batch.pk}/?token={token}")
    assert connected

    snapshot = await communicator.receive_json_from(timeout=5)
    assert snapshot["type"] == "batch.snapshot"
    assert [image["prompt"] for image in snapshot["batch"]["images"]] == ["one", "two"]

    @database_sync_to_async
    def change_images() -> list[int]:
        ids = list(
            ImageJob.objects.filter(batch=batch).order_by("index").values_list("pk", flat=True)
        )
        for image_id in ids * 2:
            ImageJob.objects.filter(pk=image_id).update(status=ImageStatus.RUNNING)
            events.push_image_updated(image_id)
        events.push_batch_updated(batch.pk)
        events.flush_events()
        return ids

    ids = await change_images()
    received: list[dict[str, Any]] = []
    while not received or received[-1]["type"] != "batch.updated":
        received.append(await communicator.receive_json_from(timeout=5))

    # Each image changed twice; under a backlog the sender may drop the older of the two (a
    # client would discard it as stale), never the newer, and never reorders.
    images = [event for event in received if event["type"] == "image.updated"]
    assert 2 <= len(images) <= 4
    seqs = [event["seq"] for event in received]
    assert seqs == sorted(seqs)
    assert seqs[0] > snapshot["seq"]
    assert {event["image"]["id"] for event in images} == set(ids)
    assert all(event["image"]["status"] == "running" for event in images)
    assert images[-1]["counts"]["running"] == 2
    assert received[-1]["status"] == "failed"
    await communicator.disconnect()
