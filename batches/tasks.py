"""Celery tasks: thin, idempotent wrappers around services.

All are acks_late with reject_on_worker_lost (settings), so a task whose worker dies is
delivered again; every one is safe to run twice. Transient errors (RunPod, Redis, a dropped
database connection) retry the task with exponential backoff and jitter, capped far below the
broker's visibility timeout (a longer countdown is delivered twice with a Redis broker).
"""

from __future__ import annotations

from typing import Any

import redis
from celery import shared_task
from django.db import InterfaceError, OperationalError

from batches import authoring, chunks, events, services
from batches.models import Batch
from batches.runpod import TransientRunPodError

TRANSIENT_ERRORS = (
    TransientRunPodError,
    redis.ConnectionError,
    redis.TimeoutError,
    OperationalError,
    InterfaceError,
)
RETRY_BACKOFF_MAX = 120  # seconds; CELERY_VISIBILITY_TIMEOUT is at least 300
RELIABLE: dict[str, Any] = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": 2,
    "retry_backoff_max": RETRY_BACKOFF_MAX,
    "retry_jitter": True,
    "max_retries": 10,
}


@shared_task(**RELIABLE)
def process_chunk_task(batch_id: int, chunk_no: int) -> dict[str, Any]:
    """Run one chunk of a batch on RunPod, then finish the batch if that was its last work;
    returns a small summary (the chord ignores it)."""
    summary = chunks.process_chunk(batch_id, chunk_no)
    services.finalize_batch(batch_id)
    return summary


# ignore_result: nobody reads it, and a task with a result makes apply_async subscribe to its
# result channel in Redis, round trips the submit request would wait for.
@shared_task(**RELIABLE, ignore_result=True)
def enqueue_batch_task(batch_id: int) -> None:
    """Build and send a new batch's chord, off the submit request (services.submit_batch).
    Twice is harmless: a chunk runs under a lease and finalize is idempotent."""
    batch = Batch.objects.filter(pk=batch_id).first()
    if batch is None:  # deleted before a worker got to it
        return
    services.enqueue_batch(batch)


@shared_task(**RELIABLE)
def finalize_batch_task(_chunk_results: Any, batch_id: int) -> str | None:
    """Chord callback. Reads the truth from PostgreSQL, never from the chunk results."""
    return services.finalize_batch(batch_id)


@shared_task(**RELIABLE)
def charge_late_job_task(image_id: int, attempt: int, job_id: str) -> str:
    """Charge a job RunPod reported for an attempt that had ended charged nothing."""
    return chunks.charge_late_job(image_id, attempt, job_id)


@shared_task(acks_late=True, ignore_result=True)
def sweep_batches_task() -> dict[str, int]:
    """Periodic (beat): finish batches whose chord was lost, resume orphaned chunks, and
    resume the chunks of paused batches that still follow jobs on RunPod but whose task died.
    One task for both: one pass over the open batches every COMICGEN_SWEEP_INTERVAL."""
    swept = services.sweep_batches()
    swept["resumed_paused_chunks"] = authoring.sweep_paused_batches()
    return swept


@shared_task(acks_late=True, ignore_result=True)
def announce_images_task(batch_id: int, image_ids: list[int]) -> None:
    """Push an image.updated event for each image (after a cancel changed many at once)."""
    for image_id in image_ids:
        events.push_image_updated(image_id)


@shared_task(acks_late=True, ignore_result=True)
def prune_panels_task() -> dict[str, int]:
    """Periodic (beat): remove panel files past COMICGEN_RETENTION_DAYS (batches/retention.py)."""
    from batches import retention

    report = retention.prune_panels()
    return {"batches": len(report.batches), "files": report.files}
