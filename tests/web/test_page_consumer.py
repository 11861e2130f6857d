"""`/ws/batches/<id>/page/`: the htmx pages' consumer, through the real ASGI stack (origin check,
session auth) on the real channels-redis layer.

The batches here are written straight to the database in a finished state and changed by hand:
these tests commit, and the session's Celery worker and sweeper (when integration tests have
started them) must find nothing to run in them."""

from __future__ import annotations

import re
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.db import transaction
from django.test import Client

from batches import events
from batches.models import Batch, BatchStatus, ImageJob, ImageStatus
from comicgen.asgi import application
from tests.factories import UserFactory
from tests.support.asgi import run_to_the_end

pytestmark = pytest.mark.django_db(transaction=True)

ORIGIN = (b"origin", b"http://testserver")
CSRF_SECRET = "a" * 32


def make_batch(user: Any, prompts: list[str]) -> Batch:
    """A finished (failed) batch, created in one transaction so no worker ever picks it up."""
    params = {"model": "sdxl", "width": 128, "height": 128, "steps": 4, "guidance": 7.5}
    with transaction.atomic():
        batch = Batch.objects.create(user=user, title="Chapter", status=BatchStatus.FAILED)
        ImageJob.objects.bulk_create(
            ImageJob(
                batch=batch,
                index=index,
                prompt=prompt,
                seed=index,
                params=params,
                status=ImageStatus.FAILED,
                attempts=3,
                error="boom",
            )
            for index, prompt in enumerate(prompts)
        )
    return batch


def session_cookie(user: Any) -> bytes:
    client = Client()
    client.force_login(user)
    session = client.cookies[settings.SESSION_COOKIE_NAME].value
    cookies = f"{settings.SESSION_COOKIE_NAME}={session}; {settings.CSRF_COOKIE_NAME}={CSRF_SECRET}"
    return cookies.encode()


def communicator(batch_id: int, cookie: bytes | None = None, query: str = "") -> Any:
    headers = [ORIGIN] + ([(b"cookie", cookie)] if cookie else [])
    path = f"/ws/batches/{batch_id}/page/" + (f"?{query}" if query else "")
    return WebsocketCommunicator(application, path, headers=headers)


def run(coroutine: Any) -> Any:
    """Drive a scenario on asgiref's event loop (no pytest-asyncio in this project), ending the
    consumers it leaves before the loop closes (tests/support/asgi.py says why)."""
    return run_to_the_end(coroutine)


def test_an_anonymous_visitor_is_refused_with_4401(user: Any) -> None:
    batch = make_batch(user, ["a"])

    async def scenario() -> Any:
        socket = communicator(batch.pk)
        connected, code = await socket.connect()
        return connected, code

    assert run(scenario()) == (False, 4401)


def test_another_users_batch_is_refused_with_4403(user: Any) -> None:
    batch = make_batch(UserFactory(), ["a"])
    cookie = session_cookie(user)

    async def scenario() -> Any:
        socket = communicator(batch.pk, cookie)
        return await socket.connect()

    assert run(scenario()) == (False, 4403)


def test_the_owner_gets_a_snapshot_then_a_tile_per_image_event(user: Any) -> None:
    batch = make_batch(user, ["first", "second"])
    image = batch.images.get(index=1)
    cookie = session_cookie(user)

    async def scenario() -> tuple[str, str, str]:
        socket = communicator(batch.pk, cookie)
        connected, _ = await socket.connect()
        assert connected
        snapshot = await socket.receive_from(timeout=5)
        await database_sync_to_async(_complete)(image.pk)
        await sync_to_async(events.flush_events)()
        tile = await socket.receive_from(timeout=5)
        header = await socket.receive_from(timeout=5)  # coalesced right after the tile
        await socket.disconnect()
        return snapshot, tile, header

    snapshot, tile, header = run(scenario())

    assert snapshot.count('hx-swap-oob="true"') == 3  # header + both tiles
    assert 'id="batch-progress"' in snapshot
    image.refresh_from_db()
    assert tile.lstrip().startswith(f'<article id="tile-{image.pk}" class="tile tile--completed"')
    assert f'data-seq="{image.seq}"' in tile
    assert 'hx-swap-oob="true"' in tile
    assert re.search(rf'<img src="/panels/{image.pk}\.png\?sig=[^"]+" loading="lazy"', tile)
    assert 'id="batch-progress"' in header
    assert '<span class="dot dot--completed"></span>1 completed' in header
    # The header's cancel form carries a CSRF token derived from the browser's cookie.
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', header)
    assert token is not None
    assert len(token.group(1)) == 64


def test_the_tile_matches_the_pages_own_rendering(user: Any) -> None:
    batch = make_batch(user, ["only"])
    image = batch.images.get()
    cookie = session_cookie(user)

    async def scenario() -> str:
        socket = communicator(batch.pk, cookie)
        await socket.connect()
        await socket.receive_from(timeout=5)
        await database_sync_to_async(_complete)(image.pk)
        await sync_to_async(events.flush_events)()
        tile = await socket.receive_from(timeout=5)
        await socket.disconnect()
        return tile

    pushed = run(scenario())

    client = Client()
    client.force_login(user)
    page = client.get(f"/batches/{batch.pk}/").content.decode()
    assert squash(pushed.replace('hx-swap-oob="true"', "")) in squash(page)


def test_a_batch_update_sends_the_header_with_its_new_status(user: Any) -> None:
    batch = make_batch(user, ["a"])
    Batch.objects.filter(pk=batch.pk).update(status=BatchStatus.CANCELLED)
    cookie = session_cookie(user)

    async def scenario() -> str:
        socket = communicator(batch.pk, cookie, query="next=/admin/batches/batch/1/change/")
        await socket.connect()
        await socket.receive_from(timeout=5)
        await database_sync_to_async(_finish)(batch.pk)
        await sync_to_async(events.flush_events)()
        message = await socket.receive_from(timeout=5)
        await socket.disconnect()
        return message

    header = run(scenario())

    assert 'data-state="failed"' in header  # it was cancelled before
    assert "badge badge--failed badge--large" in header
    assert "Retry 1 failed panel" in header
    assert 'name="next" value="/admin/batches/batch/1/change/"' in header
    assert "every 3s" not in header  # finished: the page stops polling


def test_reconnecting_sends_a_fresh_snapshot(user: Any) -> None:
    batch = make_batch(user, ["a", "b"])
    first_image = batch.images.get(index=0)
    cookie = session_cookie(user)

    async def scenario() -> str:
        first = communicator(batch.pk, cookie)
        await first.connect()
        await first.receive_from(timeout=5)
        await first.disconnect()
        await database_sync_to_async(_complete)(first_image.pk)
        await sync_to_async(events.flush_events)()
        second = communicator(batch.pk, cookie)
        await second.connect()
        snapshot = await second.receive_from(timeout=5)
        await second.disconnect()
        return snapshot

    snapshot = run(scenario())

    assert "tile tile--completed" in snapshot
    assert '<span class="dot dot--completed"></span>1 completed' in snapshot


def _complete(image_id: int) -> None:
    ImageJob.objects.filter(pk=image_id).update(
        status=ImageStatus.COMPLETED, attempts=1, image="panels/done.png"
    )
    events.push_image_updated(image_id)


def _finish(batch_id: int) -> None:
    Batch.objects.filter(pk=batch_id).update(status=BatchStatus.FAILED)
    events.push_batch_updated(batch_id)


def squash(html: str) -> str:
    """Whitespace-insensitive HTML, to compare a fragment with the page it belongs to."""
    return re.sub(r"\s+", " ", html).replace(" >", ">").strip()
