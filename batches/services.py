"""Batch workflows: submit, enqueue, cancel, retry, finalize, sweep, webhooks.

The per-chunk loop that talks to RunPod is in chunks.py; Redis coordination in flow.py; money
in budgets/services.py. PostgreSQL is the source of truth: every state change is a conditional
UPDATE that says whether this caller won it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from celery import chord, group
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from batches import events, flow
from batches.models import (
    BATCH_TERMINAL,
    IMAGE_TERMINAL,
    Batch,
    BatchStatus,
    ImageJob,
    ImageStatus,
)
from batches.runpod import ACTIVE_STATUSES, TERMINAL_STATUSES
from budgets import estimates
from budgets import services as budget_services
from comicgen.db import retry_once_on_a_lost_connection

logger = logging.getLogger(__name__)


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different body."""


class StateConflict(Exception):
    """The batch is not in a state that allows this action."""


@dataclass
class Submission:
    batch: Batch
    created: bool
    # The images as created (primary keys set by the bulk insert), so the answer is built
    # without reading them back; empty for a replayed submit.
    images: list[ImageJob] = field(default_factory=list)


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
    rng = random.SystemRandom()
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
                endpoint_id=settings.RUNPOD_ENDPOINT_ID,
                currency=estimate.currency,
                chunk_size=settings.COMICGEN_CHUNK_SIZE,
                idempotency_key=idempotency_key,
                request_hash=fingerprint,
            )
            # One INSERT per 500 images (one for any batch of the default size); on PostgreSQL
            # it returns the primary keys, so the answer needs no read back.
            created_images = ImageJob.objects.bulk_create(
                [
                    ImageJob(
                        batch=batch,
                        index=index,
                        prompt=image["prompt"],
                        # A chosen seed is stored, so every panel can be reproduced.
                        seed=image["seed"] if image["seed"] is not None else rng.randrange(2**32),
                        params=image["params"],
                    )
                    for index, image in enumerate(images)
                ],
                batch_size=500,
            )
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
    return Submission(batch, created=True, images=created_images)


