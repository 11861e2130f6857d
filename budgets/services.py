"""Budget workflows: reserve at submit, hold each attempt's maximum cost, charge what RunPod
billed exactly once, release what is left.

Money moves only through conditional UPDATEs inside transactions, and the Budget table's CHECK
constraint refuses any row where spent + reserved exceeds the limit, so no interleaving of
requests and workers can overspend.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone

from batches.models import BATCH_TERMINAL, Batch, BatchStatus, ImageJob, ImageVersion
from budgets import pricing
from budgets.models import Budget, LedgerEntry, month_start, next_month_start

logger = logging.getLogger(__name__)
ZERO = Decimal("0")


@dataclass
class BudgetExceeded(Exception):
    estimated_cost: Decimal
    remaining: Decimal
    currency: str

    def __str__(self) -> str:
        return (
            f"This batch is estimated at {self.estimated_cost:.4f} {self.currency} but only "
            f"{self.remaining:.4f} {self.currency} remains of your monthly budget."
        )


def get_budget(user: Any) -> Budget:
    """The user's budget, created with the default limit on first use and rolled into the
    current month when its period has ended."""
    budget, _ = Budget.objects.get_or_create(
        user=user, defaults={"currency": settings.COMICGEN_CURRENCY}
    )
    today = timezone.now().date()
    if budget.period_end <= today:
        start_new_period(budget, today)
        budget.refresh_from_db()
    return budget


def start_new_period(budget: Budget, today: Any = None) -> bool:
    """Begin a new month: spent goes back to zero, holds of running batches stay reserved.
    Claimed with a conditional UPDATE so two callers cannot both reset it."""
    today = today or timezone.now().date()
    with transaction.atomic():
        reset = Budget.objects.filter(pk=budget.pk, period_end=budget.period_end).update(
            spent=ZERO, period_start=month_start(today), period_end=next_month_start(today)
        )
        if reset:
            LedgerEntry.objects.create(
                budget=budget,
                kind=LedgerEntry.Kind.PERIOD_RESET,
                amount=budget.spent,
                note=f"new period from {month_start(today)}; {budget.spent} spent before",
            )
    return bool(reset)


def _take_from_budget(budget_id: int, amount: Decimal) -> bool:
    """Move `amount` from remaining to reserved if it fits; False when it does not."""
    return bool(
        Budget.objects.filter(pk=budget_id, spent__lte=F("limit") - F("reserved") - amount).update(
            reserved=F("reserved") + amount
        )
    )


def reserve_for_batch(
    batch: Batch, amount: Decimal, *, images: int | None = None, created_reserved: bool = False
) -> None:
    """Reserve a batch's estimate (call inside the transaction that creates the batch).
    Raises BudgetExceeded, leaving nothing reserved, when it does not fit. `images`, the
    number of panels the estimate is for, names them in the ledger note (counted when not
    given). `created_reserved`: the batch row was inserted with `reserved=amount` in this
    transaction, so only the budget moves. A submit knows both, and saves two statements."""
    budget = get_budget(batch.user)
    if not _take_from_budget(budget.pk, amount):
        budget.refresh_from_db()
        raise BudgetExceeded(amount, max(budget.remaining, ZERO), budget.currency)
    if not created_reserved:
        Batch.objects.filter(pk=batch.pk).update(reserved=F("reserved") + amount)
        batch.reserved += amount
    if images is None:
        images = batch.images.count()
    LedgerEntry.objects.create(
        budget=budget,
        batch=batch,
        kind=LedgerEntry.Kind.RESERVE,
        amount=amount,
        note=f"estimate for {images or 'new'} images",
    )


class BatchClosed(Exception):
    """The batch finished or is being cancelled: no new attempt may hold money for it."""


class BatchPaused(BatchClosed):
    """The author paused the batch: no new attempt starts until it is resumed."""


# An extension of a batch's reservation (hold_for_attempt) also makes room for this many more
# holds of the same size, when the budget allows.
EXTEND_AHEAD = 4


def hold_for_attempt(batch_id: int, max_cost: Decimal) -> bool:
    """Set aside an attempt's maximum cost within the batch's reservation, extending the
    reservation from the budget when the estimate is used up. False when the budget has no
    room left for it (the caller then waits for running attempts, or stops). Raises BatchClosed
    for a batch that finished or is being cancelled: finalize releases a batch's reservation
    once, so a hold taken after it would stay reserved for ever."""
    # The common case, the reservation has room: one conditional UPDATE, no lock held.
    open_batch = Batch.objects.filter(pk=batch_id, cancel_requested_at__isnull=True).exclude(
        status__in=BATCH_TERMINAL
    )
    open_batch = open_batch.exclude(status=BatchStatus.PAUSED)  # authors' tools: pause
    if open_batch.filter(held__lte=F("reserved") - max_cost).update(held=F("held") + max_cost):
        return True
    with transaction.atomic():
        batch = (
            Batch.objects.select_for_update()
            .only("reserved", "held", "user_id", "status", "cancel_requested_at")
            .get(pk=batch_id)
        )
        if batch.status in BATCH_TERMINAL or batch.cancel_requested_at is not None:
            raise BatchClosed(f"batch {batch_id} is {batch.status}")
        if batch.status == BatchStatus.PAUSED:  # authors' tools: pause
            raise BatchPaused(f"batch {batch_id} is paused")
        extension = max_cost - (batch.reserved - batch.held)
        if extension > ZERO:
            note = "reservation extended for a retry or a long attempt"
            # An attempt holds its timeout's cost, often many times what the estimate reserved
            # for it, so while a batch fills its in-flight slots every pass would extend the
            # reservation here, each time locking the batch and budget rows every other pass
            # of the batch waits on. Room for the next few passes is taken with it when the
            # budget has that much; finalize gives back whatever was not spent.
            ahead = extension + max_cost * EXTEND_AHEAD
            if not _extend_reservation(batch, ahead, note) and not _extend_reservation(
                batch, extension, note
            ):
                return False
        Batch.objects.filter(pk=batch_id).update(held=F("held") + max_cost)
    return True


def _extend_reservation(batch: Batch, amount: Decimal, note: str) -> bool:
    """Move `amount` from the budget's remaining into a batch's reservation, with its ledger
    row; False when it does not fit. Call with the batch row locked (select_for_update)."""
    budget = Budget.objects.only("id").get(user_id=batch.user_id)
    if not _take_from_budget(budget.pk, amount):
        return False
    Batch.objects.filter(pk=batch.pk).update(reserved=F("reserved") + amount)
    LedgerEntry.objects.create(
        budget=budget, batch_id=batch.pk, kind=LedgerEntry.Kind.RESERVE, amount=amount, note=note
    )
    return True


def release_hold(batch_id: int, max_cost: Decimal) -> None:
    """An attempt ended without a bill (its /run call failed): free its hold for the batch.
    Nothing to do once the batch has finished: finalize released every hold with the rest."""
    Batch.objects.filter(pk=batch_id, held__gte=max_cost).exclude(status__in=BATCH_TERMINAL).update(
        held=F("held") - max_cost
    )


def billable_cost(image: ImageJob, execution_ms: int) -> Decimal:
    """What an attempt costs: its executionTime at the GPU price. Never capped at the hold: the
    ledger must never show less than RunPod bills (charge_attempt covers an overrun)."""
    return pricing.actual_cost(image.params, execution_ms)


def _cover_overrun(batch_id: int, extra: Decimal) -> bool:
    """Make room in a batch's reservation for `extra` beyond an attempt's hold (RunPod billed a
    little past the executionTimeout), extending it from the budget when needed. Batch row is
    locked before Budget row, the order every money path here uses."""
    batch = Batch.objects.select_for_update().only("reserved", "held", "user_id").get(pk=batch_id)
    shortfall = extra - (batch.reserved - batch.held)
    if shortfall <= ZERO:
        return True
    note = "reservation extended: RunPod billed an attempt past its timeout"
    return _extend_reservation(batch, shortfall, note)


@dataclass(frozen=True)
class Charge:
    """What one ended attempt is charged: `cost` for `billed_ms` of RunPod `job_id` ("" when its
    id was never learned), freeing the `hold` the attempt took."""

    image_id: int
    attempt: int
    cost: Decimal
    hold: Decimal
    job_id: str = ""
    billed_ms: int | None = None
    note: str = ""


def charge_attempts(batch_id: int, charges: list[Charge]) -> list[Charge]:
    """Charge what RunPod billed for ended attempts of one batch, each once: the ledger rows in
    one insert, then the images' costs, and one update each of the batch (cost up, reserved and
    held down) and of the budget (spent up, reserved down) with the sums. Returns the charges
    made.

    Call inside the transaction that records the attempts' outcomes and clears their holds. The
    ledger's unique keys (one charge per image attempt, one per RunPod job) make a charge for an
    attempt or job already charged (a redelivered task, a webhook and a poll racing) insert
    nothing: it is left out of the sums and of the result. A cost above its hold (RunPod ran past
    the timeout) is charged in full when the budget has room for the difference; only when it
    has none is it held to the hold, and that is logged as an error, since the limit may never
    be passed either."""
    if not charges:
        return []
    charges = [_within_budget(batch_id, charge) for charge in charges]
    budget_id = Budget.objects.filter(user__batches__id=batch_id).values_list("id", flat=True).get()
    charged_keys = _insert_charges(budget_id, batch_id, charges)
    charged = [charge for charge in charges if (charge.image_id, charge.attempt) in charged_keys]
    for charge in charges:
        if (charge.image_id, charge.attempt) not in charged_keys:
            logger.info("image %s attempt %s (job %s) already charged", charge.image_id,
                        charge.attempt, charge.job_id or "-")  # fmt: skip
    # A charge refused as a repeat changes nothing, its hold included: the first charge of
    # that attempt already freed it.
    held = sum((charge.hold for charge in charged), ZERO)
    cost = sum((charge.cost for charge in charged), ZERO)
    if not charged:
        return []
    _add_image_costs(charged)
    Batch.objects.filter(pk=batch_id).update(
        reserved=F("reserved") - cost, held=F("held") - held, actual_cost=F("actual_cost") + cost
    )
    # Batch row before Budget row, the order hold_for_attempt and release_batch lock them in:
    # the opposite order deadlocks against a concurrent hold (PostgreSQL aborts one of them).
    Budget.objects.filter(pk=budget_id).update(
        spent=F("spent") + cost, reserved=F("reserved") - cost
    )
    return charged


def _add_image_costs(charges: list[Charge]) -> None:
    """Add each charge to its image's cost, in one UPDATE ... FROM VALUES. Plain SQL: built
    through the ORM (a CASE with one WHEN per image), this statement cost the worker more CPU
    than the rest of the pass's writes."""
    table = ImageJob._meta.db_table
    # One row per image: an UPDATE ... FROM applies only one of two rows naming the same one.
    costs: dict[int, Decimal] = {}
    for charge in charges:
        costs[charge.image_id] = costs.get(charge.image_id, ZERO) + charge.cost
    rows = ", ".join(["(%s::bigint, %s::numeric)"] * len(costs))
    params = [value for image_id, cost in costs.items() for value in (image_id, cost)]
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} AS image SET cost = image.cost + charge.cost "
            f"FROM (VALUES {rows}) AS charge (id, cost) WHERE image.id = charge.id",
            params,
        )


