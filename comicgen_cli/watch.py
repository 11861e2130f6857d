"""Following a batch until it ends: over the WebSocket (`/ws/batches/<id>/`, the token in an
`Authorization` header), falling back to polling the REST API when the socket cannot be opened
or drops.

The socket's events come in `seq` order (the server guarantees it), each newer than the snapshot
it starts with; an event at or below the last seq seen is stale and dropped. The running cost
is the sum of the panels' costs (each `image.updated` carries its panel's), which is what the
batch's `actual_cost` adds up to; the end is read once more from the REST API, the truth.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit

from comicgen_cli.client import Api, CliError

TERMINAL = frozenset({"completed", "partial", "failed", "cancelled"})
POLL_SECONDS = 2.0
# With no event for this long, the batch is re-read over REST: the channel layer may drop a
# message, and a batch that ends in silence must not leave the watcher waiting forever.
RESYNC_SECONDS = 10.0


def _decimal(value: Any) -> Decimal:
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return Decimal(0)


@dataclass
class BatchState:
    """What the watcher knows of one batch, from a snapshot and the events after it."""

    batch_id: int
    title: str = ""
    status: str = "queued"
    counts: dict[str, int] = field(default_factory=dict)
    image_costs: dict[int, Decimal] = field(default_factory=dict)
    actual_cost: Decimal = Decimal(0)
    currency: str = "USD"
    eta_seconds: float | None = None
    seq: int = -1

    @property
    def cost(self) -> Decimal:
        return max(self.actual_cost, sum(self.image_costs.values(), Decimal(0)))

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    def load(self, batch: dict[str, Any]) -> None:
        """A whole batch: a REST answer or a socket's snapshot."""
        self.seq = max(self.seq, int(batch.get("seq") or 0))
        self.title = str(batch.get("title", self.title))
        self.status = str(batch.get("status", self.status))
        self.counts = dict(batch.get("counts") or self.counts)
        self.actual_cost = _decimal(batch.get("actual_cost", self.actual_cost))
        self.currency = str(batch.get("currency") or self.currency)
        eta = batch.get("eta_seconds")
        self.eta_seconds = float(eta) if isinstance(eta, int | float) else None
        if "images" in batch:
            self.image_costs = {
                image["id"]: _decimal(image.get("cost"))
                for image in batch["images"]
                if isinstance(image, dict) and isinstance(image.get("id"), int)
            }

    def apply(self, event: dict[str, Any]) -> bool:
        """A socket event; False when it is stale or not about this batch's progress."""
        kind = event.get("type")
        if kind == "batch.snapshot" and isinstance(event.get("batch"), dict):
            self.seq = -1  # a snapshot resets the order (the server resyncs with one)
            self.load({**event["batch"], "seq": event.get("seq", 0)})
            return True
        seq = event.get("seq")
        if not isinstance(seq, int) or seq <= self.seq:
            return False
        self.seq = seq
        if isinstance(event.get("counts"), dict):
            self.counts = dict(event["counts"])
        image = event.get("image")
        if kind == "image.updated" and isinstance(image, dict):
            if isinstance(image.get("id"), int):
                self.image_costs[image["id"]] = _decimal(image.get("cost"))
            if self.status == "queued":
                self.status = "running"
        elif kind == "batch.updated":
            self.status = str(event.get("status", self.status))
            self.actual_cost = _decimal(event.get("actual_cost", self.actual_cost))
        return True


def socket_url(base: str, batch_id: int) -> str:
    parts = urlsplit(base)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}/ws/batches/{batch_id}/"


def origin_of(base: str) -> str:
    """The server checks a socket's Origin against its allowed hosts: present its own."""
    parts = urlsplit(base)
    return f"{parts.scheme}://{parts.netloc}"


class Watcher:
    """Follows one batch to its end, calling `draw(state)` after every change and
    `note(message)` when it switches between the socket and polling."""

    def __init__(
        self,
        api: Api,
        batch_id: int,
        draw: Callable[[BatchState], None],
        note: Callable[[str], None],
    ) -> None:
        self.api = api
        self.state = BatchState(batch_id)
        self.draw = draw
        self.note = note
        self.mode = ""

    def resync(self) -> None:
        self.state.load(self.api.batch(self.state.batch_id))
        self.draw(self.state)

    def run(self) -> BatchState:
        self.resync()  # also checks the batch exists and is ours before any socket
        if not self.state.finished:
            try:
                self._follow_socket()
            except CliError:
                raise
            except Exception as error:  # the socket is an enhancement; polling always works
                self.note(f"Live updates unavailable ({_reason(error)}); polling every "
                          f"{POLL_SECONDS:.0f} s.")  # fmt: skip
                self.mode = "polling"
                self._poll()
        self.resync()  # the end as the database has it (final cost included)
        return self.state

    def _follow_socket(self) -> None:
        from websockets.sync.client import connect
        from websockets.typing import Origin

        url = socket_url(self.api.url, self.state.batch_id)
        headers = {"Authorization": f"Token {self.api.token}"}
        with connect(
            url,
            additional_headers=headers,
            origin=Origin(origin_of(self.api.url)),
            open_timeout=10,
            user_agent_header="comicgen-cli/0.1",
        ) as socket:
            self.mode = "websocket"
            self.note("Following live over the WebSocket.")
            last_event = time.monotonic()
            while not self.state.finished:
                try:
                    raw = socket.recv(timeout=1.0)
                except TimeoutError:
                    if time.monotonic() - last_event > RESYNC_SECONDS:
                        self.resync()
                        last_event = time.monotonic()
                    continue
                last_event = time.monotonic()
                try:
                    event = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(event, dict) and self.state.apply(event):
                    self.draw(self.state)

    def _poll(self) -> None:
        while not self.state.finished:
            time.sleep(POLL_SECONDS)
            self.resync()


def _reason(error: Exception) -> str:
    text = str(error) or type(error).__name__
    return text if len(text) < 200 else text[:200] + "..."
