"""What is pushed to watchers of a batch, and the one helper that pushes it.

Every event carries the batch's next `seq`, and every socket receives a batch's events in `seq`
order, so a client may drop anything older than the last seq it saw. Two rules make that true:

- An event takes its seq and reads the rows it reports in one transaction that holds the lock
  of the batch's seq row (BatchSeq: taking the seq locks it), and is queued for sending before
  that lock is released.
  Events with a higher seq therefore report state at least as new, and within one process they
  are queued in seq order.
- Several processes send to the same group, and the channel layer may deliver their messages in
  any order (or drop one when a consumer is over capacity). Each message says which seqs it
  covers, the superseded events it left out included; the consumer (`InOrder`) passes events on
  in seq order, holds a later one back until the gap before it fills, and resyncs with a
  snapshot if a gap stays open (a lost message).

Sync code (Celery threads, views) hands events to one background event loop per process,
which sends them in order: channels-redis keeps its connections per event loop, and a fresh
loop per call (what async_to_sync does outside ASGI) fails with "Event loop is closed" on the
second call in a process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from channels.layers import get_channel_layer
from django.db import close_old_connections, connection, transaction

from batches.models import Batch, ImageJob
from monitoring import pushlag

logger = logging.getLogger(__name__)


def group_name(batch_id: int) -> str:
    return f"batch_{batch_id}"


# --- payloads --------------------------------------------------------------------------------


def image_data(image: ImageJob) -> dict[str, Any]:
    return images_data([image])[0]


def images_data(images: list[ImageJob]) -> list[dict[str, Any]]:
    """image_data of many images, with one serializer (its fields are built once, not once per
    image: that was most of an event's CPU)."""
    from batches.api.serializers import ImageJobSerializer

    return [dict(data) for data in ImageJobSerializer(images, many=True).data]


# A snapshot serializes this many images at a time. A 10,000-panel batch's snapshot then holds
# one page of model instances and their dicts besides its JSON text, not all of them at once
# (tens of megabytes in a web process, kept by the allocator after the peak).
SNAPSHOT_PAGE = 500


@dataclass(frozen=True)
class Snapshot:
    """A batch.snapshot event: its seq, and the event as JSON text, ready for the socket."""

    seq: int
    text: str


def snapshot_event(batch_id: int) -> Snapshot | None:
    """Sent first on every (re)connection: the whole batch as it is now, with what
    BatchSerializer gives (its summary, then every image in panel order), built a page of
    images at a time. None when the batch is gone."""
    from batches.api.serializers import BatchSummarySerializer

    batch = Batch.objects.select_related("event_seq").filter(pk=batch_id).first()
    if batch is None:
        return None
    summary = json.dumps(dict(BatchSummarySerializer(batch).data))
    # The summary's object, with "images" as its last key (BatchSerializer's order). The parts
    # are joined once, at the end: 10,000 images are several MB of text, and each string built
    # on the way (the pages joined, then wrapped twice) was another copy held at once.
    parts = [f'{{"type": "batch.snapshot", "seq": {batch.seq}, "batch": ', summary[:-1]]
    parts.append(', "images": [')
    last_index = -1
    while True:
        page = list(
            ImageJob.objects.filter(batch_id=batch_id, index__gt=last_index).order_by("index")[
                :SNAPSHOT_PAGE
            ]
        )
        if not page:
            break
        if last_index >= 0:
            parts.append(", ")
        parts.append(json.dumps(images_data(page))[1:-1])  # the objects, without [ and ]
        last_index = page[-1].index
    parts.append("]}}")
    return Snapshot(batch.seq, "".join(parts))


# --- sending ---------------------------------------------------------------------------------


class _Sender:
    """A daemon thread running one event loop that sends queued events in order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[tuple[str, dict[str, Any]] | None] | None = None
        self._pending = 0
        self._idle = threading.Condition(self._lock)

    def _start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            self._queue = asyncio.Queue()
            ready.set()
            loop.run_until_complete(self._drain())

        threading.Thread(target=run, name="comicgen-events", daemon=True).start()
        ready.wait()

    async def _drain(self) -> None:
        """Send what is queued, group by group: everything that piled up for one batch goes
        out as one channel-layer message (a backlog costs one Redis round trip per batch, not
        one per event), after dropping updates superseded by a newer one for the same image."""
        assert self._queue is not None
        layer = get_channel_layer()
        while True:
            items = [await self._queue.get()]
            while not self._queue.empty():
                items.append(self._queue.get_nowait())
            events = [item for item in items if item is not None]
            by_group: dict[str, list[dict[str, Any]]] = {}
            for group, event in events:
                by_group.setdefault(group, []).append(event)
            for group, group_events in by_group.items():
                covered = [event["seq"] for event in group_events]
                await self._send_group(layer, group, latest_only(group_events), covered)
            with self._idle:
                self._pending -= len(events)
                self._idle.notify_all()
            if None in items:
                return

    @staticmethod
    async def _send_group(
        layer: Any, group: str, events: list[dict[str, Any]], covered: list[int]
    ) -> None:
        message = {"type": "batch.events", "events": events, "seqs": covered}
        for attempt in (1, 2):
            try:
                await layer.group_send(group, message)
                return
            except Exception:  # a lost event costs a client a refresh, never the batch
                # After a Redis restart the first use of a pooled connection fails; the
                # second attempt reconnects.
                if attempt == 2:
                    logger.exception("could not push %s events to %s", len(events), group)
                await asyncio.sleep(0.1)

    def send(self, group: str, event: dict[str, Any]) -> None:
        with self._lock:
            if self._loop is None:
                self._start()
            self._pending += 1
        assert self._loop is not None
        assert self._queue is not None
        self._loop.call_soon_threadsafe(self._queue.put_nowait, (group, event))

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued has been sent (tests, management commands)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout=timeout)


_sender = _Sender()


def latest_only(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop events a newer one in the list supersedes (an image's older update, an older batch
    update): a client would discard them as stale anyway. Newer means a higher seq, not later
    in the list: events are queued after their transactions commit, so two threads of one
    process may queue them out of seq order. What is left goes out in seq order."""

    def key(event: dict[str, Any]) -> tuple[str, Any]:
        if event.get("type") == "image.updated":
            return ("image", event["image"]["id"])
        return (str(event.get("type")), None)

    newest: dict[tuple[str, Any], dict[str, Any]] = {}
    for event in events:
        kept = newest.get(key(event))
        if kept is None or event.get("seq", 0) > kept.get("seq", 0):
            newest[key(event)] = event
    return sorted(newest.values(), key=lambda event: event.get("seq", 0))


class InOrder:
    """Puts one batch's events back in seq order for one socket.

    `after` is the seq the socket's snapshot showed. `accept(message)` takes a channel-layer
    message (its events and every seq it covers) and returns the events that may go out now, in
    order; a message that arrives ahead of an earlier one is held until that one comes.
    `waiting` says a gap is open: if it stays open (a message was lost), the consumer sends a
    fresh snapshot and calls `reset` with that snapshot's seq.
    """

    def __init__(self, after: int) -> None:
        self.last = after
        self._held: dict[int, dict[str, Any] | None] = {}

    @property
    def waiting(self) -> bool:
        return bool(self._held)

    def accept(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        events = [event for event in message.get("events", []) if isinstance(event, dict)]
        covered = message.get("seqs") or [event.get("seq") for event in events]
        for seq in covered:
            if isinstance(seq, int) and seq > self.last:
                self._held.setdefault(seq, None)  # covered: an event left out as superseded
        for event in events:
            seq = event.get("seq")
            if isinstance(seq, int) and seq > self.last:
                self._held[seq] = event
        return self._release()

    def reset(self, after: int) -> list[dict[str, Any]]:
        """A snapshot at `after` was sent: drop what it covers, release what follows it."""
        self.last = max(self.last, after)
        self._held = {seq: event for seq, event in self._held.items() if seq > self.last}
        return self._release()

    def _release(self) -> list[dict[str, Any]]:
        ready = []
        while self.last + 1 in self._held:
            self.last += 1
            event = self._held.pop(self.last)
            if event is not None:
                ready.append(event)
        return ready


# How long a worker's announcer holds a batch update asked for without images (a finalize),
# for the last panels another chunk thread committed just before to go out first. Between two
# worker processes this wait is the only order: a panel whose chunk ran in the other process
# and whose event that process's announcer sends more than this late comes after the batch's
# "completed" (bench/push.py counts such runs; none in its runs so far). The CLI reads the batch
# once more when it ends, and the pages keep applying the events that follow it.
BATCH_UPDATE_GRACE = 0.1


class _Announcer:
    """In a Celery worker, builds the events its chunk threads push, in a thread of its own.

    An event's transaction waits its turn for the batch's seq row behind every other event of
    that batch; done in the chunk's thread, every pass waited for it before its next /run or
    its next result. Here the chunk goes on at once, and what piles up meanwhile goes out
    together: per batch, the images of many passes in one transaction (one seq range, one read,
    one count), then the batch's own update if one was asked for (after its images', so a
    "completed" never overtakes the last panels). Each event still reads the rows it reports
    under the seq row's lock, so seq order stays the order of the state they show.

    Like an event pushed after commit in the chunk's thread, what is queued here is lost if
    the process is killed before it is sent; a client's next snapshot catches up."""

    def __init__(self, batch_update_grace: float = BATCH_UPDATE_GRACE) -> None:
        self.batch_update_grace = batch_update_grace
        self._cond = threading.Condition()
        # batch id -> (image ids in the order announced, when a batch update to follow them was
        # first asked for: None when none was)
        self._pending: dict[int, tuple[dict[int, None], float | None]] = {}
        self._busy = False
        self._stopping = False
        self.running = False

    def start(self) -> None:
        with self._cond:
            if not self.running:
                self._stopping = False
                threading.Thread(target=self._run, name="comicgen-announcer", daemon=True).start()
                self.running = True

    def add(self, batch_id: int, image_ids: list[int], *, batch_too: bool) -> None:
        with self._cond:
            ids, asked = self._pending.get(batch_id, ({}, None))
            ids.update(dict.fromkeys(image_ids))
            if batch_too and asked is None:
                asked = time.monotonic()
            self._pending[batch_id] = (ids, asked)
            self._cond.notify_all()

    def _take(self) -> tuple[dict[int, tuple[dict[int, None], bool]], float | None]:
        """What to announce now, and how long until a held-back batch update is due (None when
        none is held). A batch update asked for alone waits BATCH_UPDATE_GRACE: another chunk
        thread may have committed its batch's last panels (which the finalize that asked for
        the update saw) and not handed them over yet. Arriving meanwhile, they go out in the
        same round, before it; without the wait the "completed" could overtake them, and a
        client that stops at it would never see those panels finish."""
        now = time.monotonic()
        work: dict[int, tuple[dict[int, None], bool]] = {}
        held: dict[int, tuple[dict[int, None], float | None]] = {}
        due: float | None = None
        for batch_id, (ids, asked) in self._pending.items():
            # Only a batch update asked for alone (no panels with it) is held back.
            alone = asked is not None and not ids and not self._stopping
            wait = self.batch_update_grace - (now - asked) if asked is not None and alone else 0.0
            if wait > 0:
                held[batch_id] = (ids, asked)
                due = wait if due is None else min(due, wait)
            else:
                work[batch_id] = (ids, asked is not None)
        self._pending = held
        return work, due

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything announced has been handed to the sender."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and not self._busy, timeout)

    def stop(self, timeout: float = 5.0) -> bool:
        """Announce what is pending, then end the thread (and close its connection)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            return self._cond.wait_for(lambda: not self.running, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._pending) or self._stopping)
                if not self._pending:
                    connection.close()
                    self.running = False
                    self._cond.notify_all()
                    return
                work, due = self._take()
                if not work:
                    # Only held-back batch updates: wait for their time, or for more work.
                    self._cond.wait(timeout=due)
                    continue
                self._busy = True
            try:
                close_old_connections()
                for batch_id, (image_ids, batch_too) in work.items():
                    self._announce(batch_id, list(image_ids), batch_too)
            finally:
                close_old_connections()
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    @staticmethod
    def _announce(batch_id: int, image_ids: list[int], batch_too: bool) -> None:
        try:
            if image_ids:
                _send_images_updated(batch_id, image_ids)
            if batch_too:
                _send_batch_updated(batch_id)
        except Exception:  # a lost event costs a client a refresh, never the batch
            logger.exception("batch %s: could not announce %s images", batch_id, len(image_ids))


_announcer = _Announcer()


def announce_in_background() -> None:
    """Build pushed events in the announcer thread from now on (a Celery worker's start)."""
    _announcer.start()


def stop_announcing(timeout: float = 5.0) -> bool:
    """Announce what is pending and stop the thread (a worker's shutdown)."""
    return _announcer.stop(timeout)


def send_event(batch_id: int, event: dict[str, Any]) -> None:
    """Hand an event to the sender thread (call after the change it reports is committed)."""
    _sender.send(group_name(batch_id), event)


def flush_events(timeout: float = 5.0) -> bool:
    return _sender.flush(timeout)


# --- the events ------------------------------------------------------------------------------


# Both pushes build their event once the caller's transaction commits, in a transaction of their
# own: take the seq (locking the batch's seq row), read what the event reports, commit, then
# queue it. The lock is held for those few statements only, not for the rest of the caller's
# transaction.


def push_image_updated(image_id: int) -> None:
    """An image changed: send its current row and the batch's counts, after commit."""
    transaction.on_commit(lambda: _send_images_updated(None, [image_id]))


def push_images_updated(batch_id: int, image_ids: list[int]) -> None:
    """Images of one batch changed (a chunk's pass): one event each, built together after
    commit with one seq range, one read of the rows and one count (in a worker, by the
    announcer thread)."""
    if image_ids:
        ids = list(dict.fromkeys(image_ids))
        if _announcer.running:
            transaction.on_commit(lambda: _announcer.add(batch_id, ids, batch_too=False))
        else:
            transaction.on_commit(lambda: _send_images_updated(batch_id, ids))


def push_batch_updated(batch_id: int) -> None:
    """The batch changed status (or its cost): send status, counts and cost, after commit (in a
    worker, by the announcer thread, after the image events announced before it)."""
    if _announcer.running:
        transaction.on_commit(lambda: _announcer.add(batch_id, [], batch_too=True))
    else:
        transaction.on_commit(lambda: _send_batch_updated(batch_id))


def _send_images_updated(batch_id: int | None, image_ids: list[int]) -> None:
    """Take one seq per image under the seq row's lock, read the rows and the counts once and
    build the events, stamp each image with its seq, commit, then queue the events in seq
    order. The stamp is the transaction's last statement: it locks the image rows, which the
    chunks ending attempts also lock, for as short a time as possible (built first, the
    events held them while their images were serialized). Queued after the commit, an event
    never carries a seq that a rolled-back transaction took and another will take again."""
    if batch_id is None:
        batch_id = (
            ImageJob.objects.filter(pk__in=image_ids).values_list("batch_id", flat=True).first()
        )
        if batch_id is None:  # deleted meanwhile
            return
    with transaction.atomic():
        last = Batch.objects.take_seqs(batch_id, len(image_ids))
        if last is None:  # the batch is gone: no seq may be taken and left unsent
            transaction.set_rollback(True)
            return
        seqs = {image_id: last - len(image_ids) + 1 + n for n, image_id in enumerate(image_ids)}
        images = ImageJob.objects.filter(pk__in=image_ids, batch_id=batch_id).in_bulk()
        if len(images) != len(image_ids):
            # Images leave only with their batch; ids of another batch are a caller's bug. A
            # seq taken and never sent would leave every socket waiting on a gap: take none.
            logger.error("batch %s: no event for images %s", batch_id, image_ids)
            transaction.set_rollback(True)
            return
        for image_id, seq in seqs.items():
            images[image_id].seq = seq
        counts = ImageJob.objects.filter(batch_id=batch_id).status_counts()
        data = images_data([images[image_id] for image_id in seqs])
        ImageJob.objects.stamp_seqs(seqs)
    for seq, payload in zip(seqs.values(), data, strict=True):
        event = {"type": "image.updated", "image": payload}
        send_event(batch_id, {**event, "counts": counts, "seq": seq, "batch_id": batch_id})
    # Push lag for the monitor: from each panel's finish to its event being queued for the
    # sender thread (which sends at once).
    pushlag.observe_since_each(
        [image.finished_at for image in images.values() if image.is_terminal]
    )


def _send_locked(batch_id: int, build: Callable[[int], dict[str, Any] | None]) -> None:
    """Take the batch's next seq (locking its seq row), build the event from what the database
    says under that lock, commit, queue it. When there is nothing to report (the row is gone),
    roll back: a seq taken and never sent would leave every socket waiting on a gap."""
    with transaction.atomic():
        seq = Batch.objects.take_seqs(batch_id)
        event = build(seq) if seq is not None else None
        if event is None:
            transaction.set_rollback(True)
            return
    # Queued once committed: a rolled-back seq is taken again by the next event.
    send_event(batch_id, {**event, "seq": seq, "batch_id": batch_id})


def _send_batch_updated(batch_id: int) -> None:
    def build(seq: int) -> dict[str, Any]:
        batch = Batch.objects.get(pk=batch_id)  # take_seqs found the batch; its seq row is locked
        return {
            "type": "batch.updated",
            "status": batch.status,
            "counts": batch.status_counts(),
            "actual_cost": str(batch.actual_cost),
            "finished_at": batch.finished_at.isoformat() if batch.finished_at else None,
        }

    _send_locked(batch_id, build)