def _within_budget(batch_id: int, charge: Charge) -> Charge:
    """The charge itself when it fits its hold or the budget has room for the overrun; else
    the charge held to its hold (see charge_attempts)."""
    if charge.cost <= charge.hold:
        return charge
    with transaction.atomic():
        covered = _cover_overrun(batch_id, charge.cost - charge.hold)
    if covered:
        return charge
    logger.error(
        "image %s attempt %s job %s: RunPod billed %s, over its hold %s, and the budget has no "
        "room for the difference; charged the hold",
        charge.image_id, charge.attempt, charge.job_id or "-", charge.cost, charge.hold,
    )  # fmt: skip
    return replace(charge, cost=charge.hold)


def _insert_charges(budget_id: int, batch_id: int, charges: list[Charge]) -> set[tuple[int, int]]:
    """Insert the charges' ledger rows in one statement; a row a unique key refuses (already
    charged) is skipped. Returns the (image id, attempt) of the rows inserted."""
    table = LedgerEntry._meta.db_table
    now = timezone.now()
    row = "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    params: list[Any] = []
    for charge in charges:
        params += [
            budget_id, LedgerEntry.Kind.CHARGE, charge.cost, batch_id, charge.image_id,
            charge.attempt, charge.job_id, charge.billed_ms, charge.note[:300], now,
        ]  # fmt: skip
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (budget_id, kind, amount, batch_id, image_id, attempt, "
            f"runpod_job_id, billed_ms, note, created_at) VALUES "
            f"{', '.join([row] * len(charges))} "
            f"ON CONFLICT DO NOTHING RETURNING image_id, attempt",
            params,
        )
        return {(image_id, attempt) for image_id, attempt in cursor.fetchall()}


