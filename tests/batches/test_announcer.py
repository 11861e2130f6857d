"""The announcer thread a worker builds its events in (batches.events._Announcer): the chunk
hands it image ids and goes on; it sends every image announced, a batch update after the images
announced before it, and seqs in the order of the state they report. Real PostgreSQL and the
real channels-redis layer."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels_redis.core import RedisChannelLayer
from django.conf import settings
from django.db import connection

from batches import events
from batches.models import ImageStatus
from tests.factories import make_batch, make_image


def sent_while(batch_id: int, announce: Callable[[], None]) -> list[dict[str, Any]]:
    """The events a watcher of the batch receives while `announce` runs, up to the first
    batch.updated, in seq order. (One event loop throughout: channels-redis receives on the
    loop the channel was made on.)"""

    async def watch() -> list[dict[str, Any]]:
        # A layer of the test's own: the process's shared one keeps what it made on this loop
        # (its receive lock) for the next test's loop.
        layer = RedisChannelLayer(**settings.CHANNEL_LAYERS["default"]["CONFIG"])
        try:
            channel = await layer.new_channel()
            await layer.group_add(events.group_name(batch_id), channel)
            await sync_to_async(announce, thread_sensitive=False)()
            got: list[dict[str, Any]] = []
            while not any(event["type"] == "batch.updated" for event in got):
                got += (await layer.receive(channel))["events"]
            return sorted(got, key=lambda event: event["seq"])
        finally:
            await layer.close_pools()

    return async_to_sync(watch)()


def announced(announcer: events._Announcer, batch_id: int, hand_over: Callable[[], None]) -> Any:
    """What a watcher receives (sent_while) while `hand_over` gives the started announcer its
    work, in a thread of its own with its own connection; the announcer is stopped after."""

    def then_flush() -> None:
        try:
            hand_over()
            assert announcer.flush()
            assert events.flush_events()
        finally:
            connection.close()

    try:
        return sent_while(batch_id, then_flush)
    finally:
        assert announcer.stop()


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(30)
def test_the_announcer_sends_each_image_and_the_batch_update_after_its_images() -> None:
    # Finished: the session's sweeper resumes a running batch that no chunk task runs.
    batch = make_batch(completed=True)
    first, second, third = (make_image(batch=batch, index=n) for n in range(3))
    announcer = events._Announcer()
    announcer.start()

    def two_passes() -> None:
        announcer.add(batch.pk, [first.pk], batch_too=False)
        second.status = ImageStatus.COMPLETED
        second.save(update_fields=["status"])
        announcer.add(batch.pk, [second.pk, first.pk], batch_too=True)

    sent = announced(announcer, batch.pk, two_passes)

    images = [event["image"]["id"] for event in sent if event["type"] == "image.updated"]
    assert set(images) == {first.pk, second.pk}  # once or twice each: both were announced
    assert sent[-1]["type"] == "batch.updated"  # after the images announced before it
    latest_second = [event for event in sent if event.get("image", {}).get("id") == second.pk][-1]
    assert latest_second["image"]["status"] == "completed"
    assert latest_second["counts"]["completed"] == 1
    assert len({event["seq"] for event in sent}) == len(sent)  # one seq each
    assert third.pk not in images


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(30)
def test_a_finalize_s_batch_update_waits_for_panels_handed_over_just_after_it() -> None:
    """Chunk A's finalize sees chunk B's last panel committed and asks for the batch update
    before B's thread has handed that panel over: the panel's event must still go first, or a
    client stopping at the batch's terminal event never sees that panel finish."""
    batch = make_batch(completed=True)
    last_panel = make_image(batch=batch, index=0, completed=True)
    # A grace far longer than the moment between the two, so that the test does not hang on
    # this machine's timing; without any, the announcer sends the update alone at once.
    announcer = events._Announcer(batch_update_grace=3.0)
    announcer.start()

    def finalize_then_panel() -> None:
        announcer.add(batch.pk, [], batch_too=True)  # A's finalize
        time.sleep(0.3)  # the announcer thread is awake and has taken the update by now
        announcer.add(batch.pk, [last_panel.pk], batch_too=False)  # B's hand-over

    sent = announced(announcer, batch.pk, finalize_then_panel)

    assert [event["type"] for event in sent] == ["image.updated", "batch.updated"]
    assert sent[0]["image"]["id"] == last_panel.pk
