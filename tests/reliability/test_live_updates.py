"""What a watcher sees on the real stack (daphne, channels-redis, a threaded Celery worker, the
emulator): a batch's events in seq order on every socket, and the batch done the moment its last
panel is."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import aiohttp
import pytest
from asgiref.sync import async_to_sync
from rest_framework.authtoken.models import Token

from batches.models import BatchStatus
from tests.batches.test_pipeline import finished, submit
from tests.conftest import wait_for

pytestmark = pytest.mark.integration

SEQ = re.compile(r'data-seq="(\d+)"')


async def watch(url: str, token: str, page: bool, timeout: float) -> list[Any]:
    """Every message of one socket until the batch's terminal event (JSON) or terminal header
    (page), as parsed JSON or raw HTML."""
    path = "page/" if page else ""
    received: list[Any] = []
    async with (
        aiohttp.ClientSession(headers={"Origin": url}) as session,
        session.ws_connect(
            f"{url.replace('http', 'ws')}{path}?token={token}", timeout=aiohttp.ClientWSTimeout()
        ) as socket,
    ):
        async with asyncio.timeout(timeout):
            async for message in socket:
                if page:
                    received.append(message.data)
                    terminal = any(f"badge--{s}" in message.data for s in BatchStatus.values[2:])
                    if len(received) > 1 and terminal and 'id="batch-progress"' in message.data:
                        break
                else:
                    event = json.loads(message.data)
                    received.append(event)
                    if event["type"] == "batch.updated" and event["status"] in (
                        BatchStatus.COMPLETED, BatchStatus.PARTIAL, BatchStatus.FAILED,
                    ):  # fmt: skip
                        break
    return received


def inversions(seqs: list[int], *, strict: bool) -> list[tuple[int, int]]:
    return [
        (before, after)
        for before, after in zip(seqs, seqs[1:], strict=False)
        if after < before or (strict and after == before)
    ]


def test_every_socket_gets_a_busy_batchs_events_in_seq_order(
    live: Any, api: Any, user: Any
) -> None:
    # Many panels ending at once on many GPUs, followed by several chunk threads at a time.
    live.emulator.configure(latency=0.15, jitter=0.1, workers=32)
    token = Token.objects.create(user=user).key
    created = submit(api, [f"crowd scene {n}" for n in range(120)])
    url = f"{live.web_url}/ws/batches/{created['id']}/"

    async def both() -> tuple[list[Any], list[Any]]:
        return await asyncio.gather(
            watch(url, token, page=False, timeout=120), watch(url, token, page=True, timeout=120)
        )

    events, fragments = async_to_sync(both)()

    assert events[0]["type"] == "batch.snapshot"
    seqs = [events[0]["seq"]] + [event["seq"] for event in events[1:]]
    image_events = [event for event in events if event["type"] == "image.updated"]
    print(f"JSON socket: {len(events)} events, {len(image_events)} image updates, seqs {seqs[:5]}…")
    assert len(image_events) >= 120  # every panel's completion at least
    assert inversions(seqs, strict=True) == []
    # The page: each fragment carries the seq it stands for; a header stands for the last
    # event before it, so it may repeat a tile's seq but never run ahead of one still to come.
    page_seqs = [max(map(int, SEQ.findall(fragment)), default=0) for fragment in fragments[1:]]
    print(f"page socket: {len(fragments)} fragments")
    assert len(page_seqs) >= 120
    assert inversions(page_seqs, strict=False) == []


def test_a_batch_finishes_the_moment_its_last_panel_does(live: Any, api: Any) -> None:
    live.emulator.configure(latency=0.3, workers=16)
    created = submit(api, [f"quick panel {n}" for n in range(10)])

    batch = wait_for(lambda: finished(created["id"]), timeout=60)

    last_panel = max(image.finished_at for image in batch.images.all())
    assert batch.status == BatchStatus.COMPLETED
    assert batch.finished_at is not None
    lag = (batch.finished_at - last_panel).total_seconds()
    print(f"batch finished {lag * 1000:.0f} ms after its last panel")
    # Before, the chunk slept out its longest wait (2 s) before noticing it was done.
    assert 0 <= lag < 1.0
    assert batch.reserved == 0
