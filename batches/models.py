"""Batches of panel prompts and the image jobs they are made of.

A model guards its own row: status transitions are methods that refuse an illegal move.
Workflows touching several rows, money or RunPod live in services.py.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection, models
from django.db.models import Count, F, Q
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
    # Monotonic per-batch event counter; every pushed event carries the next value.
    seq = models.PositiveBigIntegerField(default=0)
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

    @classmethod
    def take_seq(cls, batch_id: int) -> int | None:
        """Take the batch's next event number (None if the batch is gone). The UPDATE locks the
        batch row until the caller's transaction ends: events.py builds an event under that
        lock, so seq order is also the order of the state the events report."""
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {cls._meta.db_table} SET seq = seq + 1 WHERE id = %s RETURNING seq",
                [batch_id],
            )
            row = cursor.fetchone()
        return row[0] if row else None

    def status_counts(self) -> dict[str, int]:
        """Images by status, every status present, plus `total`."""
        rows = self.images.values("status").annotate(n=Count("id")).order_by()
        counts = dict.fromkeys(ImageStatus.values, 0)
        for row in rows:
            counts[row["status"]] = row["n"]
        counts["total"] = sum(counts.values())
        return counts


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
