"""Batch workflows: submit, enqueue, cancel, retry, finalize, sweep.

These orchestrate; the transitions they try are the QuerySet methods of models.py, money moves
in budgets/services.py, the chunk loop that talks to RunPod is chunks.py, webhooks are
webhooks.py and Redis coordination flow.py. This module imports none of chunks or tasks: it
names tasks by their Celery name, so the imports run one way (models <- flow, webhooks, events
<- chunks <- services, tasks).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from celery import chord, group, signature
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F

from batches import events, flow, webhooks
from batches.models import (
    Batch,
    BatchStatus,
    ImageJob,
    ImageStatus,
    new_seed,
)
from budgets import estimates, pricing
from budgets import services as budget_services

logger = logging.getLogger(__name__)

# Tasks are named, not imported: the tasks module imports this one.
ENQUEUE_BATCH_TASK = "batches.tasks.enqueue_batch_task"
# A new batch's enqueue task goes to the high queue whatever the batch's priority. It only sends
# the chord (tens of milliseconds), and the high worker's threads are kept free of long work:
# so a batch starts at once even while every thread of the normal worker runs other authors'
# chunks, and the chord is built in another process than the one its chunks start in.
ENQUEUE_QUEUE = "high"
FINALIZE_BATCH_TASK = "batches.tasks.finalize_batch_task"
ANNOUNCE_IMAGES_TASK = "batches.tasks.announce_images_task"
# Images per INSERT of a submit.
IMAGE_INSERT_SLICE = 500

# What an owner's retry requeues: completed panels are never redone.
RETRYABLE = [ImageStatus.FAILED, ImageStatus.CANCELLED]


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different body."""


class StateConflict(Exception):
    """The batch is not in a state that allows this action."""


@dataclass
class Submission:
    batch: Batch
    created: bool
    # The images as created (primary keys set by the bulk insert), so the answer is built
    # without reading them back; empty for a replayed submit, or when the caller asked not to
    # keep them (keep_images).
    images: list[ImageJob] = field(default_factory=list)
    # How many images the submit created (0 for a replay).
    image_count: int = 0


