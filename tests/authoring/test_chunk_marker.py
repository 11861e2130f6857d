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


def test_a_paused_batch_whose_chunk_died_is_resumed_to_collect_its_jobs(user: Any) -> None:
    from batches import authoring
    from batches.models import Batch, BatchStatus, ImageJob, ImageStatus

    batch = submitted(user, [f"panel {n}" for n in range(12)])
    Batch.objects.filter(pk=batch.pk).update(status=BatchStatus.PAUSED, chunk_size=10)
    ImageJob.objects.filter(batch=batch, index=11).update(
        status=ImageStatus.RUNNING, runpod_job_id="job-on-runpod", attempts=1
    )

    assert authoring.sweep_paused_batches() == 1  # chunk 1 follows a job; chunk 0 does not
    assert flow.chunk_is_owned(batch.pk, 1)
    assert not flow.chunk_is_owned(batch.pk, 0)
    assert authoring.sweep_paused_batches() == 0  # its task is queued now