def charge_attempt(
    image: ImageJob,
    attempt: int,
    cost: Decimal,
    hold: Decimal,
    *,
    job_id: str = "",
    billed_ms: int | None = None,
    note: str = "",
) -> bool:
    """Charge one attempt (charge_attempts for one); False when it was charged already."""
    charge = Charge(image.pk, attempt, cost, hold, job_id, billed_ms, note)
    return bool(charge_attempts(image.batch_id, [charge]))


def attempt_charged_nothing(image_id: int, attempt: int) -> bool:
    """True when an attempt ended charged nothing because its job was never confirmed (its
    /run answer was lost and no webhook came within the grace)."""
    return LedgerEntry.objects.filter(
        image_id=image_id, attempt=attempt, kind=LedgerEntry.Kind.CHARGE, runpod_job_id="",
        billed_ms=0,
    ).exists()  # fmt: skip


def charge_late_job(
    image: ImageJob, attempt: int, job_id: str, cost: Decimal, billed_ms: int
) -> bool:
    """Charge a job that reported after its attempt had ended charged nothing (a lost /run
    answer whose job RunPod started only after the grace). The attempt's zero charge becomes
    this job's charge, reserved and spent at once from what the budget has left. False when it
    was charged already, or when the budget has no room left: then the limit wins, and the
    miss is logged as an error, since the ledger shows less than RunPod bills."""
    try:
        with transaction.atomic():
            batch = Batch.objects.select_for_update().only("user_id").get(pk=image.batch_id)
            note = f"charged late: job {job_id} reported after its attempt ended"
            amended = LedgerEntry.objects.filter(
                image_id=image.pk, attempt=attempt, kind=LedgerEntry.Kind.CHARGE,
                runpod_job_id="", billed_ms=0,
            ).update(amount=cost, runpod_job_id=job_id, billed_ms=billed_ms, note=note)  # fmt: skip
            if not amended:
                return False
            budget = Budget.objects.only("id").get(user_id=batch.user_id)
            if not Budget.objects.filter(
                pk=budget.pk, spent__lte=F("limit") - F("reserved") - cost
            ).update(spent=F("spent") + cost):
                transaction.set_rollback(True)
                logger.error(
                    "image %s attempt %s: RunPod billed late job %s (%s) but the budget has no "
                    "room left for it", image.pk, attempt, job_id, cost,
                )  # fmt: skip
                return False
            # Reserved and charged in one step: the ledger keeps reserve - release - charge
            # equal to what the batch still reserves.
            LedgerEntry.objects.create(
                budget=budget, batch_id=image.batch_id, kind=LedgerEntry.Kind.RESERVE,
                amount=cost, note=f"reserved to charge late job {job_id}",
            )  # fmt: skip
            ImageJob.objects.filter(pk=image.pk).update(cost=F("cost") + cost)
            # The attempt may belong to a take a redraw has kept since: that take cost this too.
            take = (
                ImageVersion.objects.filter(image_id=image.pk, last_attempt__gte=attempt)
                .order_by("last_attempt")
                .values_list("pk", flat=True)
                .first()
            )
            if take is not None:
                ImageVersion.objects.filter(pk=take).update(cost=F("cost") + cost)
            Batch.objects.filter(pk=image.batch_id).update(actual_cost=F("actual_cost") + cost)
    except IntegrityError:  # that job is charged on another row already
        return False
    return True


