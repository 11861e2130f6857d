"""The consumers' own send order, driven by hand on one event loop with a `send` that yields as a
real socket's does: the tasks that send beside the event handler (the page's coalesced header,
a resync's snapshot) never put a message out of seq order.

No channel layer and no database: the consumers' renderers are replaced by ones that print the
seq they were given, so what is checked is only the order the consumer chose."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from batches import consumers, events
from batches.consumers import BatchConsumer, BatchPageConsumer, OrderedEvents

SEQ = re.compile(r'data-seq="(\d+)"')


def image_event(seq: int) -> dict[str, Any]:
    return {"type": "image.updated", "seq": seq, "image": {"id": seq, "seq": seq}}


def bundle(*seqs: int) -> dict[str, Any]:
    """A channel-layer message as events.py sends it: several events at once."""
    return {"events": [image_event(seq) for seq in seqs], "seqs": list(seqs)}


class SlowSocket:
    """What a socket's send does to the event loop: it yields, so other tasks run meanwhile."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def base_send(self, message: dict[str, Any]) -> None:
        self.sent.append(message["text"])
        await asyncio.sleep(0.01)


def page_consumer(
    socket: SlowSocket, monkeypatch: pytest.MonkeyPatch, snapshot_seq: int = 0
) -> BatchPageConsumer:
    async def render_header(batch_id: int, seq: int, options: dict[str, str]) -> str:
        return f'<header data-seq="{seq}">'

    async def render_live(batch_id: int, options: dict[str, str]) -> tuple[str, int]:
        return f'<main data-seq="{snapshot_seq}">', snapshot_seq

    monkeypatch.setattr(consumers, "_render_header", render_header)
    monkeypatch.setattr(consumers, "_render_live", render_live)
    monkeypatch.setattr(
        consumers.fragments,
        "render_tile",
        lambda image, batch_id: f'<article data-seq="{image["seq"]}">',
    )
    consumer = BatchPageConsumer()
    consumer.base_send = socket.base_send
    consumer.batch_id, consumer.options = 1, {}
    consumer._header_task, consumer._sending, consumer._sent_seq = None, asyncio.Lock(), 0
    consumer.ordered = OrderedEvents(consumer.forward, consumer.send_snapshot)
    return consumer


def seqs_of(fragments: list[str]) -> list[int]:
    return [max(map(int, SEQ.findall(fragment))) for fragment in fragments]


def test_a_header_due_between_two_tiles_of_one_bundle_claims_only_what_was_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bundle's seqs are all released at once. A header whose wait ended while the bundle's
    second tile was going out takes the lock before the third: it stands for the second tile,
    not for the bundle's last (it once claimed 4 and tile 3 followed it)."""
    monkeypatch.setattr(consumers, "HEADER_COALESCE_SECONDS", 0)
    socket = SlowSocket()
    consumer = page_consumer(socket, monkeypatch)

    async def scenario() -> None:
        await consumer.ordered.accept(bundle(1, 2, 3, 4))
        assert consumer._header_task is not None
        await consumer._header_task

    asyncio.run(scenario())

    kinds = [fragment.split()[0] for fragment in socket.sent]
    assert kinds.index("<header") < kinds.index("<article", 3), socket.sent  # between the tiles
    sent = seqs_of(socket.sent)
    assert sent == sorted(sent), socket.sent


def test_a_tile_released_before_a_resync_snapshot_is_not_sent_after_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The gap timer's resync and a bundle's tiles race for the lock: tiles the snapshot already
    shows stay unsent rather than going out behind it."""
    socket = SlowSocket()
    consumer = page_consumer(socket, monkeypatch, snapshot_seq=6)

    async def scenario() -> None:
        # The snapshot holds the lock (rendering) while the bundle's tiles are handed on.
        resync = asyncio.create_task(consumer.send_snapshot())
        await asyncio.sleep(0)
        await consumer.ordered.accept(bundle(1, 2, 3))
        await resync

    asyncio.run(scenario())

    assert seqs_of(socket.sent) == [6], socket.sent


def test_the_json_socket_drops_an_event_its_resync_snapshot_already_covers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    socket = SlowSocket()
    snapshot = events.Snapshot(text=json.dumps({"type": "batch.snapshot", "seq": 6}), seq=6)

    async def load_snapshot(user: Any, batch_id: int) -> events.Snapshot:
        return snapshot

    monkeypatch.setattr(consumers, "_load_snapshot", load_snapshot)
    consumer = BatchConsumer()
    consumer.base_send = socket.base_send
    consumer.scope, consumer.batch_id = {"user": None}, 1
    consumer._sending, consumer._sent_seq = asyncio.Lock(), 0
    consumer.ordered = OrderedEvents(consumer._send_event, consumer.send_snapshot)

    async def scenario() -> None:
        resync = asyncio.create_task(consumer.send_snapshot())
        await asyncio.sleep(0)
        await consumer.ordered.accept(bundle(1, 2, 3))
        await consumer.ordered.accept(bundle(7))
        await resync

    asyncio.run(scenario())

    assert [json.loads(text)["seq"] for text in socket.sent] == [6, 7]
