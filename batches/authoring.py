"""Authors' tools: redraw a panel, keep and pick its takes, pause and resume a batch, and the
new seed a blank panel is retried with.

Everything here goes through the same engine and the same money rules as a submit: a redraw
is priced (budgets.estimates) and reserved on the budget like a submit, its attempts hold and
are charged by the chunk loop like any other, and a finished batch reopens while it runs and
ends again through finalize_batch. Attempt numbers keep counting across takes: each names one
RunPod job, one webhook URL and one ledger charge, so no take ever reuses one.

A panel's takes: the ImageJob row holds the current one (`version`), and each take a redraw
replaced is an ImageVersion row holding its file, prompt, seed, params and cost. The take the
ZIP and the export use is `selected_version`, or the latest completed one when it is null.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import F, Sum
from django.db.models.functions import Coalesce, Now
from django.utils import timezone

from batches import events, flow, services, webhooks
from batches.models import (
    BATCH_TERMINAL,
    IMAGE_IN_FLIGHT,
    IMAGE_TERMINAL,
    Batch,
    BatchStatus,
    ImageJob,
    ImageStatus,
    ImageVersion,
    new_seed,
)
from budgets import estimates, pricing
from budgets import services as budget_services

logger = logging.getLogger(__name__)
ZERO = Decimal("0")


# --- the quality gate's retry ----------------------------------------------------------------


def reseed_after_blank(image: ImageJob) -> bool:
    """Give a panel whose attempt came back blank a new seed for its retry: the same seed would
    draw the same refused image. Only while the image waits for that retry (the chunk that ran
    the attempt calls this right after recording it); False otherwise."""
    seed = new_seed()
    changed = ImageJob.objects.filter(
        pk=image.pk, status=ImageStatus.RETRYING, runpod_job_id="", attempts=image.attempts
    ).update(seed=seed)
    if changed:
        logger.info("image %s: blank output; retrying with seed %s", image.pk, seed)
        image.seed = seed
    return bool(changed)


# --- pause and resume ------------------------------------------------------------------------

PAUSABLE = (BatchStatus.QUEUED, BatchStatus.RUNNING)


def pause_batch(batch: Batch) -> None:
    """Stop submitting new jobs: those on RunPod finish and are stored, the reservation stays.
    budgets.services.hold_for_attempt refuses a paused batch, and a chunk with nothing in
    flight ends (ChunkRun.paused_pass). Raises StateConflict when the batch is not running or
    queued, or is being cancelled."""
    paused = Batch.objects.filter(
        pk=batch.pk, status__in=PAUSABLE, cancel_requested_at__isnull=True
    ).update(status=BatchStatus.PAUSED)
    if not paused:
        batch.refresh_from_db(fields=["status", "cancel_requested_at"])
        if batch.cancel_requested_at is not None and not batch.is_terminal:
            raise services.StateConflict("The batch is being cancelled; it cannot be paused.")
        raise services.StateConflict(f"The batch is {batch.status}; only a running batch pauses.")
    batch.status = BatchStatus.PAUSED
    events.push_batch_updated(batch.pk)
    # Chunks waiting for a slot or a retry see the pause now rather than at their next wake.
    for chunk_no in services.chunk_numbers(batch):
        webhooks.wake_chunk(batch.pk, chunk_no)
    logger.info("batch %s paused", batch.pk)


def resume_batch(batch: Batch) -> None:
    """Go on with a paused batch: it runs again and its unfinished chunks are enqueued (a chunk
    still following a job of before the pause keeps its lease; the enqueued task then leaves,
    and the running one submits again at its next pass). Raises StateConflict unless paused."""
    with transaction.atomic():
        resumed = Batch.objects.filter(pk=batch.pk, status=BatchStatus.PAUSED).update(
            status=BatchStatus.RUNNING, started_at=Coalesce(F("started_at"), Now())
        )
        if not resumed:
            batch.refresh_from_db(fields=["status"])
            raise services.StateConflict(f"The batch is {batch.status}, not paused.")
        batch.status = BatchStatus.RUNNING
        events.push_batch_updated(batch.pk)
        transaction.on_commit(lambda: services.enqueue_batch(batch), robust=True)
    for chunk_no in services.chunk_numbers(batch):
        webhooks.wake_chunk(batch.pk, chunk_no)
    logger.info("batch %s resumed", batch.pk)


def batch_is_paused(batch_id: int) -> bool:
    return Batch.objects.filter(pk=batch_id, status=BatchStatus.PAUSED).exists()


def in_flight(images: list[ImageJob]) -> list[ImageJob]:
    """The images that hold, or may hold, a RunPod job: a paused chunk follows these only."""
    return [image for image in images if image.status in IMAGE_IN_FLIGHT]


# --- redraw ----------------------------------------------------------------------------------


@dataclass
class RedrawRequest:
    prompt: str | None = None
    seed: int | None = None
    params: dict[str, Any] | None = None


def redraw_image(batch: Batch, image: ImageJob, request: RedrawRequest) -> ImageJob:
    """Draw a new take of one finished panel: priced and reserved like a submit (raises
    BudgetExceeded, changing nothing, when it does not fit), the current take kept as an
    ImageVersion, the image back to pending with its new prompt, seed (a new random one unless
    given) and params, the batch reopened if it had finished, and the image's chunk enqueued.
    Raises StateConflict while the panel is still being drawn or the batch is being cancelled.
    """
    params = {**image.params, **(request.params or {})}
    # A new model is drawn on its own endpoint (raises pricing.ModelNotOffered when none
    # serves it): priced as that model, it must also be rendered by it.
    try:
        endpoint_id = pricing.endpoint_for(params["model"])
    except pricing.ModelNotOffered:
        raise services.StateConflict(
            f"No RunPod endpoint here renders {params['model']!r} any more; redraw the panel "
            "with another model (params.model)."
        ) from None
    estimate = estimates.estimate_images([params])
    with transaction.atomic():
        # Image row before batch row, the order a chunk's pass writes them in (it ends its
        # attempts, then charges the batch): the opposite order could deadlock with a pass
        # ending this very panel.
        current = ImageJob.objects.select_for_update().get(pk=image.pk)
        locked = Batch.objects.select_for_update().get(pk=batch.pk)
        if locked.cancel_requested_at is not None and not locked.is_terminal:
            raise services.StateConflict("The batch is being cancelled; redraw once it has ended.")
        if current.status not in IMAGE_TERMINAL:
            raise services.StateConflict(
                f"Panel {current.panel_number} is still {current.status}; redraw it once it "
                "has finished."
            )
        if locked.status in BATCH_TERMINAL:
            # Reopened, as a retry reopens it: finalize ends it again after the redraw.
            Batch.objects.filter(pk=batch.pk, status=locked.status).update(
                status=BatchStatus.RUNNING,
                finished_at=None,
                cancel_requested_at=None,
                cancel_reason="",
            )
        budget_services.reserve_for_batch(locked, estimate.total)
        Batch.objects.filter(pk=batch.pk).update(
            estimated_cost=F("estimated_cost") + estimate.total,
            expected_cost=F("expected_cost") + estimate.expected_cost,
        )
        archive_current_take(current)
        ImageJob.objects.filter(pk=current.pk).update(
            prompt=request.prompt if request.prompt is not None else current.prompt,
            seed=request.seed if request.seed is not None else new_seed(),
            params=params,
            endpoint_id=endpoint_id,
            status=ImageStatus.PENDING,
            # A fresh COMICGEN_MAX_ATTEMPTS for this take; attempt numbers go on counting.
            attempts_before_retry=F("attempts"),
            hold=ZERO,
            error="",
            runpod_job_id="",
            webhook_job_id="",
            image="",
            execution_ms=None,
            delay_ms=None,
            next_attempt_at=None,
            submitted_at=None,
            finished_at=None,
            # The new take is the one used once it is drawn; the author can pick an old one back.
            selected_version=None,
        )
        events.push_batch_updated(batch.pk)
        events.push_image_updated(image.pk)
        chunk = current.index // locked.chunk_size
        transaction.on_commit(lambda: services.enqueue_batch(locked, [chunk]), robust=True)
    webhooks.wake_chunk(batch.pk, chunk)
    logger.info("batch %s panel %s: redraw queued (estimate %s)", batch.pk, image.index,
                estimate.total)  # fmt: skip
    return ImageJob.objects.get(pk=image.pk)


def archive_current_take(image: ImageJob) -> ImageVersion | None:
    """Keep the image's current take as an ImageVersion (call with the image row locked) and
    make the row the next take. A panel with no completed file has no take to keep: its next
    completed take gets the same number."""
    earlier = image.versions.aggregate(total=Sum("cost"))["total"] or ZERO
    take = current_take(image, earlier)
    if take is None:
        return None
    version = ImageVersion.objects.create(
        image=image,
        version=take.version,
        prompt=take.prompt,
        seed=take.seed,
        params=take.params,
        file=take.file_name,
        cost=take.cost,
        last_attempt=image.attempts,
        execution_ms=image.execution_ms,
        created_at=take.created_at or timezone.now(),
    )
    ImageJob.objects.filter(pk=image.pk).update(version=F("version") + 1)
    return version


# --- takes -----------------------------------------------------------------------------------


@dataclass
class Take:
    """One take of a panel as the API and the pages show it."""

    version: int
    prompt: str
    seed: int
    params: dict[str, Any]
    file_name: str
    cost: Decimal
    created_at: datetime | None
    current: bool
    version_id: int | None = None


def takes_of(image: ImageJob) -> list[Take]:
    """Every completed take of a panel, oldest first: the kept ones, then the current one once
    it is drawn. Reads the versions only for a panel that was redrawn (version > 1), so a batch
    page of 500 untouched panels runs no query per panel."""
    kept: list[Take] = []
    earlier = ZERO
    if image.version > 1:
        for version in image.versions.all():
            earlier += version.cost
            kept.append(
                Take(
                    version=version.version,
                    prompt=version.prompt,
                    seed=version.seed,
                    params=version.params,
                    file_name=version.file.name,
                    cost=version.cost,
                    created_at=version.created_at,
                    current=False,
                    version_id=version.pk,
                )
            )
    take = current_take(image, earlier)
    if take is not None:
        kept.append(take)
    return kept


def current_take(image: ImageJob, earlier: Decimal) -> Take | None:
    """The panel's own row as a take, once it is drawn (None before): what takes_of shows last,
    and what archive_current_take keeps when a redraw starts. `earlier` is what the kept takes
    cost; the row's cost counts every take's attempts."""
    if image.status != ImageStatus.COMPLETED or not image.image:
        return None
    return Take(
        version=image.version,
        prompt=image.prompt,
        seed=image.seed,
        params=image.params,
        file_name=image.image.name,
        cost=image.cost - earlier,
        created_at=image.finished_at,
        current=True,
    )


def chosen_take(image: ImageJob) -> Take | None:
    """The take the ZIP, the pages and the export use: the selected one, else the latest
    completed one (an older take while a redraw is still drawing). None when there is none."""
    takes = takes_of(image)
    if image.selected_version is not None:
        for take in takes:
            if take.version == image.selected_version:
                return take
    return takes[-1] if takes else None


def select_version(image: ImageJob, version: int) -> ImageJob:
    """Pick the take the ZIP and the export use. Raises ValueError for a take that does not
    exist (or has no file yet)."""
    available = {take.version for take in takes_of(image)}
    if version not in available:
        choices = ", ".join(str(number) for number in sorted(available)) or "none yet"
        raise ValueError(f"Panel {image.panel_number} has no take {version} (takes: {choices}).")
    # Stored even for the latest take: the author picked it. A redraw clears the choice, so
    # the take it draws is the one used until the author picks another.
    ImageJob.objects.filter(pk=image.pk).update(selected_version=version)
    image.selected_version = version
    events.push_image_updated(image.pk)
    return image


def chosen_files(batch: Batch) -> list[tuple[str, str]]:
    """(name in the ZIP, stored file) of each panel's chosen take, in panel order; panels
    with none (not drawn, failed, expired) are left out."""
    files = []
    for image in batch.images.order_by("index").prefetch_related("versions"):
        take = chosen_take(image)
        if take is not None and take.file_name:
            files.append((image.filename, take.file_name))
    return files


def kept_take_files(batch_ids: list[int]) -> list[str]:
    """The stored files of the earlier takes of these batches' panels (for a deletion)."""
    versions = ImageVersion.objects.filter(image__batch_id__in=batch_ids).exclude(file="")
    return list(versions.values_list("file", flat=True))


def sweep_paused_batches() -> int:
    """Resume the chunks of paused batches that still follow jobs on RunPod but whose task
    died (the sweeper in services.py leaves paused batches alone): the resumed chunk collects
    and stores those jobs, then ends, as a paused chunk does. Returns how many it resumed."""
    resumed = 0
    for batch in Batch.objects.filter(status=BatchStatus.PAUSED):
        busy = batch.images.filter(status__in=IMAGE_IN_FLIGHT).values_list("index", flat=True)
        chunks = services.chunk_numbers(batch, busy)
        orphans = [n for n in chunks if not flow.chunk_is_owned(batch.pk, n)]
        if orphans:
            logger.warning("paused batch %s: resuming chunks %s to collect their jobs",
                           batch.pk, orphans)  # fmt: skip
            services.enqueue_batch(batch, orphans)
            resumed += len(orphans)
    return resumed
