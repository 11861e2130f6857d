"""Monthly budgets and the ledger of every reservation, charge and release.

The database itself refuses an overspend: a CHECK constraint keeps spent + reserved within the
limit, whatever runs concurrently; services.py moves money with conditional UPDATEs.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils import timezone


def month_start(day: dt.date) -> dt.date:
    return day.replace(day=1)


def next_month_start(day: dt.date) -> dt.date:
    first = day.replace(day=1)
    return (first + dt.timedelta(days=32)).replace(day=1)


def _today() -> dt.date:
    return timezone.now().date()


def _period_start() -> dt.date:
    return month_start(_today())


def _period_end() -> dt.date:
    return next_month_start(_today())


def _default_limit() -> Decimal:
    return settings.COMICGEN_DEFAULT_MONTHLY_BUDGET


class Budget(models.Model):
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="budget"
    )
    limit = models.DecimalField(max_digits=12, decimal_places=6, default=_default_limit)
    spent = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal("0"))
    reserved = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal("0"))
    currency = models.CharField(max_length=3, default="USD")
    period_start = models.DateField(default=_period_start)
    period_end = models.DateField(default=_period_end, help_text="First day of the next period.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(spent__gte=0) & Q(reserved__gte=0),
                name="budget_amounts_not_negative",
            ),
            models.CheckConstraint(
                condition=Q(spent__lte=F("limit") - F("reserved")),
                name="budget_never_overspent",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user} budget"

    @property
    def remaining(self) -> Decimal:
        return self.limit - self.spent - self.reserved


class LedgerEntry(models.Model):
    class Kind(models.TextChoices):
        RESERVE = "reserve", "Reserve"
        CHARGE = "charge", "Charge"
        RELEASE = "release", "Release"
        PERIOD_RESET = "period_reset", "Period reset"
        LIMIT_CHANGE = "limit_change", "Limit change"

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="entries")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    amount = models.DecimalField(max_digits=12, decimal_places=6)
    batch = models.ForeignKey(
        "batches.Batch", null=True, blank=True, on_delete=models.SET_NULL, related_name="ledger"
    )
    image = models.ForeignKey(
        "batches.ImageJob", null=True, blank=True, on_delete=models.SET_NULL, related_name="ledger"
    )
    attempt = models.PositiveSmallIntegerField(null=True, blank=True)
    # For a charge: the RunPod job it pays for ("" when the job's id was never learned, e.g. a
    # /run whose answer was lost) and the execution milliseconds charged, so the ledger can be
    # held against RunPod's bill job by job.
    runpod_job_id = models.CharField(max_length=100, blank=True, default="")
    billed_ms = models.PositiveBigIntegerField(null=True, blank=True)
    note = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "ledger entries"
        constraints = [
            # The last line of defence against double charging: one charge per image attempt.
            models.UniqueConstraint(
                fields=["image", "attempt"],
                condition=Q(kind="charge"),
                name="ledger_one_charge_per_attempt",
            ),
            # ... and one per RunPod job, whichever attempt a late webhook claims it for.
            models.UniqueConstraint(
                fields=["runpod_job_id"],
                condition=Q(kind="charge") & ~Q(runpod_job_id=""),
                name="ledger_one_charge_per_runpod_job",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount} {self.budget.currency}"
