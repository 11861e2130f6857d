"""WebSocket consumers: check the user, join the batch's group, send a snapshot, forward."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer, AsyncWebsocketConsumer
from django.conf import settings
from django.http import HttpRequest
from django.middleware.csrf import get_token

from batches import events, fragments
from batches.models import Batch

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
# How long a later event waits for an earlier one still on its way (another worker's message)
# before the gap is taken for a lost message and the socket is resynced with a snapshot.
GAP_SECONDS = 1.0


class OrderedEvents:
    """A consumer's side of events.InOrder: hands the events on in seq order, and calls
    `resync` when a gap stays open for GAP_SECONDS."""

    def __init__(self, emit: Any, resync: Any) -> None:
        self.order = events.InOrder(after=0)
        self._emit = emit
        self._resync = resync
        self._gap_timer: asyncio.Task[None] | None = None

    async def restart(self, after: int) -> None:
        """A snapshot at seq `after` was just sent."""
        for event in self.order.reset(after):
            await self._emit(event)
        self._watch_gap()

    async def accept(self, message: dict[str, Any]) -> None:
        for event in self.order.accept(message):
            await self._emit(event)
        self._watch_gap()

    def _watch_gap(self) -> None:
        if not self.order.waiting:
            if self._gap_timer:
                self._gap_timer.cancel()
                self._gap_timer = None
        elif self._gap_timer is None or self._gap_timer.done():
            self._gap_timer = asyncio.create_task(self._close_gap())

    async def _close_gap(self) -> None:
        await asyncio.sleep(GAP_SECONDS)
        self._gap_timer = None
        if self.order.waiting:
            await self._resync()

    def stop(self) -> None:
        if self._gap_timer:
            self._gap_timer.cancel()


@database_sync_to_async
def _load_snapshot(user: Any, batch_id: int) -> events.Snapshot | None:
    """The batch's snapshot, or None when the user may not watch it (or it is gone)."""
    if not fragments.may_watch(user, batch_id):
        return None
    return events.snapshot_event(batch_id)


@database_sync_to_async
def _may_watch(user: Any, batch_id: int) -> bool:
    return fragments.may_watch(user, batch_id)


class BatchConsumer(AsyncJsonWebsocketConsumer):
    """`/ws/batches/<id>/`: JSON events for API clients and the pages' scripts."""

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.batch_id = int(self.scope["url_route"]["kwargs"]["batch_id"])
        if not await _may_watch(user, self.batch_id):
            await self.close(code=CLOSE_FORBIDDEN)
            return
        # Events and a resync's snapshot (sent from the gap timer's task) never interleave.
        self._sending = asyncio.Lock()
        # The seq of the last message sent. An event released in order but still waiting for
        # the lock when a resync's snapshot went out is covered by it, and is not sent after it.
        self._sent_seq = 0
        self.ordered = OrderedEvents(self._send_event, self.send_snapshot)
        # Join before reading the snapshot: an event sent meanwhile is delivered, and either
        # the snapshot already shows it (it is dropped) or it is newer and follows it. Read
        # first, an event sent before the join was lost: the socket waited a second for it,
        # then resynced.
        await self.channel_layer.group_add(events.group_name(self.batch_id), self.channel_name)
        snapshot = await _load_snapshot(user, self.batch_id)
        if snapshot is None:  # deleted since the check above
            await self.close(code=CLOSE_FORBIDDEN)
            return
        await self.accept()
        await self.send(text_data=snapshot.text)
        self._sent_seq = snapshot.seq
        await self.ordered.restart(snapshot.seq)

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "batch_id"):
            if hasattr(self, "ordered"):
                self.ordered.stop()
            await self.channel_layer.group_discard(
                events.group_name(self.batch_id), self.channel_name
            )

    async def _send_event(self, event: dict[str, Any]) -> None:
        async with self._sending:
            if event["seq"] > self._sent_seq:
                await self.send_json(event)
                self._sent_seq = event["seq"]

    async def send_snapshot(self) -> None:
        async with self._sending:
            snapshot = await _load_snapshot(self.scope["user"], self.batch_id)
            if snapshot:
                await self.send(text_data=snapshot.text)
                self._sent_seq = max(self._sent_seq, snapshot.seq)
        if snapshot:
            await self.ordered.restart(snapshot.seq)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """A client may ask for a fresh snapshot at any time."""
        if isinstance(content, dict) and content.get("type") == "snapshot":
            await self.send_snapshot()

    async def batch_events(self, message: dict[str, Any]) -> None:
        """Events arrive in bundles (events.py); each goes to the client as its own message,
        in seq order."""
        await self.ordered.accept(message)


# --- the htmx pages' consumer ----------------------------------------------------------------