def enqueue_batch_later(batch_id: int, priority: str, chunks: list[int]) -> None:
    """Hand a new batch to a worker, which builds and sends its chord (enqueue_batch_task).

    The chunks are marked queued first, so the sweeper does not enqueue them a second time
    while the task waits in the broker; if the message cannot be sent, the marks go, and the
    sweeper's next pass enqueues the batch. A message lost inside the broker takes its marks'
    lifetime (the broker's visibility timeout) to be noticed, as a lost chunk task does."""
    from batches import tasks

    flow.mark_chunks_queued(batch_id, chunks)
    try:
        tasks.enqueue_batch_task.apply_async(args=(batch_id,), queue=priority)
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
        unfinished = batch.images.exclude(status__in=IMAGE_TERMINAL)
        indexes = unfinished.values_list("index", flat=True)
    return sorted({index // batch.chunk_size for index in indexes})


def enqueue_batch(batch: Batch, chunks: list[int] | None = None) -> None:
    """A chord: one task per chunk on the batch's priority queue, then finalize."""
    from batches import tasks

    chunks = chunk_numbers(batch) if chunks is None else chunks
    if not chunks:
        tasks.finalize_batch_task.apply_async(args=([], batch.pk), queue=batch.priority)
        return
    flow.mark_chunks_queued(batch.pk, chunks)
    header = group(
        tasks.process_chunk_task.si(batch.pk, chunk_no).set(queue=batch.priority)
        for chunk_no in chunks
    )
    chord(header)(tasks.finalize_batch_task.s(batch.pk).set(queue=batch.priority))


def mark_batch_running(batch_id: int) -> None:
    started = Batch.objects.filter(pk=batch_id, status=BatchStatus.QUEUED).update(
        status=BatchStatus.RUNNING, started_at=timezone.now()
    )
    if started:
        events.push_batch_updated(batch_id)


def finalize_batch(batch_id: int) -> str | None:
    """Give a batch whose images are all terminal its terminal status, release what is left of
    its reservation and announce it. Idempotent; does nothing while images are unfinished."""
    batch = Batch.objects.filter(pk=batch_id).first()
    if batch is None:  # deleted while its tasks waited: nothing to finish
        return None
    if batch.is_terminal:
        return batch.status
    if batch.images.exclude(status__in=IMAGE_TERMINAL).exists():
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
        claimed = (
            Batch.objects.filter(pk=batch_id)
            .exclude(status__in=BATCH_TERMINAL)
            .update(status=status, finished_at=timezone.now())
        )
        if not claimed:
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
    now = timezone.now()
    requested = (
        Batch.objects.filter(pk=batch.pk)
        .exclude(status__in=BATCH_TERMINAL)
        .update(cancel_requested_at=now, cancel_reason=reason)
    )
    if not requested:
        raise StateConflict(f"The batch is already {batch.status}; there is nothing to cancel.")
    waiting = list(
        batch.images.filter(
            status__in=[ImageStatus.PENDING, ImageStatus.RETRYING], runpod_job_id=""
        ).values_list("pk", flat=True)
    )
    cancelled = ImageJob.objects.filter(
        pk__in=waiting, status__in=[ImageStatus.PENDING, ImageStatus.RETRYING], runpod_job_id=""
    ).update(status=ImageStatus.CANCELLED, error=reason, finished_at=now, next_attempt_at=None)
    announce_images(batch, waiting)
    events.push_batch_updated(batch.pk)
    for chunk_no in chunk_numbers(batch):
        flow.wake_chunk(batch.pk, chunk_no)
    # Nothing may be running at all (e.g. a batch still queued): finish it now if so.
    finalize_batch(batch.pk)
    return cancelled


def announce_images(batch: Batch, image_ids: list[int]) -> None:
    """Push one event per changed image from a worker, not from the request: a cancel of
    thousands of images answers at once and its events follow."""
    from batches import tasks

    if not image_ids:
        return
    try:
        tasks.announce_images_task.apply_async(args=(batch.pk, image_ids), queue=batch.priority)
    except Exception:  # the broker is down: pages catch up by snapshot and polling
        logger.warning("batch %s: could not queue events for %s images", batch.pk, len(image_ids))


def retry_batch(batch: Batch) -> int:
    """Requeue the failed and cancelled images only (completed ones are never redone)."""
    if not batch.is_terminal:
        raise StateConflict("The batch is still running; retry it once it has finished.")
    retryable = batch.images.filter(status__in=[ImageStatus.FAILED, ImageStatus.CANCELLED])
    images = list(retryable.only("pk", "index", "params"))
    if not images:
        raise StateConflict("No failed or cancelled images to retry.")
    estimate = estimates.estimate_images([image.params for image in images])
    with transaction.atomic():
        reopened = Batch.objects.filter(pk=batch.pk, status=batch.status).update(
            status=BatchStatus.RUNNING,
            finished_at=None,
            cancel_requested_at=None,
            cancel_reason="",
        )
        if not reopened:
            raise StateConflict("The batch changed meanwhile; reload it and try again.")
        budget_services.reserve_for_batch(batch, estimate.total)
        Batch.objects.filter(pk=batch.pk).update(
            estimated_cost=F("estimated_cost") + estimate.total,
            expected_cost=F("expected_cost") + estimate.expected_cost,
        )
        image_ids = [image.pk for image in images]
        # Attempt numbers go on from where they were: each names one RunPod job, one webhook
        # URL and one ledger charge, so a retried image must never reuse one.
        ImageJob.objects.filter(pk__in=image_ids).update(
            status=ImageStatus.PENDING,
            attempts_before_retry=F("attempts"),
            hold=Decimal("0"),
            error="",
            runpod_job_id="",
            next_attempt_at=None,
            finished_at=None,
        )
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


def receive_webhook(
    batch_id: int, chunk_no: int, image_id: int, attempt: int, token: str, payload: Any
) -> bool:
    """Accept a RunPod webhook for one image attempt. False when the token is wrong or the
    payload is not a job status; True otherwise, whatever is done with it:

    - a report on the job the attempt recorded is kept for its chunk, which is woken;
    - a report on a job for an attempt whose /run answer was lost is noted on the image: the
      chunk adopts that job once RunPod's own /status confirms it (a webhook proves nothing,
      anyone holding its URL can post one);
    - a report on an attempt that already ended without knowing its job (charged nothing after
      the grace) means RunPod did run it: a task charges it, once /status confirms it.
    Anything else (another job id, a finished image) is acknowledged and dropped.
    """
    if not flow.webhook_token_matches(batch_id, chunk_no, image_id, attempt, token):
        return False
    if webhook_payload_problem(payload) is not None:
        return False
    job_id, status = payload["id"], payload["status"]
    # A webhook is RunPod's one word on a job whose /run answer may be lost: a dropped database
    # connection gets one reconnect rather than a 500 (RunPod tries a webhook three times only).
    image = retry_once_on_a_lost_connection(
        lambda: (
            ImageJob.objects.filter(pk=image_id, batch_id=batch_id)
            .only("attempts", "status", "runpod_job_id", "batch_id")
            .first()
        )
    )
    if image is None:  # deleted with its batch: nothing left to do
        return True
    if image.attempts == attempt and image.status not in IMAGE_TERMINAL:
        if job_id == image.runpod_job_id:
            flow.deliver_result(batch_id, chunk_no, job_id, payload)
            # The GPU is free the moment the job ends: give its slot to waiting work now
            # rather than after the chunk has stored the image.
            if status in TERMINAL_STATUSES:
                flow.release_slot(image_id)
        elif not image.runpod_job_id and retry_once_on_a_lost_connection(
            lambda: ImageJob.objects.filter(
                pk=image_id, attempts=attempt, runpod_job_id="", webhook_job_id=""
            ).update(webhook_job_id=job_id)
        ):
            flow.wake_chunk(batch_id, chunk_no)
        return True
    if status in TERMINAL_STATUSES and budget_services.attempt_charged_nothing(image_id, attempt):
        from batches import tasks

        tasks.charge_late_job_task.delay(image_id, attempt, job_id)
    return True


# RunPod job ids are UUIDs with a suffix (`...-u1`); ImageJob.runpod_job_id holds 100 characters.
_JOB_ID = re.compile(r"[\x21-\x7e]{1,100}")
RUNPOD_STATUSES = ACTIVE_STATUSES | TERMINAL_STATUSES


def webhook_payload_problem(payload: Any) -> str | None:
    """What is wrong with a webhook's job status object, in words for the 400, or None when
    its shape is acceptable (its figures are still not trusted: see receive_webhook)."""
    if not isinstance(payload, dict):
        return "The body must be a JSON object: a RunPod job status."
    job_id = payload.get("id")
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        return "`id` must be the RunPod job id: 1 to 100 printable ASCII characters."
    status = payload.get("status")
    if not isinstance(status, str) or status not in RUNPOD_STATUSES:
        return "`status` must be one of " + ", ".join(sorted(RUNPOD_STATUSES)) + "."
    return None


def webhook_url(batch_id: int, chunk_no: int, image_id: int, attempt: int) -> str | None:
    """Where RunPod reports an attempt's end. The image and attempt in the URL let a chunk
    adopt a job whose id it never recorded (its task died while /run was answering)."""
    if not settings.COMICGEN_PUBLIC_URL:
        return None
    token = flow.webhook_token(batch_id, chunk_no, image_id, attempt)
    return (
        f"{settings.COMICGEN_PUBLIC_URL}/api/v1/runpod/webhook/"
        f"{batch_id}/{chunk_no}/{image_id}/{attempt}/{token}/"
    )


def scoped_batches(user: Any) -> Any:
    """The batches a user may see: their own, or all for staff."""
    batches = Batch.objects.all()
    return batches if user.is_staff else batches.filter(user=user)
