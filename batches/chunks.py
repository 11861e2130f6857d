"""The chunk loop: submit a chunk's images to RunPod, follow them, store what they make.

One task owns a chunk at a time (a lease in Redis). Each pass of its loop:
1. stops if the batch is being cancelled (cancelling its jobs on RunPod),
2. submits every image that is due, while an in-flight slot and budget are free,
3. collects results: webhooks first, then /status for jobs not heard from lately,
4. sleeps until a webhook wakes it or the next poll or retry is due.

Every transition is a conditional UPDATE on the image row, so a redelivered task, a sweeper
resuming the chunk, a webhook and a poll racing each other all agree on one outcome. A job id is
written the moment /run returns it: a resumed chunk polls the known job instead of resubmitting.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

import redis
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import InterfaceError, OperationalError, transaction
from django.db.models import F
from django.utils import timezone

from batches import authoring, events, flow, outputs, panels, services
from batches.models import IMAGE_IN_FLIGHT, IMAGE_TERMINAL, Batch, ImageJob, ImageStatus
from batches.runpod import (
    CANCELLED,
    COMPLETED,
    IN_PROGRESS,
    JobNotFound,
    JobStatus,
    PermanentRunPodError,
    RunPodClient,
    TransientRunPodError,
)
from budgets import pricing
from budgets import services as budget_services
from comicgen.db import retry_once_on_a_lost_connection

logger = logging.getLogger(__name__)

_clients = threading.local()
# A transient /run failure retries the call after this backoff, without using an attempt.
CALL_RETRY_BASE = 0.5
CALL_RETRY_MAX = 10.0
# A chunk waiting for a slot looks again this often: a freed slot is taken within this delay.
SLOT_RETRY_SECONDS = 0.1
# How long a chunk sleeps at most between passes (also bounds how late it sees a cancel).
MAX_WAIT_SECONDS = 2.0
# A database or Redis that went away is not a bad answer from RunPod: the task fails and is
# retried (its jobs' results wait at RunPod), rather than failing an attempt that may have
# produced a good panel and generating it again.
LOST_SERVICES = (OperationalError, InterfaceError, redis.ConnectionError, redis.TimeoutError)
# No RunPod job runs for a day (its executionTimeout is at most RUNPOD_EXECUTION_TIMEOUT_MS):
# a larger delayTime or executionTime is garbage, not a figure to store or charge.
MAX_REPORTED_MS = 24 * 3600 * 1000


def runpod_client() -> RunPodClient:
    """One pooled client per worker thread."""
    client = getattr(_clients, "client", None)
    if client is None:
        client = _clients.client = RunPodClient.from_settings()
    return client


def retry_delay(attempts: int) -> float:
    """Exponential backoff before the next attempt of a failed image, jittered between half and
    all of the ceiling so retries of many images spread out."""
    ceiling = min(
        settings.COMICGEN_RETRY_MAX_DELAY, settings.COMICGEN_RETRY_BASE_DELAY * 2 ** (attempts - 1)
    )
    return random.uniform(ceiling / 2, ceiling)


def poll_interval() -> float:
    """With webhooks on, /status is only the safety net for a lost webhook."""
    if settings.COMICGEN_PUBLIC_URL:
        return max(settings.RUNPOD_POLL_INTERVAL, settings.RUNPOD_WEBHOOK_POLL_INTERVAL)
    return settings.RUNPOD_POLL_INTERVAL


def process_chunk(batch_id: int, chunk_no: int) -> dict[str, Any]:
    """Run one chunk of a batch to the end. Safe to run twice: a second task finds the lease
    taken (and leaves) or the images terminal (and finishes at once)."""
    lease = flow.ChunkLease(batch_id, chunk_no, owner=uuid.uuid4().hex)
    if not lease.acquire():
        # This task was what the chunk's "queued" marker stood for, and it leaves now: a marker
        # left behind would hide the chunk from the sweeper should the running task die (a
        # resume or a redraw enqueues chunks whose task may still be running).
        flow.get_redis().delete(lease.queued_key)
        logger.info("batch %s chunk %s is already being run", batch_id, chunk_no)
        return {"chunk": chunk_no, "skipped": "owned by another task"}
    try:
        summary = ChunkRun(batch_id, chunk_no, lease).run()
    finally:
        lease.release()
    services.finalize_batch(batch_id)
    return summary


@dataclass
class ChunkRun:
    batch_id: int
    chunk_no: int
    lease: flow.ChunkLease
    last_checked: dict[str, float] = field(default_factory=dict)
    call_failures: int = 0
    waiting_for_slot: bool = False
    # Jobs this task already asked RunPod to cancel: later passes only ask their /status.
    cancel_sent: set[str] = field(default_factory=set)

    def run(self) -> dict[str, Any]:
        batch = Batch.objects.filter(pk=self.batch_id).first()
        if batch is None:  # deleted (by staff) while its tasks waited
            return {"chunk": self.chunk_no, "skipped": "batch deleted"}
        if batch.is_terminal:
            return {"chunk": self.chunk_no, "skipped": batch.status}
        services.mark_batch_running(self.batch_id)
        self.load(batch)
        while True:
            if not self.lease.renew():
                logger.warning("batch %s chunk %s lost its lease", self.batch_id, self.chunk_no)
                return {"chunk": self.chunk_no, "stopped": "lease lost"}
            wait = self.run_pass()
            if wait is None:
                break
            flow.wait_for_wake(self.batch_id, self.chunk_no, wait)
        return {"chunk": self.chunk_no, "done": True}

    def load(self, batch: Batch) -> None:
        self.batch = batch
        self.priority = batch.priority
        self.waiter = f"{self.batch_id}:{self.chunk_no}"
        first = self.chunk_no * batch.chunk_size
        self.images = ImageJob.objects.filter(
            batch_id=self.batch_id, index__gte=first, index__lt=first + batch.chunk_size
        )

    def run_pass(self) -> float | None:
        """One pass of the loop. Returns how long to wait before the next, or None when every
        image of the chunk has finished."""
        open_images = list(self.images.exclude(status__in=IMAGE_TERMINAL))
        if not open_images:
            return None
        # An attempt whose /run answer was lost may hold a running job: it keeps its slot.
        flow.refresh_slots([image.pk for image in open_images if image.status in IMAGE_IN_FLIGHT])
        if Batch.objects.filter(pk=self.batch_id, cancel_requested_at__isnull=False).exists():
            self.cancel(open_images)
            return SLOT_RETRY_SECONDS
        if authoring.batch_is_paused(self.batch_id):  # authors' tools: pause
            return self.paused_pass(open_images)
        self.submit_due(open_images)
        self.collect([image for image in open_images if image.runpod_job_id])
        if not self.images.exclude(status__in=IMAGE_TERMINAL).exists():
            # The last image just ended: finish now (the caller finalizes the batch), not after
            # another wait, so a batch is done the moment its last panel is.
            return None
        return self.wait_time()

    # --- submitting --------------------------------------------------------------------------

    def submit_due(self, images: list[ImageJob]) -> None:
        self.waiting_for_slot = False
        now = timezone.now()
        for image in images:
            if image.runpod_job_id:
                continue
            if image.status == ImageStatus.SUBMITTED:
                self.adopt_or_resubmit(image)
            elif image.next_attempt_at is None or image.next_attempt_at <= now:
                self.submit(image)
            if self.waiting_for_slot:
                return

    def adopt_or_resubmit(self, image: ImageJob) -> None:
        """An attempt with no job id recorded: its /run answer was lost (the task died while
        RunPod answered, or the answer was a timeout or 5xx that may have come after RunPod
        took the job), so a paid job may be running. Its webhook names the image and attempt:
        adopt the job (once /status confirms it) when it reports. With no report within the
        grace (COMICGEN_ORPHAN_GRACE_SECONDS plus the attempt's execution timeout) the job is
        taken as never created: the attempt ends uncharged and the image goes on; should the job
        report after all, charge_late_job charges it then. With webhooks off nothing could ever
        tell, so the attempt ends at once, charged at its maximum."""
        if image.webhook_job_id:
            self.adopt(image, image.webhook_job_id)
            return
        if not settings.COMICGEN_PUBLIC_URL:
            self.unconfirmed(image, may_have_run=True)
            return
        waited = (timezone.now() - (image.submitted_at or timezone.now())).total_seconds()
        grace = settings.COMICGEN_ORPHAN_GRACE_SECONDS + (
            pricing.attempt_timeout_ms(image.params) / 1000
        )
        if waited >= grace:
            self.unconfirmed(image, may_have_run=False)

    def adopt(self, image: ImageJob, job_id: str) -> None:
        """Take on the job a webhook named for this attempt, once RunPod's /status (which our
        API key authenticates) confirms it; a job RunPod does not know was never ours."""
        try:
            status = runpod_client().status(job_id)
        except JobNotFound:
            logger.warning("image %s: webhook named job %s, which RunPod does not know", image.pk,
                           job_id)  # fmt: skip
            ImageJob.objects.filter(pk=image.pk, webhook_job_id=job_id).update(webhook_job_id="")
            return
        except TransientRunPodError as error:
            logger.info("image %s: /status of job %s failed (%s); next pass", image.pk, job_id,
                        error)  # fmt: skip
            return
        if not ImageJob.objects.filter(
            pk=image.pk, status=ImageStatus.SUBMITTED, runpod_job_id="", attempts=image.attempts,
            webhook_job_id=job_id,
        ).update(runpod_job_id=job_id):  # fmt: skip
            return
        logger.info("image %s: adopted job %s after a lost /run answer", image.pk, job_id)
        image.runpod_job_id = job_id
        self.last_checked[job_id] = time.monotonic()
        try:
            self.handle(image, status)
        except LOST_SERVICES:
            raise
        except Exception as error:
            logger.exception("image %s job %s: could not handle RunPod's answer", image.pk, job_id)
            self.unusable_answer(image, job_id, status, None, error)

    def unconfirmed(self, image: ImageJob, *, may_have_run: bool) -> None:
        """End an attempt whose job id was never learned, and let the image go on at once with
        a new one. It does not count against the image's attempt limit: the image did nothing
        wrong. A job that may have run is charged the most it could cost (RunPod bills it and
        nothing will tell us for how long); one proven absent is charged nothing."""
        if may_have_run:
            job = JobStatus("", "LOST")
            reason = "RunPod's answer to /run was lost; charged the attempt's maximum"
        else:
            job = JobStatus("", "ABSENT", execution_time_ms=0)
            reason = "RunPod's answer to /run was lost and the job never reported"
        if self.end_attempt(
            image, job, status=ImageStatus.RETRYING, error=reason, next_attempt_at=timezone.now(),
            attempts_before_retry=F("attempts_before_retry") + 1,
        ):  # fmt: skip
            logger.warning("image %s attempt %s: %s", image.pk, image.attempts, reason)

    def submit(self, image: ImageJob) -> None:
        if not flow.acquire_slot(image.pk, self.priority, self.waiter):
            self.waiting_for_slot = True
            return
        previous_status = image.status
        max_cost = pricing.attempt_max_cost(image.params)
        # Hold and claim commit together: a worker lost between them leaves neither behind.
        held = claimed = False
        try:
            with transaction.atomic():
                held = budget_services.hold_for_attempt(self.batch_id, max_cost)
                if held:
                    claimed = bool(
                        ImageJob.objects.filter(
                            pk=image.pk, status=image.status, runpod_job_id="",
                            attempts=image.attempts,
                        ).update(
                            status=ImageStatus.SUBMITTED,
                            attempts=F("attempts") + 1,
                            hold=max_cost,
                            submitted_at=timezone.now(),
                            next_attempt_at=None,
                            # A job a webhook named for an earlier attempt is not this one's.
                            webhook_job_id="",
                        )
                    )  # fmt: skip
                    if not claimed:  # another runner, or a cancel, moved the image first
                        transaction.set_rollback(True)
        except budget_services.BatchClosed:
            flow.release_slot(image.pk)  # cancelled or finished meanwhile: the next pass sees it
            return
        if not held:
            flow.release_slot(image.pk)
            self.out_of_budget(image)
            return
        if not claimed:
            flow.release_slot(image.pk)
            return
        image.attempts += 1
        image.hold = max_cost
        image.status = ImageStatus.SUBMITTED
        image.submitted_at = timezone.now()
        try:
            job = runpod_client().run(
                image.runpod_input(self.batch),
                webhook=services.webhook_url(
                    self.batch_id, self.chunk_no, image.pk, image.attempts
                ),
                execution_timeout_ms=pricing.attempt_timeout_ms(image.params),
                ttl_ms=settings.RUNPOD_TTL_MS,
            )
        except TransientRunPodError as error:
            self.run_call_failed(image, error, previous_status)
            return
        except PermanentRunPodError as error:
            # RunPod refused the request outright (4xx): no job exists, nothing is billed.
            flow.release_slot(image.pk)
            self.finish(image, ImageStatus.FAILED, error=f"RunPod refused the job: {error}")
            return
        self.call_failures = 0
        # The job id exists only in this thread's memory until it is written: a dropped
        # database connection gets one reconnect before it is lost (and left to the webhook).
        recorded = retry_once_on_a_lost_connection(
            lambda: ImageJob.objects.filter(
                pk=image.pk, attempts=image.attempts, runpod_job_id=""
            ).update(runpod_job_id=job.id)
        )
        if not recorded:
            # The attempt moved on meanwhile (its webhook was adopted first): nothing to record.
            return
        image.runpod_job_id = job.id
        self.last_checked[job.id] = time.monotonic()
        events.push_image_updated(image.pk)

    def run_call_failed(
        self, image: ImageJob, error: TransientRunPodError, previous_status: str
    ) -> None:
        """A transient /run failure retries the call, not the image. When the call surely never
        reached RunPod (refused connection, 429), the attempt is given back with its hold. When
        it may have (timeout, 5xx, dropped connection), a paid job may exist: the attempt stays
        submitted, holding its slot and budget, until its webhook lets us adopt the job."""
        self.call_failures += 1
        backoff = min(CALL_RETRY_MAX, CALL_RETRY_BASE * 2 ** min(self.call_failures, 6))
        delay = max(error.retry_after or 0, random.uniform(backoff / 2, backoff))
        if error.ambiguous:
            logger.warning(
                "image %s attempt %s: /run answer lost (%s); waiting for its webhook",
                image.pk, image.attempts, error,
            )  # fmt: skip
            if not settings.COMICGEN_PUBLIC_URL:
                self.unconfirmed(image, may_have_run=True)
            return
        with transaction.atomic():
            given_back = ImageJob.objects.filter(
                pk=image.pk, attempts=image.attempts, runpod_job_id="",
                status=ImageStatus.SUBMITTED,
            ).update(
                status=previous_status,
                attempts=F("attempts") - 1,
                hold=Decimal("0"),
                next_attempt_at=timezone.now() + timedelta(seconds=delay),
            )  # fmt: skip
            if given_back:
                budget_services.release_hold(self.batch_id, image.hold)
        flow.release_slot(image.pk)
        logger.info("image %s: /run failed (%s), again in %.1fs", image.pk, error, delay)

    def out_of_budget(self, image: ImageJob) -> None:
        """No room left for another attempt. While other attempts run, their holds may come
        back; with none running, the rest of the chunk cannot run."""
        if self.images.filter(status__in=IMAGE_IN_FLIGHT).exists():
            self.waiting_for_slot = True
            return
        reason = "Cancelled: the monthly budget has no room left for this image."
        for pending in self.images.filter(
            status__in=[ImageStatus.PENDING, ImageStatus.RETRYING], runpod_job_id=""
        ):
            self.finish(pending, ImageStatus.CANCELLED, error=reason)

    # --- collecting --------------------------------------------------------------------------

    def collect(self, in_flight: list[ImageJob]) -> None:
        if not in_flight:
            return
        by_job = {image.runpod_job_id: image for image in in_flight}
        results = flow.take_results(list(by_job))
        interval = poll_interval()
        now = time.monotonic()
        for job_id, image in by_job.items():
            payload = results.get(job_id)
            if payload is None and now - self.last_checked.get(job_id, 0) < interval:
                continue
            status: JobStatus | None = None
            try:
                status = JobStatus.from_json(payload) if payload is not None else self.poll(image)
                if status is not None:
                    self.handle(image, status)
            except LOST_SERVICES:
                raise
            except Exception as error:
                # One odd answer must not stop the chunk: fail this attempt, go on with the rest.
                logger.exception("image %s job %s: could not handle RunPod's answer", image.pk,
                                 job_id)  # fmt: skip
                self.unusable_answer(image, job_id, status, payload, error)

    def poll(self, image: ImageJob) -> JobStatus | None:
        """The job's /status, or None when there is nothing to handle this pass."""
        job_id = image.runpod_job_id
        self.last_checked[job_id] = time.monotonic()
        try:
            return runpod_client().status(job_id)
        except JobNotFound:
            self.lost(image, "RunPod no longer knows this job (expired or purged).")
        except TransientRunPodError as error:
            logger.info("image %s: /status failed (%s); next pass", image.pk, error)
        return None

    def unusable_answer(
        self,
        image: ImageJob,
        job_id: str,
        status: JobStatus | None,
        payload: Any,
        error: Exception,
    ) -> None:
        """End an attempt whose answer could not be handled, charged what RunPod says it ran
        (the most it could have, when the answer says nothing usable)."""
        if status is not None:
            execution_ms = sane_execution_ms(status.execution_time_ms)
        elif isinstance(payload, dict):
            execution_ms = sane_execution_ms(payload.get("executionTime"))
        else:
            execution_ms = None
        job = JobStatus(job_id, "FAILED", None, None, None, execution_ms)
        reason = f"RunPod's answer could not be used ({type(error).__name__}: {error})"
        try:
            self.attempt_failed(image, job, reason[:500])
        except Exception:
            # Even recording the failure failed (the database, most likely): the next pass, or
            # the sweeper's resumed chunk, tries this image again.
            logger.exception("image %s: could not record its failed attempt", image.pk)

    def handle(self, image: ImageJob, job: JobStatus) -> None:
        if job.id != image.runpod_job_id:
            return
        if not job.is_terminal:
            started = job.status == IN_PROGRESS and image.status == ImageStatus.SUBMITTED
            if started and ImageJob.objects.filter(
                pk=image.pk, runpod_job_id=job.id, status=ImageStatus.SUBMITTED
            ).update(status=ImageStatus.RUNNING):
                events.push_image_updated(image.pk)
            return
        self.last_checked.pop(job.id, None)
        if job.status == COMPLETED:
            try:
                png = outputs.png_from_output(job.output)
            except outputs.BadOutput as error:
                self.attempt_failed(image, job, f"RunPod returned no usable image: {error}")
                if isinstance(error, outputs.BlankImage):  # authors' tools: quality gate
                    authoring.reseed_after_blank(image)
                return
            self.completed(image, job, png)
        else:
            reason = job.error or f"RunPod job ended {job.status}"
            self.attempt_failed(image, job, reason)

    def end_attempt(self, panel: ImageJob, job: JobStatus, **fields: Any) -> bool:
        """Record how an attempt ended and charge what it ran, once. The conditional UPDATE lets
        exactly one of a webhook, a poll, a cancel or a redelivered task win; the others change
        nothing. Returns whether this caller won. (`panel`, not `image`: `image=` is a field.)

        The charge is what billed_ms_of says at the GPU price."""
        execution_ms = sane_execution_ms(job.execution_time_ms)
        seen_running = panel.status == ImageStatus.RUNNING
        billed_ms = billed_ms_of(job, panel.params, seen_running=seen_running)
        cost = budget_services.billable_cost(panel, billed_ms)
        worst_case = execution_ms is None and billed_ms > 0
        note = "worst case: RunPod reported no executionTime" if worst_case else ""
        with transaction.atomic():
            won = (
                ImageJob.objects.filter(pk=panel.pk, runpod_job_id=job.id, attempts=panel.attempts)
                .exclude(status__in=IMAGE_TERMINAL)
                .update(
                    hold=Decimal("0"),
                    delay_ms=sane_execution_ms(job.delay_time_ms),
                    execution_ms=execution_ms,
                    **fields,
                )
            )
            if won:
                budget_services.charge_attempt(
                    panel, panel.attempts, cost, panel.hold, job_id=job.id, billed_ms=billed_ms,
                    note=note,
                )  # fmt: skip
                events.push_image_updated(panel.pk)
        flow.release_slot(panel.pk)
        return bool(won)

    def completed(self, image: ImageJob, job: JobStatus, png: bytes) -> None:
        # An unguessable name: panel files are private (served by batches.panels).
        name = default_storage.save(panels.panel_storage_name(), ContentFile(png))
        won = self.end_attempt(
            image, job, status=ImageStatus.COMPLETED, image=name, error="",
            finished_at=timezone.now(),
        )  # fmt: skip
        if not won:
            default_storage.delete(name)

    def attempt_failed(self, image: ImageJob, job: JobStatus, reason: str) -> None:
        """Charge what the attempt ran, then retry after a backoff or give up."""
        now = timezone.now()
        if image.attempts_this_round >= settings.COMICGEN_MAX_ATTEMPTS:
            reason = f"{reason} (gave up after {image.attempts_this_round} attempts)"
            outcome = {"status": ImageStatus.FAILED, "finished_at": now}
        else:
            delay = timedelta(seconds=retry_delay(image.attempts_this_round))
            outcome = {"status": ImageStatus.RETRYING, "next_attempt_at": now + delay}
        if self.end_attempt(image, job, runpod_job_id="", error=reason, **outcome):
            logger.info("image %s attempt %s failed: %s", image.pk, image.attempts, reason)

    def lost(self, image: ImageJob, reason: str) -> None:
        """The job vanished before we saw its end (its result expired, or RunPod purged it): it
        may have run, and nothing tells how long, so the attempt is charged at its maximum and
        the image retried within the attempt limit."""
        self.attempt_failed(image, JobStatus(image.runpod_job_id, "LOST"), reason)

    def finish(self, image: ImageJob, status: str, *, error: str) -> None:
        """End an image that holds no RunPod job (refused, cancelled before it ran)."""
        with transaction.atomic():
            won = (
                ImageJob.objects.filter(pk=image.pk, runpod_job_id="", attempts=image.attempts)
                .exclude(status__in=IMAGE_TERMINAL)
                .update(
                    status=status,
                    error=error,
                    finished_at=timezone.now(),
                    hold=Decimal("0"),
                )
            )
            if won and image.hold:
                budget_services.release_hold(self.batch_id, image.hold)
            if won:
                events.push_image_updated(image.pk)

    # --- cancelling --------------------------------------------------------------------------

    def cancel(self, images: list[ImageJob]) -> None:
        """Cancel every open image. Jobs on RunPod are cancelled there, then asked for their
        /status: a job that had started ran on a GPU and is charged the time it ran (/cancel
        answers only id and status). One that finished first keeps its panel."""
        reason = Batch.objects.values_list("cancel_reason", flat=True).get(pk=self.batch_id)
        reason = reason or "Cancelled."
        for image in images:
            if image.status == ImageStatus.SUBMITTED and not image.runpod_job_id:
                # Its /run answer was lost: it ends once its job is adopted or given up on.
                self.adopt_or_resubmit(image)
                continue
            if not image.runpod_job_id:
                self.finish(image, ImageStatus.CANCELLED, error=reason)
                continue
            try:
                self.cancel_job(image, reason)
            except LOST_SERVICES:
                raise
            except Exception as error:
                logger.exception("image %s: could not record its cancel", image.pk)
                self.unusable_answer(image, image.runpod_job_id, None, None, error)

    def cancel_job(self, image: ImageJob, reason: str) -> None:
        job_id = image.runpod_job_id
        try:
            if job_id not in self.cancel_sent:
                try:
                    runpod_client().cancel(job_id)
                except PermanentRunPodError as error:
                    # Refused (it may have ended first): what it ran is in its /status anyway.
                    if isinstance(error, JobNotFound):
                        raise
                    logger.info("image %s: /cancel refused (%s); asking /status", image.pk, error)
                self.cancel_sent.add(job_id)
            job = runpod_client().status(job_id)
        except JobNotFound:
            self.lost(image, reason)
            return
        except TransientRunPodError as error:
            logger.info("image %s: /cancel failed (%s); next pass", image.pk, error)
            return
        if job.status == COMPLETED:
            self.handle(image, job)  # it finished first: keep the panel
        elif job.is_terminal:
            self.end_attempt(
                image, job, status=ImageStatus.CANCELLED, error=reason,
                runpod_job_id="", finished_at=timezone.now(),
            )  # fmt: skip

    # --- paused (authors' tools, batches/authoring.py) --------------------------------------

    def paused_pass(self, open_images: list[ImageJob]) -> float | None:
        """A pass of a paused batch: jobs already on RunPod are followed to their end and
        stored (an attempt whose /run answer was lost is adopted or given up as usual), nothing
        new is submitted. With nothing in flight the task ends (None); resume enqueues the
        chunk again."""
        in_flight = authoring.in_flight(open_images)
        if not in_flight:
            return None
        self.submit_due(in_flight)  # only adopts: every image here is already submitted
        self.collect([image for image in in_flight if image.runpod_job_id])
        return max(0.02, min(MAX_WAIT_SECONDS, poll_interval()))

    # --- waiting -----------------------------------------------------------------------------

    def wait_time(self) -> float:
        if self.waiting_for_slot:
            return SLOT_RETRY_SECONDS
        now = timezone.now()
        due = [MAX_WAIT_SECONDS, poll_interval()]
        retry_times = self.images.filter(
            status__in=[ImageStatus.PENDING, ImageStatus.RETRYING], next_attempt_at__isnull=False
        ).values_list("next_attempt_at", flat=True)
        due += [(at - now).total_seconds() for at in retry_times if at is not None]
        if self.images.filter(status=ImageStatus.PENDING, next_attempt_at__isnull=True).exists():
            due.append(0)
        # Never spin: a pass costs a few queries.
        return max(0.02, min(due))