# How long header re-renders are gathered: a chunk finishing ten images at once costs the
# watcher one header query, not ten.
HEADER_COALESCE_SECONDS = 0.25


def _page_render_options(scope: dict[str, Any]) -> dict[str, str]:
    """What the fragments need from the page's request: the CSRF token for the header's POST
    forms (from the browser's CSRF cookie, masked as Django masks it) and where those forms
    send the user back to (the admin passes `?next=` to come back to itself)."""
    options = {"csrf_token": "", "next_url": ""}
    secret = scope.get("cookies", {}).get(settings.CSRF_COOKIE_NAME, "")
    if secret:
        request = HttpRequest()
        request.META["CSRF_COOKIE"] = secret
        options["csrf_token"] = get_token(request)
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    next_url = query.get("next", [""])[0]
    # Only a path on this site: the value ends up in a redirect.
    if next_url.startswith("/") and not next_url.startswith("//"):
        options["next_url"] = next_url
    return options


@database_sync_to_async
def _render_live(batch_id: int, options: dict[str, str]) -> tuple[str, int]:
    batch = Batch.objects.with_images().get(pk=batch_id)
    return fragments.render_live(batch, **options), batch.seq


@database_sync_to_async
def _render_header(batch_id: int, seq: int, options: dict[str, str]) -> str:
    return fragments.render_header(Batch.objects.get(pk=batch_id), seq=seq, **options)


class BatchPageConsumer(AsyncWebsocketConsumer):
    """`/ws/batches/<id>/page/`: the same events as BatchConsumer, as HTML fragments with
    `hx-swap-oob` for htmx's ws extension. Each fragment carries `data-seq`; the page drops
    one older than what it shows (static/js/batch.js). Fragments go out in seq order: tiles
    as their events come (put in order as for BatchConsumer), and the header, re-rendered from
    the database at most every HEADER_COALESCE_SECONDS, carries the seq of the last fragment
    sent before it, so it never claims a seq ahead of a tile still to come.

    "Sent", not "released in order": InOrder releases a whole bundle's seqs at once, and a
    header task taking the lock between two of that bundle's tiles would otherwise claim the
    second tile's seq before the tile went out."""

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        batch_id = int(self.scope["url_route"]["kwargs"]["batch_id"])
        if not await _may_watch(user, batch_id):
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.batch_id = batch_id
        self.options = _page_render_options(self.scope)
        self._header_task: asyncio.Task[None] | None = None
        # The coalesced header is sent from a task of its own: this lock keeps it from going out
        # between a tile and the seq it read, so fragments leave in seq order.
        self._sending = asyncio.Lock()
        self._sent_seq = 0  # the seq of the last fragment sent: a header's, a tile's, a snapshot's
        self.ordered = OrderedEvents(self.forward, self.send_snapshot)
        # Join first, then snapshot: an event in between arrives after it and is newer.
        await self.channel_layer.group_add(events.group_name(batch_id), self.channel_name)
        await self.accept()
        # Also what makes a reconnecting page whole again after missed events.
        await self.send_snapshot()

    async def send_snapshot(self) -> None:
        async with self._sending:
            html, seq = await _render_live(self.batch_id, self.options)
            await self.send(text_data=html)
            self._sent_seq = max(self._sent_seq, seq)
        await self.ordered.restart(seq)

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "batch_id"):
            self.ordered.stop()
            if self._header_task:
                self._header_task.cancel()
            await self.channel_layer.group_discard(
                events.group_name(self.batch_id), self.channel_name
            )

    async def batch_events(self, message: dict[str, Any]) -> None:
        await self.ordered.accept(message)

    async def forward(self, event: dict[str, Any]) -> None:
        if event.get("type") == "image.updated":
            # Rendered from the event itself: no query per image.
            async with self._sending:
                # A tile released before a resync's snapshot went out is already on the page.
                if event["seq"] > self._sent_seq:
                    await self.send(text_data=fragments.render_tile(event["image"], self.batch_id))
                    self._sent_seq = event["seq"]
            if self._header_task is None or self._header_task.done():
                self._header_task = asyncio.create_task(self._send_header_soon())
        elif event.get("type") == "batch.updated":
            if self._header_task and not self._header_task.done():
                self._header_task.cancel()
            await self._send_header(through=event["seq"])

    async def _send_header_soon(self) -> None:
        await asyncio.sleep(HEADER_COALESCE_SECONDS)
        await self._send_header()

    async def _send_header(self, through: int = 0) -> None:
        """The header as the database has it now, standing for the last fragment sent or, for a
        batch update, for that update (every event before it has been sent: OrderedEvents hands
        them on one at a time)."""
        async with self._sending:
            seq = max(self._sent_seq, through)
            await self.send(text_data=await _render_header(self.batch_id, seq, self.options))
            self._sent_seq = seq
