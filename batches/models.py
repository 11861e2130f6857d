"""Batches of panel prompts and the image jobs they are made of, and every move of their state.

Each status change is one method of `BatchQuerySet` or `ImageJobQuerySet` below: a conditional
UPDATE that names the state it moves from and returns whether this caller won. A webhook, a
poll, a cancel, a redelivered task and the sweeper may race for the same row; exactly one wins
each transition and the others change nothing. The chunk loop (chunks.py), the services and the
webhook only choose which transition to try. Money moves in budgets.services, never here.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection, models
from django.db.models import Count, Exists, F, OuterRef, Prefetch, Q
from django.db.models.fields.json import KeyTransform
from django.utils import timezone


class Priority(models.TextChoices):
    HIGH = "high", "High"
    NORMAL = "normal", "Normal"
    LOW = "low", "Low"


class BatchStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    # Nothing new is submitted; jobs already on RunPod finish and are stored (authoring.py).
    PAUSED = "paused", "Paused"
    COMPLETED = "completed", "Completed"
    PARTIAL = "partial", "Partial"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


class PageLayout(models.TextChoices):
    GRID = "grid", "2 x 2 grid"
    TIERS = "tiers", "Three tiers"
    TWO_ONE = "two_one", "2 + 1"
    SPLASH = "splash", "Splash (one per page)"


class ImageStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SUBMITTED = "submitted", "Submitted"
    RUNNING = "running", "Running"
    RETRYING = "retrying", "Retrying"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


BATCH_TERMINAL = (
    BatchStatus.COMPLETED,
    BatchStatus.PARTIAL,
    BatchStatus.FAILED,
    BatchStatus.CANCELLED,
)
IMAGE_TERMINAL = (ImageStatus.COMPLETED, ImageStatus.FAILED, ImageStatus.CANCELLED)
# Images that hold, or may hold, a RunPod job right now.
IMAGE_IN_FLIGHT = (ImageStatus.SUBMITTED, ImageStatus.RUNNING)
# Images waiting for their next attempt (with no RunPod job: see ImageJobQuerySet.waiting).
IMAGE_WAITING = (ImageStatus.PENDING, ImageStatus.RETRYING)


class BatchQuerySet(models.QuerySet["Batch"]):
    """Which batches a caller may see, how to load one, and the transitions of a batch."""

    # --- reading ----------------------------------------------------------------------------

    def visible_to(self, user: Any) -> BatchQuerySet:
        """A user's own batches; every batch for staff."""
        return self if user.is_staff else self.filter(user=user)

    def with_images(self) -> BatchQuerySet:
        """Batches with their images in panel order (and their last event number), in two
        queries."""
        images = ImageJob.objects.order_by("index")
        return self.select_related("event_seq").prefetch_related(
            Prefetch("images", queryset=images)
        )

    def open(self) -> BatchQuerySet:
        return self.exclude(status__in=BATCH_TERMINAL)

    # --- transitions ------------------------------------------------------------------------

    def start(self, batch_id: int) -> bool:
        """queued -> running, when its first chunk starts."""
        return bool(
            self.filter(pk=batch_id, status=BatchStatus.QUEUED).update(
                status=BatchStatus.RUNNING, started_at=timezone.now()
            )
        )

    def request_cancel(self, batch_id: int, reason: str) -> bool:
        """Mark an unfinished batch as being cancelled; its chunks stop what runs."""
        return bool(
            self.filter(pk=batch_id)
            .open()
            .update(cancel_requested_at=timezone.now(), cancel_reason=reason)
        )

    def claim_finish(self, batch_id: int, status: str) -> bool:
        """An unfinished batch whose images have all ended -> a terminal status. Only the
        caller that wins releases the batch's reservation and announces the end. The images
        are checked in the UPDATE itself: a redraw or retry that reopened an image after the
        caller looked must keep the batch open, or that image would never run."""
        unfinished = ImageJob.objects.filter(batch_id=OuterRef("pk")).unfinished()
        return bool(
            self.filter(pk=batch_id)
            .open()
            .filter(~Exists(unfinished))
            .update(status=status, finished_at=timezone.now())
        )

    def reopen(self, batch_id: int, from_status: str) -> bool:
        """A finished batch -> running again (the owner retries what failed). Conditional on
        the status the caller saw, so two retries do not both reserve. Call with the images
        it reopens already locked: image rows before the batch row, the order every writer
        takes them in (see services.retry_batch)."""
        return bool(
            self.filter(pk=batch_id, status=from_status).update(
                status=BatchStatus.RUNNING,
                finished_at=None,
                cancel_requested_at=None,
                cancel_reason="",
            )
        )

    def take_seqs(self, batch_id: int, count: int = 1) -> int | None:
        """Take the batch's next `count` event numbers; returns the last (None if the batch is
        gone). The statement locks the batch's BatchSeq row until the caller's transaction
        ends: events.py builds its events under that lock, so seq order is also the order of
        the state the events report. (Not the Batch row: the money paths lock that one for
        every pass, and events would wait for them.)"""
        table = BatchSeq._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} (batch_id, seq) "
                f"SELECT id, %s FROM {Batch._meta.db_table} WHERE id = %s "
                f"ON CONFLICT (batch_id) DO UPDATE SET seq = {table}.seq + EXCLUDED.seq "
                "RETURNING seq",
                [count, batch_id],
            )
            row = cursor.fetchone()
        return row[0] if row else None