def request_fingerprint(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def estimate_batch(user: Any, images: list[dict[str, Any]]) -> dict[str, Any]:
    """Price a batch without creating anything: the estimate (learned from the endpoint where
    it has history, budgets.estimates) against what remains."""
    estimate = estimates.estimate_images([image["params"] for image in images])
    budget = budget_services.get_budget(user)
    return {
        "estimated_cost": estimate.total,
        "expected_cost": estimate.expected_cost,
        "allowance": estimate.allowance,
        "basis": estimate.basis,
        # The names before `expected_cost` and `allowance`, kept for existing clients.
        "base_cost": estimate.expected_cost,
        "retry_allowance": estimate.allowance,
        "retry_allowance_rate": estimate.allowance_rate,
        "currency": estimate.currency,
        "remaining": budget.remaining,
        "within_budget": estimate.total <= budget.remaining,
        "images": estimate.images,
    }


def submit_batch(
    user: Any,
    data: dict[str, Any],
    images: list[dict[str, Any]],
    *,
    idempotency_key: str = "",
    fingerprint: str = "",
    keep_images: bool = True,
) -> Submission:
    """Price, reserve and create a batch with its images in one transaction, then enqueue it.

    `images` carry their effective params. Raises BudgetExceeded (nothing created) or
    IdempotencyConflict. A replay with the same key and body returns the first batch.

    The request does the least it must: five statements in one transaction (the batch, its
    images in one insert, the budget read, its conditional reserve, the ledger row) and, after
    commit, one message to a worker that builds the chord (enqueue_batch_task): sending a
    chord of N chunks from the request cost about as much as everything else in it.
    """
    if idempotency_key:
        existing = _replayed_batch(user, idempotency_key, fingerprint)
        if existing:
            return Submission(existing, created=False)

    # The reservation is the learned estimate: a formula that is 3 to 12 times off would block
    # the author's budget for nothing. Each attempt still holds its worst case while it runs.
    estimate = estimates.estimate_images([image["params"] for image in images])
    # Each panel goes to its model's endpoint (the serializer offered only routed models).
    endpoints = [pricing.endpoint_for(image["params"]["model"]) for image in images]
    try:
        with transaction.atomic():
            batch = Batch.objects.create(
                user=user,
                title=data["title"],
                priority=data["priority"],
                style=data.get("style", ""),
                negative_prompt=data.get("negative_prompt", ""),
                params=data.get("params", {}),
                estimated_cost=estimate.total,
                expected_cost=estimate.expected_cost,
                estimate_basis=estimate.basis,
                # Reserved in this transaction (reserve_for_batch below), or rolled back.
                reserved=estimate.total,
                endpoint_id=pricing.batch_endpoint(endpoints),
                currency=estimate.currency,
                chunk_size=settings.COMICGEN_CHUNK_SIZE,
                idempotency_key=idempotency_key,
                request_hash=fingerprint,
            )
            # A new batch has pushed no event: its seq (a BatchSeq row made by its first event)
            # is 0, known without reading it back.
            Batch.event_seq.related.set_cached_value(batch, None)
            # One INSERT per IMAGE_INSERT_SLICE images (one for any batch of the default size);
            # on PostgreSQL it returns the primary keys, so the answer needs no read back. The
            # rows are built a slice at a time and kept only if the caller answers with them:
            # 10,000 built at once were 10 MB of a web process's peak.
            created_images: list[ImageJob] = []
            for start in range(0, len(images), IMAGE_INSERT_SLICE):
                created = ImageJob.objects.bulk_create(
                    [
                        ImageJob(
                            batch=batch,
                            index=index,
                            prompt=image["prompt"],
                            # A chosen seed is stored, so every panel can be reproduced.
                            seed=image["seed"] if image["seed"] is not None else new_seed(),
                            params=image["params"],
                            endpoint_id=endpoints[index],
                        )
                        for index, image in enumerate(
                            images[start : start + IMAGE_INSERT_SLICE], start
                        )
                    ]
                )
                if keep_images:
                    created_images += created
            # Last in the transaction: the budget row stays locked from this UPDATE to COMMIT,
            # and concurrent submits of one author queue on that lock.
            budget_services.reserve_for_batch(
                batch, estimate.total, images=len(images), created_reserved=True
            )
            chunks = list(range(math.ceil(len(images) / batch.chunk_size)))
            # robust: with the broker down the batch is still accepted; the sweeper enqueues it.
            transaction.on_commit(
                lambda: enqueue_batch_later(batch.pk, batch.priority, chunks), robust=True
            )
    except IntegrityError:
        # Two submits with one Idempotency-Key raced; the other one won.
        if idempotency_key:
            existing = _replayed_batch(user, idempotency_key, fingerprint)
            if existing:
                return Submission(existing, created=False)
        raise
    logger.info("batch %s submitted: %s images, estimate %s", batch.pk, len(images), estimate.total)
    return Submission(batch, created=True, images=created_images, image_count=len(images))


def enqueue_batch_later(batch_id: int, priority: str, chunks: list[int]) -> None:
    """Hand a new batch to a worker, which builds and sends its chord (enqueue_batch_task).

    The chunks are marked queued first, so the sweeper does not enqueue them a second time
    while the task waits in the broker; if the message cannot be sent, the marks go, and the
    sweeper's next pass enqueues the batch. A message lost inside the broker takes its marks'
    lifetime (the broker's visibility timeout) to be noticed, as a lost chunk task does."""
    flow.mark_chunks_queued(batch_id, chunks)
    try:
        flow.send_by_name(ENQUEUE_BATCH_TASK, (batch_id,), ENQUEUE_QUEUE)
    except Exception:
        flow.unmark_chunks_queued(batch_id, chunks)
        raise


def _replayed_batch(user: Any, key: str, fingerprint: str) -> Batch | None:
    existing = Batch.objects.filter(user=user, idempotency_key=key).first()
    if existing and existing.request_hash != fingerprint:
        raise IdempotencyConflict(
            "This Idempotency-Key was already used with a different request body."
        )
    return existing


def chunk_numbers(batch: Batch, indexes: Iterable[int] | None = None) -> list[int]:
    """The chunks holding the images at these panel indexes (default: every unfinished one)."""
    if indexes is None:
        indexes = batch.images.unfinished().values_list("index", flat=True)
    return sorted({index // batch.chunk_size for index in indexes})


def enqueue_batch(batch: Batch, chunks: list[int] | None = None) -> None:
    """A chord: one task per chunk on the batch's priority queue, then finalize."""
    chunks = chunk_numbers(batch) if chunks is None else chunks
    finalize = signature(FINALIZE_BATCH_TASK, args=(batch.pk,), queue=batch.priority)
    if not chunks:
        signature(FINALIZE_BATCH_TASK, args=([], batch.pk), queue=batch.priority).apply_async()
        return
    flow.mark_chunks_queued(batch.pk, chunks)
    header = group(flow.chunk_signature(batch.pk, chunk_no, batch.priority) for chunk_no in chunks)
    chord(header)(finalize)


def finalize_batch(batch_id: int) -> str | None:
    """Give a batch whose images are all terminal its terminal status, release what is left of
    its reservation and announce it. Idempotent; does nothing while images are unfinished."""
    batch = Batch.objects.filter(pk=batch_id).first()
    if batch is None:  # deleted while its tasks waited: nothing to finish
        return None
    if batch.is_terminal:
        return batch.status
    if batch.images.unfinished().exists():
        return None
    counts = batch.status_counts()
    if batch.cancel_requested_at and counts["completed"] < counts["total"]:
        status = BatchStatus.CANCELLED
    elif counts["completed"] == counts["total"]:
        status = BatchStatus.COMPLETED
    elif counts["completed"]:
        status = BatchStatus.PARTIAL
    elif counts["cancelled"] == counts["total"]:
        status = BatchStatus.CANCELLED
    else:
        status = BatchStatus.FAILED
    with transaction.atomic():
        if not Batch.objects.claim_finish(batch_id, status):
            return Batch.objects.values_list("status", flat=True).get(pk=batch_id)
        budget_services.release_batch(batch, note=f"batch {status}")
        events.push_batch_updated(batch_id)
    # Its panels are history now: the next estimate of these models reads them.
    estimates.forget_history(batch.estimate_basis.get("models", {}))
    logger.info(
        "batch %s finished %s: %s; expected %s (%s), actual %s",
        batch_id, status, counts, batch.expected_cost, batch.estimate_basis.get("kind", "-"),
        batch.actual_cost,
    )  # fmt: skip
    return status


def cancel_batch(batch: Batch, reason: str = "Cancelled by the user.") -> int:
    """Stop what has not finished. Pending and retrying images are cancelled here; images on
    RunPod are cancelled there by their chunk, which the cancel wakes. Returns how many images
    were cancelled at once."""
    if not Batch.objects.request_cancel(batch.pk, reason):
        raise StateConflict(f"The batch is already {batch.status}; there is nothing to cancel.")
    cancelled = ImageJob.objects.cancel_waiting(batch.pk, reason)
    announce_images(batch, cancelled)
    events.push_batch_updated(batch.pk)
    for chunk_no in chunk_numbers(batch):
        webhooks.wake_chunk(batch.pk, chunk_no)
    # Nothing may be running at all (e.g. a batch still queued): finish it now if so.
    finalize_batch(batch.pk)
    return len(cancelled)


def announce_images(batch: Batch, image_ids: list[int]) -> None:
    """Push one event per changed image from a worker, not from the request: a cancel of
    thousands of images answers at once and its events follow."""
    if not image_ids:
        return
    try:
        flow.send_by_name(ANNOUNCE_IMAGES_TASK, (batch.pk, image_ids), batch.priority)
    except Exception:  # the broker is down: pages catch up by snapshot and polling
        logger.warning("batch %s: could not queue events for %s images", batch.pk, len(image_ids))


def retry_batch(batch: Batch) -> int:
    """Requeue the failed and cancelled images only (completed ones are never redone)."""
    if not batch.is_terminal:
        raise StateConflict("The batch is still running; retry it once it has finished.")
    images = list(
        batch.images.filter(status__in=RETRYABLE).order_by("pk").only("pk", "index", "params")
    )
    if not images:
        raise StateConflict("No failed or cancelled images to retry.")
    estimate = estimates.estimate_images([image.params for image in images])
    image_ids = [image.pk for image in images]
    with transaction.atomic():
        # Image rows, then the batch row (reopen), then the budget's (reserve): the order a
        # chunk's pass writes an attempt's end in and a redraw locks its panel in. Locking the
        # batch first deadlocked with a redraw of one of these panels at the same moment (the
        # redraw held the image and waited for the batch). Whichever comes second now waits,
        # then finds the panel no longer failed and is refused with a conflict.
        # A panel a redraw just reopened is read as it is now: no longer among them.
        if batch.images.filter(status__in=RETRYABLE).lock_rows() != image_ids:
            raise StateConflict("The batch changed meanwhile; reload it and try again.")
        if not Batch.objects.reopen(batch.pk, batch.status):
            raise StateConflict("The batch changed meanwhile; reload it and try again.")
        budget_services.reserve_for_batch(batch, estimate.total)
        Batch.objects.filter(pk=batch.pk).update(
            estimated_cost=F("estimated_cost") + estimate.total,
            expected_cost=F("expected_cost") + estimate.expected_cost,
        )
        ImageJob.objects.reopen_for_retry(image_ids)
        transaction.on_commit(lambda: announce_images(batch, image_ids))
        events.push_batch_updated(batch.pk)
        chunks = chunk_numbers(batch, [image.index for image in images])
        transaction.on_commit(lambda: enqueue_batch(batch, chunks), robust=True)
    return len(images)


def sweep_batches() -> dict[str, int]:
    """Finish batches whose chord was lost and resume chunks whose task died (worker killed,
    Redis restarted). A chunk counts as dead when no task holds its lease and none waits in
    the broker for it; its images keep their RunPod job ids, so nothing is submitted twice."""
    resumed = finalized = 0
    for batch in Batch.objects.filter(status__in=[BatchStatus.QUEUED, BatchStatus.RUNNING]):
        chunks = chunk_numbers(batch)
        if not chunks:
            finalized += finalize_batch(batch.pk) is not None
            continue
        orphans = [n for n in chunks if not flow.chunk_is_owned(batch.pk, n)]
        if orphans:
            logger.warning("batch %s: resuming orphaned chunks %s", batch.pk, orphans)
            enqueue_batch(batch, orphans)
            resumed += len(orphans)
    return {"resumed_chunks": resumed, "finalized": finalized}