def charge_late_job(image_id: int, attempt: int, job_id: str) -> str:
    """Charge a job a webhook reported for an attempt that had ended charged nothing (its /run
    answer was lost and the job started only after the grace). RunPod's /status, not the
    webhook, says whether the job exists and how long it ran. Raises TransientRunPodError while
    the job is still running (the task retries)."""
    image = ImageJob.objects.filter(pk=image_id).first()
    if image is None or not budget_services.attempt_charged_nothing(image_id, attempt):
        return "nothing to charge"
    try:
        job = runpod_client().status(job_id)
    except JobNotFound:
        return "RunPod does not know this job"
    if not job.is_terminal:
        raise TransientRunPodError(f"job {job_id} is still {job.status}", ambiguous=False)
    billed_ms = billed_ms_of(job, image.params)
    cost = pricing.actual_cost(image.params, billed_ms)
    if budget_services.charge_late_job(image, attempt, job_id, cost, billed_ms):
        logger.warning("image %s attempt %s: charged late job %s (%s ms)", image_id, attempt,
                       job_id, billed_ms)  # fmt: skip
        return "charged"
    return "not charged"


def billed_ms_of(job: JobStatus, params: dict[str, Any], *, seen_running: bool = False) -> int:
    """The milliseconds a finished job is charged: its executionTime; when RunPod reported none
    (or an absurd one) for a job that may have run (its result vanished, its /run answer was
    lost), the most the attempt could have cost, so the ledger never shows less than RunPod
    bills. A job cancelled before it started reports none and ran nothing; one we saw running
    did run."""
    execution_ms = sane_execution_ms(job.execution_time_ms)
    if execution_ms is not None:
        return execution_ms
    if job.status == CANCELLED and not seen_running:
        return 0
    return pricing.attempt_max_billed_ms(params)


def sane_execution_ms(value: Any) -> int | None:
    """A RunPod millisecond figure we can trust to store and charge, or None: negative,
    non-integer or absurd values (over a day) are treated as not reported."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 <= value <= MAX_REPORTED_MS else None
