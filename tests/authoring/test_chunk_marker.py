"""A chunk task that finds its chunk already run by another leaves no "queued" marker behind:
the sweeper must still see the chunk as orphaned should the running task die. Resume and
redraw enqueue chunks whose task may still be running, so this happens often."""

from __future__ import annotations

from typing import Any

import pytest

from batches import chunks, flow
from tests.authoring.support import submitted

pytestmark = pytest.mark.django_db


def test_a_skipped_chunk_task_clears_its_queued_marker(user: Any) -> None:
    batch = submitted(user, ["one"])
    running = flow.ChunkLease(batch.pk, 0, owner="the running task")
    assert running.acquire()
    flow.mark_chunks_queued(batch.pk, [0])

    summary = chunks.process_chunk(batch.pk, 0)

    assert summary["skipped"] == "owned by another task"
    assert not flow.get_redis().exists(running.queued_key)
    assert flow.chunk_is_owned(batch.pk, 0)  # by the running task's lease
    running.release()
    assert not flow.chunk_is_owned(batch.pk, 0)  # the sweeper would now resume it