class Batch(models.Model):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="batches"
    )
    title = models.CharField(max_length=200)
    status = models.CharField(
        max_length=16, choices=BatchStatus.choices, default=BatchStatus.QUEUED, db_index=True
    )
    priority = models.CharField(max_length=8, choices=Priority.choices, default=Priority.NORMAL)
    style = models.CharField(max_length=500, blank=True)
    negative_prompt = models.CharField(max_length=1000, blank=True)
    params = models.JSONField(default=dict, blank=True, help_text="Batch-wide generation params.")
    # What was reserved at submit: the expected cost plus the retry allowance.
    estimated_cost = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal("0"))
    # The estimate before the allowance, and what it was based on (budgets.estimates: measured
    # on the endpoint, or the catalogue), kept to hold against actual_cost once the batch ends.
    expected_cost = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal("0"))
    estimate_basis = models.JSONField(default=dict, blank=True)
    actual_cost = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal("0"))
    # What is still held on the owner's budget for this batch; released when it finishes.
    reserved = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal("0"))
    # The part of `reserved` covering attempts now running on RunPod, at their maximum cost.
    held = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal("0"))
    currency = models.CharField(max_length=3, default="USD")
    # The RunPod endpoint the batch was priced for and run on: what its panels took teaches the
    # estimates of that endpoint only (another GPU type is another endpoint).
    endpoint_id = models.CharField(max_length=100, blank=True, default="")
    # A replayed submit with the same key returns this batch; request_hash catches a changed body.
    idempotency_key = models.CharField(max_length=255, blank=True, default="")
    request_hash = models.CharField(max_length=64, blank=True, default="")
    # Images per chunk task, fixed at submit so a chunk number always means the same images.
    chunk_size = models.PositiveIntegerField(default=10)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    cancel_reason = models.CharField(max_length=300, blank=True)
    # Authors' tools: how the pages view and the export lay the chapter out (batches/pages.py),
    # and when the retention removed its panel files (batches/retention.py).
    page_layout = models.CharField(
        max_length=16, choices=PageLayout.choices, default=PageLayout.GRID
    )
    panels_expired_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = BatchQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "batches"
        constraints = [
            models.UniqueConstraint(
                fields=["user", "idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="batch_unique_idempotency_key_per_user",
            ),
        ]
        indexes = [models.Index(fields=["user", "-created_at"], name="batch_user_created_idx")]
        permissions = [("submit_high_priority", "Can submit high-priority batches")]

    def __str__(self) -> str:
        return f"#{self.pk} {self.title}"

    @property
    def is_terminal(self) -> bool:
        return self.status in BATCH_TERMINAL

    @property
    def seq(self) -> int:
        """The number of the batch's last pushed event (0 before the first); every event
        carries the next one (BatchSeq)."""
        try:
            return self.event_seq.seq
        except BatchSeq.DoesNotExist:
            return 0

    def status_counts(self) -> dict[str, int]:
        """Images by status, every status present, plus `total`."""
        return ImageJob.objects.filter(batch_id=self.pk).status_counts()


class BatchSeq(models.Model):
    """A batch's event counter, on a row of its own (created by its first event). Taking a seq
    locks this row for the event's transaction (BatchQuerySet.take_seqs); the money paths lock
    the Batch row on every pass, and on one shared row each event would wait for them."""

    batch = models.OneToOneField(
        Batch, on_delete=models.CASCADE, primary_key=True, related_name="event_seq"
    )
    seq = models.PositiveBigIntegerField(default=0)

    def __str__(self) -> str:
        return f"batch {self.batch_id} at seq {self.seq}"


_seeds = random.SystemRandom()


def new_seed() -> int:
    """A random seed for a panel: any of the 2**32 values a diffusers torch.Generator takes."""
    return _seeds.randrange(2**32)


def _update_returning_ids(sql: str, params: Sequence[Any]) -> list[int]:
    """Run an UPDATE ... RETURNING id and give the ids it changed: which rows this caller won."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [row[0] for row in cursor.fetchall()]


def _values_rows(rows: Sequence[Sequence[Any]], casts: Sequence[str]) -> tuple[str, list[Any]]:
    """A VALUES list for an UPDATE ... FROM, with typed placeholders, and its parameters."""
    row_sql = "(" + ", ".join(f"%s::{cast}" for cast in casts) + ")"
    return ", ".join([row_sql] * len(rows)), [value for row in rows for value in row]


@dataclass(frozen=True)
class AttemptEnding:
    """One attempt to end (ImageJobQuerySet.end_attempts): which, and the fields it writes."""

    image_id: int
    attempt: int
    job_id: str
    fields: dict[str, Any]


def _concrete_field(name: str) -> models.Field[Any, Any]:
    """An ImageJob column by its field name (a relation's reverse side is not one)."""
    field = ImageJob._meta.get_field(name)
    if not isinstance(field, models.Field):
        raise ValueError(f"{name} is not a column of ImageJob")
    return field


def _end_alike_attempts(names: tuple[str, ...], endings: list[AttemptEnding]) -> list[int]:
    """One conditional UPDATE for endings that write the same fields (end_attempt's conditions:
    the attempt, its job, not finished yet); the ids it changed."""
    columns = [_concrete_field(name) for name in names]
    casts = ["bigint", "integer", "varchar"]
    casts += [str(column.db_type(connection)) for column in columns]
    rows = [
        (ending.image_id, ending.attempt, ending.job_id)
        + tuple(
            column.get_db_prep_save(ending.fields[column.name], connection) for column in columns
        )
        for ending in endings
    ]
    values, params = _values_rows(rows, casts)
    names_sql = ", ".join(f'"{column.column}"' for column in columns)
    sets = ", ".join(f'"{column.column}" = v."{column.column}"' for column in columns)
    table = ImageJob._meta.db_table
    return _update_returning_ids(
        f"UPDATE {table} AS i SET hold = 0, {sets} "
        f"FROM (VALUES {values}) AS v(the_id, the_attempt, the_job, {names_sql}) "
        f"WHERE i.id = v.the_id AND i.attempts = v.the_attempt AND i.runpod_job_id = v.the_job "
        f"AND NOT (i.status = ANY(%s)) RETURNING i.id",
        [*params, list(IMAGE_TERMINAL)],
    )


class ImageJobQuerySet(models.QuerySet["ImageJob"]):
    """The images of a chunk or a batch, and every transition of an image's attempt.

    An attempt's life: claim (pending/retrying -> submitted, a hold taken) -> record its RunPod
    job id -> running -> ended (completed, retrying, failed or cancelled; charged once). An
    attempt whose /run answer was lost has no job id: a webhook may name the job
    (note_webhook_job), which is adopted once RunPod confirms it, or it is given up on.
    """

    # --- reading ----------------------------------------------------------------------------

    def of_chunk(self, batch_id: int, chunk_no: int, chunk_size: int) -> ImageJobQuerySet:
        first = chunk_no * chunk_size
        return self.filter(batch_id=batch_id, index__gte=first, index__lt=first + chunk_size)

    def unfinished(self) -> ImageJobQuerySet:
        return self.exclude(status__in=IMAGE_TERMINAL)

    def in_flight(self) -> ImageJobQuerySet:
        """Images that hold, or may hold, a RunPod job right now."""
        return self.filter(status__in=IMAGE_IN_FLIGHT)

    def waiting(self) -> ImageJobQuerySet:
        """Images waiting for an attempt, with no job on RunPod."""
        return self.filter(status__in=IMAGE_WAITING, runpod_job_id="")

    def status_counts(self) -> dict[str, int]:
        """These images by status, every status present, plus `total`."""
        rows = self.values("status").annotate(n=Count("id")).order_by()
        counts = dict.fromkeys(ImageStatus.values, 0)
        for row in rows:
            counts[row["status"]] = row["n"]
        counts["total"] = sum(counts.values())
        return counts

    # --- an attempt starts ------------------------------------------------------------------

    def claim_attempts(self, claims: Sequence[tuple[ImageJob, Decimal]]) -> list[int]:
        """Start a new attempt of each image with the hold given: waiting -> submitted, its
        attempt number one up. An image wins only if it is still as the caller loaded it (same
        status and attempt, no job), so two runners never both start an attempt. Returns the
        ids won. Call in the transaction that takes the holds from the budget."""
        if not claims:
            return []
        rows = [(image.pk, image.status, image.attempts, hold) for image, hold in claims]
        values, params = _values_rows(rows, ("bigint", "varchar", "integer", "numeric"))
        table = ImageJob._meta.db_table
        return _update_returning_ids(
            f"UPDATE {table} AS i SET status = %s, attempts = i.attempts + 1, hold = v.hold, "
            f"submitted_at = %s, next_attempt_at = NULL, webhook_job_id = '' "
            f"FROM (VALUES {values}) AS v(id, status, attempts, hold) "
            f"WHERE i.id = v.id AND i.status = v.status AND i.attempts = v.attempts "
            f"AND i.runpod_job_id = '' RETURNING i.id",
            [ImageStatus.SUBMITTED, timezone.now(), *params],
        )

    def record_jobs(self, jobs: Sequence[tuple[int, int, str]]) -> list[int]:
        """Write the RunPod job id /run returned for each (image id, attempt, job id), unless
        the attempt moved on meanwhile (its webhook was adopted first). Returns the ids set."""
        if not jobs:
            return []
        values, params = _values_rows(jobs, ("bigint", "integer", "varchar"))
        table = ImageJob._meta.db_table
        return _update_returning_ids(
            f"UPDATE {table} AS i SET runpod_job_id = v.job_id "
            f"FROM (VALUES {values}) AS v(id, attempts, job_id) "
            f"WHERE i.id = v.id AND i.attempts = v.attempts AND i.runpod_job_id = '' "
            f"RETURNING i.id",
            params,
        )

    def give_back_attempt(
        self, image_id: int, attempt: int, status: str, retry_at: datetime
    ) -> bool:
        """Undo a claim whose /run surely never reached RunPod (refused connection, 429): the
        attempt number is free again and the image waits until `retry_at`."""
        return bool(
            self.filter(
                pk=image_id, attempts=attempt, runpod_job_id="", status=ImageStatus.SUBMITTED
            ).update(
                status=status,
                attempts=F("attempts") - 1,
                hold=Decimal("0"),
                next_attempt_at=retry_at,
            )  # fmt: skip
        )

    # --- a job whose /run answer was lost ----------------------------------------------------

    def note_webhook_job(self, image_id: int, attempt: int, job_id: str) -> bool:
        """Keep the job a webhook named for an attempt with no job id. Not trusted yet."""
        return bool(
            self.filter(pk=image_id, attempts=attempt, runpod_job_id="", webhook_job_id="").update(
                webhook_job_id=job_id
            )
        )

    def forget_webhook_job(self, image_id: int, job_id: str) -> bool:
        """RunPod does not know the job a webhook named: it was never ours."""
        return bool(self.filter(pk=image_id, webhook_job_id=job_id).update(webhook_job_id=""))

    def adopt_job(self, image_id: int, attempt: int, job_id: str) -> bool:
        """Take on the job a webhook named (after RunPod's /status confirmed it) as the
        attempt's own."""
        return bool(
            self.filter(
                pk=image_id,
                status=ImageStatus.SUBMITTED,
                runpod_job_id="",
                attempts=attempt,
                webhook_job_id=job_id,
            ).update(runpod_job_id=job_id)  # fmt: skip
        )

    # --- an attempt runs and ends ------------------------------------------------------------

    def mark_running(self, jobs: Sequence[tuple[int, str]]) -> list[int]:
        """submitted -> running for each (image id, job id) whose job RunPod says started.
        Returns the ids changed."""
        if not jobs:
            return []
        values, params = _values_rows(jobs, ("bigint", "varchar"))
        table = ImageJob._meta.db_table
        return _update_returning_ids(
            f"UPDATE {table} AS i SET status = %s FROM (VALUES {values}) AS v(id, job_id) "
            f"WHERE i.id = v.id AND i.runpod_job_id = v.job_id AND i.status = %s "
            f"RETURNING i.id",
            [ImageStatus.RUNNING, *params, ImageStatus.SUBMITTED],
        )

    def end_attempt(self, image_id: int, attempt: int, job_id: str, **fields: Any) -> bool:
        """End the attempt running `job_id` (job_id "" for one whose job was never learned):
        the hold is cleared and `fields` (the outcome: status, error, image, ...) written.
        Exactly one of a webhook, a poll, a cancel or a redelivered task wins."""
        return bool(
            self.filter(pk=image_id, runpod_job_id=job_id, attempts=attempt)
            .unfinished()
            .update(hold=Decimal("0"), **fields)
        )

    def end_attempts(self, endings: Sequence[AttemptEnding]) -> set[int]:
        """end_attempt for many attempts at once; returns the ids of the images whose attempt
        this call ended. Endings that write the same fields share one UPDATE ... FROM VALUES
        (a pass's completed panels all do): a statement per image held the image rows locked,
        and the pass's transaction open, that many round trips longer. An ending with an
        expression among its fields (F("...") + 1) is written on its own."""
        ids = [ending.image_id for ending in endings]
        if len(set(ids)) != len(ids):
            # One row would be updated once and reported for both: both endings would count
            # as won, and which one's fields were written would be PostgreSQL's choice.
            raise ValueError("end_attempts: an image may end one attempt per call")
        won: set[int] = set()
        alike: dict[tuple[str, ...], list[AttemptEnding]] = {}
        for ending in endings:
            if any(hasattr(value, "resolve_expression") for value in ending.fields.values()):
                image_id, attempt, job_id = ending.image_id, ending.attempt, ending.job_id
                if self.end_attempt(image_id, attempt, job_id, **ending.fields):
                    won.add(image_id)
            else:
                alike.setdefault(tuple(sorted(ending.fields)), []).append(ending)
        for names, group in alike.items():
            won.update(_end_alike_attempts(names, group))
        return won

    def end_without_job(self, image_id: int, attempt: int, status: str, error: str) -> bool:
        """End an image that holds no RunPod job (refused, cancelled before it ran, no budget
        left)."""
        return bool(
            self.filter(pk=image_id, runpod_job_id="", attempts=attempt)
            .unfinished()
            .update(status=status, error=error, finished_at=timezone.now(), hold=Decimal("0"))
        )

    def cancel_waiting(self, batch_id: int, reason: str) -> list[int]:
        """Cancel every image of a batch waiting for an attempt (no job on RunPod); returns
        their ids. Images on RunPod are left to their chunk, which cancels the job there."""
        table = ImageJob._meta.db_table
        return _update_returning_ids(
            f"UPDATE {table} SET status = %s, error = %s, finished_at = %s, "
            f"next_attempt_at = NULL WHERE batch_id = %s AND status = ANY(%s) "
            f"AND runpod_job_id = '' RETURNING id",
            [ImageStatus.CANCELLED, reason, timezone.now(), batch_id, list(IMAGE_WAITING)],
        )

    def reopen_for_retry(self, image_ids: Iterable[int]) -> int:
        """failed/cancelled -> pending, for the owner's retry. Attempt numbers go on from where
        they were (each names one RunPod job, webhook URL and ledger charge); the attempt limit
        starts again from here."""
        return self.filter(
            pk__in=list(image_ids), status__in=[ImageStatus.FAILED, ImageStatus.CANCELLED]
        ).update(
            status=ImageStatus.PENDING,
            attempts_before_retry=F("attempts"),
            hold=Decimal("0"),
            error="",
            runpod_job_id="",
            next_attempt_at=None,
            finished_at=None,
        )

    def lock_rows(self) -> list[int]:
        """Lock these images' rows (SELECT ... FOR UPDATE, in id order, so two callers queue up
        rather than deadlock) and return their ids. Image rows come before the batch row in
        every writer's order: a pass's endings, a retry, a redraw, a delete, a prune. A row
        another transaction changed meanwhile is read as it is now."""
        return list(self.select_for_update().order_by("pk").values_list("pk", flat=True))

    def stamp_seqs(self, seqs: dict[int, int]) -> None:
        """Write each image's event number (the seq of its last pushed change)."""
        if not seqs:
            return
        values, params = _values_rows(list(seqs.items()), ("bigint", "bigint"))
        table = ImageJob._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {table} AS i SET seq = v.seq FROM (VALUES {values}) AS v(id, seq) "
                f"WHERE i.id = v.id",
                params,
            )


class ImageJob(models.Model):
    batch = models.ForeignKey(Batch, on_delete=models.CASCADE, related_name="images")
    index = models.PositiveIntegerField(help_text="Panel order within the batch, from 0.")
    prompt = models.TextField()
    seed = models.BigIntegerField()
    params = models.JSONField(default=dict, help_text="Effective params: batch params + overrides.")
    status = models.CharField(
        max_length=16, choices=ImageStatus.choices, default=ImageStatus.PENDING, db_index=True
    )
    # Every RunPod attempt ever made for this panel. Never reset: each attempt has its own
    # webhook URL and its own ledger charge, so a number is never reused.
    attempts = models.PositiveSmallIntegerField(default=0)
    # `attempts` when the owner last asked for a retry: each retry grants a fresh
    # COMICGEN_MAX_ATTEMPTS on top of what was already spent.
    attempts_before_retry = models.PositiveSmallIntegerField(default=0)
    error = models.TextField(blank=True)
    runpod_job_id = models.CharField(max_length=100, blank=True, db_index=True)
    # A job a webhook reported for the current attempt while its id was unknown (the /run answer
    # was lost). Not trusted as it is: the chunk adopts it once RunPod's /status confirms it.
    webhook_job_id = models.CharField(max_length=100, blank=True, default="")
    # The RunPod endpoint that renders this panel, chosen from its model at submit
    # (budgets.pricing.endpoint_for) and kept: its retries go where its first attempt went, and
    # its timings teach that endpoint's estimates only. Empty on rows older than the field: those
    # ran on RUNPOD_ENDPOINT_ID.
    endpoint_id = models.CharField(max_length=100, blank=True, default="")
    image = models.ImageField(upload_to="panels/%Y/%m/%d/", blank=True, max_length=300)
    cost = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal("0"))
    # Budget held for the attempt now on RunPod: its maximum cost (see budgets.pricing).
    hold = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal("0"))
    delay_ms = models.PositiveIntegerField(null=True, blank=True)
    # Authors' tools (authoring.py): the number of the take this row holds or is drawing (takes
    # before it are ImageVersion rows), and the take the ZIP and the export use (null: the
    # latest completed one).
    version = models.PositiveIntegerField(default=1)
    selected_version = models.PositiveIntegerField(null=True, blank=True)
    execution_ms = models.PositiveIntegerField(null=True, blank=True)
    # When a retrying image may be submitted again (exponential backoff with jitter).
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    # The batch seq of this image's last pushed change, so a client can drop stale updates.
    seq = models.PositiveBigIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    submitted_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ImageJobQuerySet.as_manager()

    class Meta:
        ordering = ["batch", "index"]
        constraints = [
            models.UniqueConstraint(
                fields=["batch", "index"], name="imagejob_unique_index_per_batch"
            )
        ]
        indexes = [
            models.Index(fields=["batch", "status"], name="imagejob_batch_status_idx"),
            # The estimates read a model's most recently finished panels (budgets.estimates):
            # newest first, per model, without scanning every panel ever made.
            models.Index(
                KeyTransform("model", "params"),
                F("finished_at").desc(),
                condition=Q(status__in=["completed", "failed"]),
                name="imagejob_model_finished_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"batch {self.batch_id} panel {self.index + 1}"

    @property
    def is_terminal(self) -> bool:
        return self.status in IMAGE_TERMINAL

    @property
    def attempts_this_round(self) -> int:
        """Attempts since the owner's last retry (or since submit), for the attempt limit."""
        return self.attempts - self.attempts_before_retry

    @property
    def panel_number(self) -> int:
        return self.index + 1

    @property
    def filename(self) -> str:
        """Name inside the batch ZIP: panels sort in order."""
        return f"panel-{self.index + 1:03d}.png"

    def runpod_input(self, batch: Batch) -> dict[str, Any]:
        """The worker-sdxl input for this image: the batch style joins the panel prompt."""
        prompt = f"{self.prompt}, {batch.style}" if batch.style else self.prompt
        return {
            "prompt": prompt,
            "negative_prompt": batch.negative_prompt,
            "width": self.params["width"],
            "height": self.params["height"],
            "num_inference_steps": self.params["steps"],
            "guidance_scale": self.params["guidance"],
            "seed": self.seed,
            "num_images": 1,
            # Not part of worker-sdxl's input (it ignores unknown keys); comicgen's own handler
            # refuses a model it does not serve, so a misrouted panel fails instead of being
            # drawn, and billed, by the wrong model.
            "model": self.params["model"],
        }


class ImageVersion(models.Model):
    """A completed take of a panel that a redraw replaced (authoring.py). The current take is
    the ImageJob itself; these are the ones before it, kept so the author can pick one back."""

    image = models.ForeignKey(ImageJob, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    prompt = models.TextField()
    seed = models.BigIntegerField()
    params = models.JSONField(default=dict)
    file = models.ImageField(upload_to="panels/%Y/%m/%d/", blank=True, max_length=300)
    # What the attempts that drew this take cost (ImageJob.cost keeps the sum of every take).
    cost = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal("0"))
    # The take's last attempt: its attempts are those after the previous take's last one (a
    # failed take is never kept, so its attempts count in the next take drawn). The books check
    # holds each take's cost against those attempts' ledger charges. Null for takes kept before
    # it was recorded.
    last_attempt = models.PositiveIntegerField(null=True, blank=True)
    execution_ms = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["image", "version"]
        constraints = [
            models.UniqueConstraint(
                fields=["image", "version"], name="imageversion_unique_version_per_image"
            )
        ]

    def __str__(self) -> str:
        return f"{self.image} take {self.version}"
