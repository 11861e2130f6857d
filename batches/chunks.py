"""The chunk engine: submit a chunk's images to RunPod, follow them, store what they make.

One task owns a chunk at a time (a lease in Redis). Each pass of its loop:
1. reads the chunk's unfinished images (one query, with the batch's cancel flag);
2. stops what runs if the batch is being cancelled;
3. starts an attempt for every image that is due and has an in-flight slot: the holds and the
   claims of all of them in one transaction, then one /run each, then every job id in one
   UPDATE;
4. collects results (webhooks first, /status for jobs not heard from lately) and writes every
   attempt that ended in one transaction: the image rows, the ledger rows in one insert, one
   Batch and one Budget update with the sums, one bundle of events;
5. sleeps until a webhook wakes it or the next poll or retry is due, from what it already read.

Every transition is a method of models.ImageJobQuerySet that says whether it won, so a
redelivered task, a sweeper resuming the chunk, a webhook and a poll racing each other all
agree on one outcome. A job id is written right after /run returns it: a resumed chunk polls
the known job instead of resubmitting.
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import redis
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import InterfaceError, OperationalError, transaction
from django.db.models import F
from django.utils import timezone

from batches import events, flow, limiter, outputs, panels, webhooks
from batches.models import (
    IMAGE_IN_FLIGHT,
    IMAGE_TERMINAL,
    AttemptEnding,
    Batch,
    BatchStatus,
    ImageJob,
    ImageStatus,
    new_seed,
)
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
# A chunk stopping to cancel looks again this often.
SLOT_RETRY_SECONDS = 0.1
# A chunk refused a slot is woken when one frees for it (batches.limiter); it also looks again
# after this long, in case the wake-up was lost.
SLOT_WAIT_SECONDS = 0.5
# How long a chunk sleeps at most between passes (also bounds how late it sees a cancel).
MAX_WAIT_SECONDS = 2.0
# A database or Redis that went away is not a bad answer from RunPod: the task fails and is
# retried (its jobs' results wait at RunPod), rather than failing an attempt that may have
# produced a good panel and generating it again.
LOST_SERVICES = (OperationalError, InterfaceError, redis.ConnectionError, redis.TimeoutError)
# No RunPod job runs for a day (its executionTimeout is at most RUNPOD_EXECUTION_TIMEOUT_MS):
# a larger delayTime or executionTime is garbage, not a figure to store or charge.
MAX_REPORTED_MS = 24 * 3600 * 1000


def runpod_client(endpoint_id: str) -> RunPodClient:
    """One pooled client per worker thread and endpoint. Each panel names its endpoint
    (ImageJob.endpoint_id, its model's); an empty one, on panels from before endpoints were per
    model, is RUNPOD_ENDPOINT_ID."""
    endpoint_id = endpoint_id or settings.RUNPOD_ENDPOINT_ID
    clients: dict[str, RunPodClient] = _clients.__dict__.setdefault("by_endpoint", {})
    client = clients.get(endpoint_id)
    if client is None:
        client = clients[endpoint_id] = RunPodClient.from_settings(endpoint_id=endpoint_id)
    return client


@dataclass(frozen=True)
class RunRequest:
    """One /run call: the job's input, its webhook and its execution timeout."""

    endpoint_id: str
    payload: dict[str, Any]
    webhook: str | None
    execution_timeout_ms: int


# A pass sends its /run calls at once, at most this many per worker process at a time: RunPod
# answers each in tens to hundreds of milliseconds, so ten images one after another would hold
# the pass (and the slots already granted) that many times as long.
RUN_CALLS_AT_ONCE = 32
_run_calls: ThreadPoolExecutor | None = None
_run_calls_lock = threading.Lock()


RunAnswer = JobStatus | TransientRunPodError | PermanentRunPodError


def call_run(request: RunRequest) -> RunAnswer:
    """Send one /run; RunPod's answer, or the RunPod error it ended in (returned, not raised, so
    a pass can send many at once and act on each answer in its own thread)."""
    try:
        return runpod_client(request.endpoint_id).run(
            request.payload,
            webhook=request.webhook,
            execution_timeout_ms=request.execution_timeout_ms,
            ttl_ms=settings.RUNPOD_TTL_MS,
        )
    except (TransientRunPodError, PermanentRunPodError) as error:
        return error


def call_run_all(requests: list[RunRequest]) -> list[RunAnswer]:
    """Send every /run of a pass at once (one alone in the caller's thread), in order. The
    calls touch no database: the caller writes what they answered, in its own thread, with its
    own connection."""
    global _run_calls
    if len(requests) < 2:
        return [call_run(request) for request in requests]
    with _run_calls_lock:
        if _run_calls is None:
            _run_calls = ThreadPoolExecutor(RUN_CALLS_AT_ONCE, thread_name_prefix="runpod-run")
    return list(_run_calls.map(call_run, requests))


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
    """Run one chunk of a batch to the end (the caller finalizes the batch). Safe to run
    twice: a second task finds the lease taken (and leaves) or the images terminal (and
    finishes at once)."""
    lease = flow.ChunkLease(batch_id, chunk_no, owner=uuid.uuid4().hex)
    if not lease.acquire():
        # This task was what the chunk's "queued" marker stood for, and it leaves now: a marker
        # left behind would hide the chunk from the sweeper should the running task die (a
        # resume or a redraw enqueues chunks whose task may still be running).
        flow.get_redis().delete(lease.queued_key)
        logger.info("batch %s chunk %s is already being run", batch_id, chunk_no)
        return {"chunk": chunk_no, "skipped": "owned by another task"}
    try:
        run = ChunkRun(batch_id, chunk_no, lease)
        summary = run.run()
    finally:
        lease.release()
    if summary.get("handed_over"):
        flow.send_chunk_again(batch_id, chunk_no, run.priority)
    return summary


class NoRoomForAll(Exception):
    """The budget cannot hold every attempt a pass claimed: the claims are rolled back."""


@dataclass
class Ending:
    """How one attempt ended, written with the rest of its pass (ChunkRun.write_endings).

    `fields` is the image's outcome (status, error, file, next attempt time...); the charge is
    what billed_ms_of says for `job`. `stored` names a panel file saved for it, deleted again
    if another runner ended the attempt first."""

    image: ImageJob
    job: JobStatus
    fields: dict[str, Any]
    stored: str = ""


@dataclass
class ChunkRun:
    batch_id: int
    chunk_no: int
    lease: flow.ChunkLease
    last_checked: dict[str, float] = field(default_factory=dict)
    call_failures: int = 0
    waiting_for_slot: bool = False
    # Endpoints this task was refused a slot at: its waiter is taken out of line there when the
    # task ends (limiter.forget_waiter).
    waited_at: set[str] = field(default_factory=set)
    # The last pass found no job of this chunk at RunPod and started none (refused a slot).
    idle: bool = False
    # Jobs this task already asked RunPod to cancel: later passes only ask their /status.
    cancel_sent: set[str] = field(default_factory=set)
    # The status each image this task claimed an attempt for had before: a /run that surely
    # never reached RunPod gives the attempt back and the image returns to it.
    claimed_from: dict[int, str] = field(default_factory=dict)
    # What the current pass learned: images that reached a terminal status, retry times set,
    # images whose change is to be announced.
    finished: set[int] = field(default_factory=set)
    retry_times: list[datetime] = field(default_factory=list)
    changed: list[int] = field(default_factory=list)

    def run(self) -> dict[str, Any]:
        batch = Batch.objects.filter(pk=self.batch_id).first()
        if batch is None:  # deleted (by staff) while its tasks waited
            return {"chunk": self.chunk_no, "skipped": "batch deleted"}
        if batch.is_terminal:
            return {"chunk": self.chunk_no, "skipped": batch.status}
        if Batch.objects.start(self.batch_id):
            events.push_batch_updated(self.batch_id)
        self.load(batch)
        try:
            return self.loop()
        finally:
            self.leave_the_line()

    def loop(self) -> dict[str, Any]:
        while True:
            if not self.lease.renew():
                logger.warning("batch %s chunk %s lost its lease", self.batch_id, self.chunk_no)
                return {"chunk": self.chunk_no, "stopped": "lease lost"}
            wait = self.run_pass()
            if wait is None:
                break
            if self.idle and flow.thread_wanted(self.priority, self.chunk_no):
                # Nothing of this chunk is at RunPod and no slot is free for it: its worker
                # thread serves better waiting for another batch's first chunk (which would
                # otherwise wait for one of this batch's chunks to end). The chunk is queued
                # again; process_chunk sends it once the lease is released.
                flow.mark_chunks_queued(self.batch_id, [self.chunk_no])
                return {"chunk": self.chunk_no, "handed_over": True}
            webhooks.wait_for_wake(self.batch_id, self.chunk_no, wait)
        return {"chunk": self.chunk_no, "done": True}

    def leave_the_line(self) -> None:
        """The task ends: its waiter stops holding slots back for it at once, rather than for
        the seconds until it expires. A failure here only delays others by that much."""
        if not self.waited_at:
            return
        try:
            limiter.forget_waiter(self.waiter, self.priority, self.waited_at)
        except Exception as error:  # Redis down: the waiter expires by itself
            logger.info("batch %s chunk %s: could not leave the slot line (%s)", self.batch_id,
                        self.chunk_no, error)  # fmt: skip

    def load(self, batch: Batch) -> None:
        self.batch = batch
        self.priority = batch.priority
        # Refused a slot, the chunk sleeps on its wake list; the limiter pushes to it when a
        # slot frees for this chunk.
        self.waiter = webhooks.wake_key(self.batch_id, self.chunk_no)
        self.images = ImageJob.objects.of_chunk(self.batch_id, self.chunk_no, batch.chunk_size)

    def run_pass(self) -> float | None:
        """One pass of the loop. Returns how long to wait before the next, or None when every
        image of the chunk has finished."""
        open_images = list(
            self.images.unfinished().annotate(
                cancelling=F("batch__cancel_requested_at"), batch_status=F("batch__status")
            )
        )
        if not open_images:
            return None
        self.finished, self.retry_times, self.changed = set(), [], []
        # An attempt whose /run answer was lost may hold a running job: it keeps its slot.
        limiter.refresh_slots(
            [image.pk for image in open_images if image.status in IMAGE_IN_FLIGHT]
        )
        if getattr(open_images[0], "cancelling", None) is not None:
            self.cancel(open_images)
            self.announce()
            return SLOT_RETRY_SECONDS
        if getattr(open_images[0], "batch_status", None) == BatchStatus.PAUSED:
            return self.paused_pass(open_images)
        started = self.submit_due(open_images)
        self.idle = (
            self.waiting_for_slot
            and not started
            and not any(
                image.runpod_job_id or image.status in IMAGE_IN_FLIGHT for image in open_images
            )
        )
        self.collect([image for image in open_images if image.runpod_job_id])
        self.announce()
        if self.finished >= {image.pk for image in open_images}:
            # The last image just ended: finish now (the caller finalizes the batch), not after
            # another wait, so a batch is done the moment its last panel is.
            return None
        return self.wait_time(open_images)

    def announce(self) -> None:
        """One event bundle for every image this pass changed."""
        events.push_images_updated(self.batch_id, self.changed)
        self.changed = []

    # --- starting attempts -------------------------------------------------------------------

    def submit_due(self, images: list[ImageJob]) -> int:
        """Start an attempt for every image that is due, as long as the limiter grants slots
        (one request per endpoint the due images run on, in the chunk's order). Returns how many
        were started."""
        self.waiting_for_slot = False
        now = timezone.now()
        ready = []
        for image in images:
            if image.runpod_job_id:
                continue
            if image.status == ImageStatus.SUBMITTED:
                self.adopt_or_resubmit(image)
            elif image.next_attempt_at is None or image.next_attempt_at <= now:
                ready.append(image)
            else:
                self.retry_times.append(image.next_attempt_at)
        due: list[ImageJob] = []
        by_endpoint = itertools.groupby(
            ready, key=lambda image: image.endpoint_id or limiter.default_endpoint()
        )
        for endpoint, group in by_endpoint:
            wanted = list(group)
            granted = limiter.acquire_slots(
                endpoint, [image.pk for image in wanted], self.priority, self.batch.user_id,
                self.waiter,
            )  # fmt: skip
            due += wanted[:granted]
            if granted < len(wanted):
                self.waiting_for_slot = True
                self.waited_at.add(endpoint)
                break
        if due:
            self.start_attempts(due)
        return len(due)

    def start_attempts(self, images: list[ImageJob]) -> None:
        """Claim the images and hold each attempt's maximum cost, in one transaction (a worker
        lost between them leaves neither behind), then call /run for each and record every job
        id at once."""
        claims = [(image, pricing.attempt_max_cost(image.params)) for image in images]
        closed = False
        try:
            claims, won = self.claim_and_hold(claims)
        except budget_services.BatchClosed:
            # Cancelled or finished meanwhile: the next pass sees it.
            claims, won, closed = [], set(), True
        limiter.release_slots(image.pk for image in images if image.pk not in won)
        if not closed and len(claims) < len(images):
            self.out_of_budget(images[len(claims) :])
        submitted = []
        for image, hold in claims:
            if image.pk not in won:
                continue
            self.claimed_from[image.pk] = image.status
            image.attempts += 1
            image.hold = hold
            image.status = ImageStatus.SUBMITTED
            image.submitted_at = timezone.now()
            submitted.append(image)
        answers = call_run_all([self.run_request(image) for image in submitted])
        # The backoff grows with each pass none of whose calls went through, and starts again
        # once one did: a pass's ten calls refused together (RunPod's rate limit answering
        # 429) are one refusal, not ten in a row, and while some calls go through the refused
        # ones come back after RunPod's Retry-After rather than a backoff growing every pass.
        if any(isinstance(answer, JobStatus) for answer in answers):
            self.call_failures = 0
        elif any(isinstance(answer, TransientRunPodError) for answer in answers):
            self.call_failures += 1
        started = []
        for image, answer in zip(submitted, answers, strict=True):
            job_id = self.answered(image, answer)
            if job_id:
                started.append((image, job_id))
        self.record_jobs(started)

    def claim_and_hold(
        self, claims: list[tuple[ImageJob, Decimal]]
    ) -> tuple[list[tuple[ImageJob, Decimal]], set[int]]:
        """Claim the images, then hold the budget for the attempts won: the claims that were
        held, and the ids won. Image rows before the batch row, the order every writer takes
        them in; and the batch row, which every pass of the batch needs, is locked only by the
        last statement before COMMIT. When the reservation has no room for them all, the
        attempts the budget allows are held one by one, then claimed."""
        try:
            with transaction.atomic():
                won = set(ImageJob.objects.claim_attempts(claims))
                total = sum((hold for image, hold in claims if image.pk in won), Decimal(0))
                if won and not budget_services.hold_for_attempt(self.batch_id, total):
                    raise NoRoomForAll
                return claims, won
        except NoRoomForAll:
            pass
        with transaction.atomic():
            claims = self.hold_for(claims)
            won = set(ImageJob.objects.claim_attempts(claims))
            lost = sum((hold for image, hold in claims if image.pk not in won), Decimal(0))
            if lost:  # another runner, or a cancel, moved those images first
                budget_services.release_hold(self.batch_id, lost)
        return claims, won

    def hold_for(self, claims: list[tuple[ImageJob, Decimal]]) -> list[tuple[ImageJob, Decimal]]:
        """Hold the budget for as many of the claims as fit, in order: all at once when the
        reservation has room (the common case, one UPDATE), else one by one (each may extend
        the reservation from the budget). With nothing held and nothing running, the rest of
        the chunk cannot run and is cancelled."""
        total = sum((hold for _, hold in claims), Decimal(0))
        if budget_services.hold_for_attempt(self.batch_id, total):
            return claims
        held = []
        for image, hold in claims:
            if not budget_services.hold_for_attempt(self.batch_id, hold):
                break
            held.append((image, hold))
        return held

    def run_request(self, image: ImageJob) -> RunRequest:
        """What /run is sent for a claimed attempt."""
        return RunRequest(
            endpoint_id=image.endpoint_id,
            payload=image.runpod_input(self.batch),
            webhook=webhooks.webhook_url(self.batch_id, self.chunk_no, image.pk, image.attempts),
            execution_timeout_ms=pricing.attempt_timeout_ms(image.params),
        )

    def answered(self, image: ImageJob, answer: RunAnswer) -> str | None:
        """Act on /run's answer for a claimed attempt: its job id, or None when there is none
        to record (the call failed: retried later, or the image failed)."""
        if isinstance(answer, TransientRunPodError):
            self.run_call_failed(image, answer)
            return None
        if isinstance(answer, PermanentRunPodError):
            # RunPod refused the request outright (4xx): no job exists, nothing is billed.
            limiter.release_slots([image.pk])
            self.end_without_job(image, ImageStatus.FAILED, f"RunPod refused the job: {answer}")
            return None
        return answer.id

    def record_jobs(self, started: list[tuple[ImageJob, str]]) -> None:
        """Write the job ids /run returned. Until then they exist only in this thread's
        memory: a dropped database connection gets one reconnect before they are lost (and
        left to their webhooks)."""
        if not started:
            return
        rows = [(image.pk, image.attempts, job_id) for image, job_id in started]
        recorded = set(retry_once_on_a_lost_connection(lambda: ImageJob.objects.record_jobs(rows)))
        now = time.monotonic()
        for image, job_id in started:
            # An attempt not recorded moved on meanwhile (its webhook was adopted first).
            if image.pk in recorded:
                image.runpod_job_id = job_id
                self.last_checked[job_id] = now
                self.changed.append(image.pk)

    def run_call_failed(self, image: ImageJob, error: TransientRunPodError) -> None:
        """A transient /run failure retries the call, not the image. When the call surely never
        reached RunPod (refused connection, 429), the attempt is given back with its hold. When
        it may have (timeout, 5xx, dropped connection), a paid job may exist: the attempt stays
        submitted, holding its slot and budget, until its webhook lets us adopt the job."""
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
        retry_at = timezone.now() + timedelta(seconds=delay)
        previous = self.claimed_from.get(image.pk, ImageStatus.PENDING)
        with transaction.atomic():
            if ImageJob.objects.give_back_attempt(image.pk, image.attempts, previous, retry_at):
                budget_services.release_hold(self.batch_id, image.hold)
                self.retry_times.append(retry_at)
        limiter.release_slots([image.pk])
        logger.info("image %s: /run failed (%s), again in %.1fs", image.pk, error, delay)

    def out_of_budget(self, images: list[ImageJob]) -> None:
        """No room left for another attempt. While other attempts run, their holds may come
        back; with none running, the rest of the chunk cannot run."""
        limiter.release_slots(image.pk for image in images)
        if self.images.in_flight().exists():
            self.waiting_for_slot = True
            return
        reason = "Cancelled: the monthly budget has no room left for this image."
        for waiting in self.images.waiting():
            self.end_without_job(waiting, ImageStatus.CANCELLED, reason)

    # --- a job whose /run answer was lost ----------------------------------------------------

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
            status = runpod_client(image.endpoint_id).status(job_id)
        except JobNotFound:
            logger.warning("image %s: webhook named job %s, which RunPod does not know", image.pk,
                           job_id)  # fmt: skip
            ImageJob.objects.forget_webhook_job(image.pk, job_id)
            return
        except TransientRunPodError as error:
            logger.info("image %s: /status of job %s failed (%s); next pass", image.pk, job_id,
                        error)  # fmt: skip
            return
        if not ImageJob.objects.adopt_job(image.pk, image.attempts, job_id):
            return
        logger.info("image %s: adopted job %s after a lost /run answer", image.pk, job_id)
        image.runpod_job_id = job_id
        self.last_checked[job_id] = time.monotonic()
        self.changed.append(image.pk)
        self.follow({image.pk: (image, status, None)})

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
        fields = {
            "status": ImageStatus.RETRYING, "error": reason, "next_attempt_at": timezone.now(),
            "attempts_before_retry": F("attempts_before_retry") + 1,
        }  # fmt: skip
        if self.write_endings([Ending(image, job, fields)]):
            logger.warning("image %s attempt %s: %s", image.pk, image.attempts, reason)

    # --- collecting --------------------------------------------------------------------------

    def collect(self, in_flight: list[ImageJob]) -> None:
        """Take the webhook results that arrived and poll the jobs not heard from lately, then
        follow every answer."""
        if not in_flight:
            return
        by_job = {image.runpod_job_id: image for image in in_flight}
        results = webhooks.take_results(list(by_job))
        interval = poll_interval()
        now = time.monotonic()
        answers: dict[int, tuple[ImageJob, JobStatus | None, Any]] = {}
        for job_id, image in by_job.items():
            payload = results.get(job_id)
            if payload is None and now - self.last_checked.get(job_id, 0) < interval:
                continue
            status: JobStatus | None = None
            try:
                status = JobStatus.from_json(payload) if payload is not None else self.poll(image)
            except LOST_SERVICES:
                raise
            except Exception as error:
                self.unusable_answer(image, job_id, None, payload, error)
                continue
            if status is not None:
                answers[image.pk] = (image, status, payload)
        self.follow(answers)

    def follow(self, answers: dict[int, tuple[ImageJob, JobStatus | None, Any]]) -> None:
        """Act on RunPod's answers: jobs that started are marked running in one UPDATE; jobs
        that ended become endings, written together."""
        started: list[tuple[int, str]] = []
        endings: list[Ending] = []
        for image, job, payload in answers.values():
            if job is None or job.id != image.runpod_job_id:
                continue
            try:
                if not job.is_terminal:
                    if job.status == IN_PROGRESS and image.status == ImageStatus.SUBMITTED:
                        started.append((image.pk, job.id))
                    continue
                self.last_checked.pop(job.id, None)
                endings.append(self.ending_of(image, job))
            except LOST_SERVICES:
                raise
            except Exception as error:
                self.unusable_answer(image, job.id, job, payload, error)
        self.changed += ImageJob.objects.mark_running(started)
        self.write_endings(endings)

    def ending_of(self, image: ImageJob, job: JobStatus) -> Ending:
        """The ending a finished job makes: a stored panel, or a failed attempt (retried after a
        backoff, or given up) charged what it ran."""
        if job.status == COMPLETED:
            try:
                png = outputs.png_from_output(job.output)
            except outputs.BadOutput as error:
                ending = self.failed_attempt(
                    image, job, f"RunPod returned no usable image: {error}"
                )
                if isinstance(error, outputs.BlankImage) and "next_attempt_at" in ending.fields:
                    # The same seed would draw the same refused image: the retry gets a new one.
                    ending.fields["seed"] = new_seed()
                return ending
            # An unguessable name: panel files are private (served by batches.panels).
            name = default_storage.save(panels.panel_storage_name(), ContentFile(png))
            fields = {"status": ImageStatus.COMPLETED, "image": name, "error": "",
                      "finished_at": timezone.now()}  # fmt: skip
            return Ending(image, job, fields, stored=name)
        return self.failed_attempt(image, job, job.error or f"RunPod job ended {job.status}")

    def failed_attempt(self, image: ImageJob, job: JobStatus, reason: str) -> Ending:
        """Retry after a backoff, or give up once the attempt limit is reached."""
        now = timezone.now()
        if image.attempts_this_round >= settings.COMICGEN_MAX_ATTEMPTS:
            reason = f"{reason} (gave up after {image.attempts_this_round} attempts)"
            outcome = {"status": ImageStatus.FAILED, "finished_at": now}
        else:
            delay = timedelta(seconds=retry_delay(image.attempts_this_round))
            outcome = {"status": ImageStatus.RETRYING, "next_attempt_at": now + delay}
        # PostgreSQL refuses a NUL in text, and a reason may quote what RunPod sent.
        error = reason.replace("\x00", "")[:2000]
        return Ending(image, job, {"runpod_job_id": "", "error": error, **outcome})

    def poll(self, image: ImageJob) -> JobStatus | None:
        """The job's /status, or None when there is nothing to follow this pass."""
        job_id = image.runpod_job_id
        self.last_checked[job_id] = time.monotonic()
        try:
            return runpod_client(image.endpoint_id).status(job_id)
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
        (the most it could have, when the answer says nothing usable). One odd answer must not
        stop the chunk: the other images go on."""
        logger.error("image %s job %s: could not handle RunPod's answer (%s: %s)", image.pk,
                     job_id, type(error).__name__, error)  # fmt: skip
        if status is not None:
            execution_ms = sane_execution_ms(status.execution_time_ms)
        elif isinstance(payload, dict):
            execution_ms = sane_execution_ms(payload.get("executionTime"))
        else:
            execution_ms = None
        job = JobStatus(job_id, "FAILED", None, None, None, execution_ms)
        reason = f"RunPod's answer could not be used ({type(error).__name__}: {error})"
        try:
            self.write_endings([self.failed_attempt(image, job, reason[:500])])
        except Exception:
            # Even recording the failure failed (the database, most likely): the next pass, or
            # the sweeper's resumed chunk, tries this image again.
            logger.exception("image %s: could not record its failed attempt", image.pk)

    def lost(self, image: ImageJob, reason: str) -> None:
        """The job vanished before we saw its end (its result expired, or RunPod purged it): it
        may have run, and nothing tells how long, so the attempt is charged at its maximum and
        the image retried within the attempt limit."""
        job = JobStatus(image.runpod_job_id, "LOST")
        self.write_endings([self.failed_attempt(image, job, reason)])

    # --- writing what ended ------------------------------------------------------------------

    def write_endings(self, endings: list[Ending]) -> list[Ending]:
        """End these attempts and charge what they ran, in one transaction: a conditional UPDATE
        per image (ImageJobQuerySet.end_attempts, one statement for endings alike; exactly one
        of a webhook, a poll, a cancel or a redelivered task wins each), then
        budgets.charge_attempts for the winners with the sums. Returns the winners.
        Each charge is what billed_ms_of says at the GPU price."""
        if not endings:
            return []
        # Image rows, then the batch row (charge_attempts), then the budget's: the order every
        # writer of an attempt's end takes them in (a redraw locks its image before its batch).
        # The batch row is locked only for the last statements of the pass, not all of it.
        with transaction.atomic():
            ended = ImageJob.objects.end_attempts(
                [
                    AttemptEnding(
                        ending.image.pk,
                        ending.image.attempts,
                        ending.job.id,
                        {
                            "delay_ms": sane_execution_ms(ending.job.delay_time_ms),
                            "execution_ms": sane_execution_ms(ending.job.execution_time_ms),
                            **ending.fields,
                        },
                    )
                    for ending in endings
                ]
            )
            won = [ending for ending in endings if ending.image.pk in ended]
            budget_services.charge_attempts(self.batch_id, [charge_of(e) for e in won])
        limiter.release_slots(ending.image.pk for ending in endings)
        for ending in endings:
            if ending.stored and ending not in won:
                default_storage.delete(ending.stored)
        for ending in won:
            self.changed.append(ending.image.pk)
            status = ending.fields.get("status")
            if status in IMAGE_TERMINAL:
                self.finished.add(ending.image.pk)
            next_attempt_at = ending.fields.get("next_attempt_at")
            if isinstance(next_attempt_at, datetime):
                self.retry_times.append(next_attempt_at)
            if status != ImageStatus.COMPLETED:
                logger.info(
                    "image %s attempt %s ended %s: %s", ending.image.pk, ending.image.attempts,
                    status, ending.fields.get("error", ""),
                )  # fmt: skip
        return won

    def end_without_job(self, image: ImageJob, status: str, error: str) -> None:
        """End an image that holds no RunPod job (refused, cancelled before it ran)."""
        with transaction.atomic():
            won = ImageJob.objects.end_without_job(image.pk, image.attempts, status, error)
            if won and image.hold:
                budget_services.release_hold(self.batch_id, image.hold)
        if won:
            self.changed.append(image.pk)
            self.finished.add(image.pk)

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
                self.end_without_job(image, ImageStatus.CANCELLED, reason)
                continue
            try:
                self.cancel_job(image, reason)
            except LOST_SERVICES:
                raise
            except Exception as error:
                self.unusable_answer(image, image.runpod_job_id, None, None, error)

    def cancel_job(self, image: ImageJob, reason: str) -> None:
        job_id = image.runpod_job_id
        try:
            if job_id not in self.cancel_sent:
                try:
                    runpod_client(image.endpoint_id).cancel(job_id)
                except PermanentRunPodError as error:
                    # Refused (it may have ended first): what it ran is in its /status anyway.
                    if isinstance(error, JobNotFound):
                        raise
                    logger.info("image %s: /cancel refused (%s); asking /status", image.pk, error)
                self.cancel_sent.add(job_id)
            job = runpod_client(image.endpoint_id).status(job_id)
        except JobNotFound:
            self.lost(image, reason)
            return
        except TransientRunPodError as error:
            logger.info("image %s: /cancel failed (%s); next pass", image.pk, error)
            return
        if job.status == COMPLETED:
            self.follow({image.pk: (image, job, None)})  # it finished first: keep the panel
        elif job.is_terminal:
            fields = {"status": ImageStatus.CANCELLED, "error": reason, "runpod_job_id": "",
                      "finished_at": timezone.now()}  # fmt: skip
            self.write_endings([Ending(image, job, fields)])

    # --- paused ------------------------------------------------------------------------------

    def paused_pass(self, open_images: list[ImageJob]) -> float | None:
        """A pass of a paused batch (batches.authoring): jobs already on RunPod are followed to
        their end and stored (an attempt whose /run answer was lost is adopted or given up as
        usual), nothing new is submitted. With nothing in flight the task ends (None); resume
        enqueues the chunk again."""
        in_flight = [image for image in open_images if image.status in IMAGE_IN_FLIGHT]
        if not in_flight:
            return None
        self.submit_due(in_flight)  # only adopts: every image here is already submitted
        self.collect([image for image in in_flight if image.runpod_job_id])
        self.announce()
        return max(0.02, min(MAX_WAIT_SECONDS, poll_interval()))

    # --- waiting -----------------------------------------------------------------------------

    def wait_time(self, images: list[ImageJob]) -> float:
        """How long to sleep, from what this pass read and wrote: until the next retry is due,
        the next poll, or at most MAX_WAIT_SECONDS (a webhook or a cancel wakes it sooner)."""
        if self.waiting_for_slot:
            return SLOT_WAIT_SECONDS
        now = timezone.now()
        due = [MAX_WAIT_SECONDS, poll_interval()]
        due += [(at - now).total_seconds() for at in self.retry_times]
        # Never spin: a pass costs a query or two.
        return max(0.02, min(due))


def charge_of(ending: Ending) -> budget_services.Charge:
    """What an ended attempt is charged (billed_ms_of at the GPU price), freeing its hold."""
    image, job = ending.image, ending.job
    seen_running = image.status == ImageStatus.RUNNING
    billed_ms = billed_ms_of(job, image.params, seen_running=seen_running)
    worst_case = sane_execution_ms(job.execution_time_ms) is None and billed_ms > 0
    return budget_services.Charge(
        image_id=image.pk,
        attempt=image.attempts,
        cost=pricing.actual_cost(image.params, billed_ms),
        hold=image.hold,
        job_id=job.id,
        billed_ms=billed_ms,
        note="worst case: RunPod reported no executionTime" if worst_case else "",
    )


def charge_late_job(image_id: int, attempt: int, job_id: str) -> str:
    """Charge a job a webhook reported for an attempt that had ended charged nothing (its /run
    answer was lost and the job started only after the grace). RunPod's /status, not the
    webhook, says whether the job exists and how long it ran. Raises TransientRunPodError while
    the job is still running (the task retries)."""
    image = ImageJob.objects.filter(pk=image_id).first()
    if image is None or not budget_services.attempt_charged_nothing(image_id, attempt):
        return "nothing to charge"
    try:
        job = runpod_client(image.endpoint_id).status(job_id)
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