def release_batch(batch: Batch, note: str) -> Decimal:
    """Give back everything still reserved for a batch with nothing running (finalize, cancel)."""
    with transaction.atomic():
        locked = (
            Batch.objects.select_for_update().only("reserved", "held", "user_id").get(pk=batch.pk)
        )
        amount = locked.reserved
        if amount <= ZERO:
            return ZERO
        budget = Budget.objects.only("id").get(user_id=locked.user_id)
        Budget.objects.filter(pk=budget.pk).update(reserved=F("reserved") - amount)
        Batch.objects.filter(pk=batch.pk).update(reserved=ZERO, held=ZERO)
        LedgerEntry.objects.create(
            budget=budget, batch=batch, kind=LedgerEntry.Kind.RELEASE, amount=amount, note=note
        )
    return amount


def set_limit(budget: Budget, new_limit: Decimal, note: str = "") -> None:
    """Change a limit (staff). Refuses a limit below what is already spent and reserved."""
    with transaction.atomic():
        updated = Budget.objects.filter(pk=budget.pk, spent__lte=new_limit - F("reserved")).update(
            limit=new_limit
        )
        if not updated:
            raise ValueError("The new limit is below what is already spent and reserved.")
        LedgerEntry.objects.create(
            budget=budget,
            kind=LedgerEntry.Kind.LIMIT_CHANGE,
            amount=new_limit,
            note=note or f"limit set to {new_limit}",
        )
