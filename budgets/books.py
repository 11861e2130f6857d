"""The books check: proof that every figure about money agrees with every other.

What must hold, at any moment when no money transaction is half-way:
- each image's `cost` is the sum of its ledger charges;
- a redrawn panel's takes split that cost: each kept take (ImageVersion) costs what its own
  attempts were charged, and the current take, the rest of `cost`, what the later ones were;
- each batch's `actual_cost` is the sum of its images' costs and of its ledger charges;
- each batch's `reserved` is what its ledger reserved, less what it released and charged;
  `held` is the sum of its images' holds, holds exist only on attempts in flight, and a
  finished batch holds and reserves nothing;
- each budget's `spent` is the sum of its charges since its period began, its `reserved` the
  sum of its batches' reservations, and spent + reserved never passes the limit.

`python manage.py check_books` runs it for operators; the fault tests end with it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from decimal import Decimal

from django.db.models import Max, Q, QuerySet, Sum

from batches.models import BATCH_TERMINAL, IMAGE_IN_FLIGHT, Batch, ImageJob, ImageVersion
from budgets.models import Budget, LedgerEntry

ZERO = Decimal("0")
Kind = LedgerEntry.Kind


def _sums(rows: Iterable[dict[str, object]], key: str) -> dict[object, Decimal]:
    return {row[key]: row["total"] or ZERO for row in rows}  # type: ignore[misc]


def _check_takes(image_costs: dict[int, Decimal], charges: QuerySet[LedgerEntry]) -> list[str]:
    """The takes of redrawn panels (`image_costs`: image id -> its cost) against the ledger:
    each kept take's cost is the charges of its attempts (after the previous take's last one,
    up to its own), and the current take, whose cost is what the kept ones leave of the
    image's, is the charges of the attempts after the last kept one."""
    problems: list[str] = []
    if not image_costs:
        return problems
    by_attempt: dict[int, list[tuple[int, Decimal]]] = defaultdict(list)
    for row in (
        charges.filter(image_id__in=list(image_costs))
        .values("image_id", "attempt")
        .annotate(total=Sum("amount"))
    ):
        by_attempt[row["image_id"]].append((row["attempt"] or 0, row["total"] or ZERO))
    takes: dict[int, list[tuple[int, int | None, Decimal]]] = defaultdict(list)
    for image_id, version, last_attempt, cost in (
        ImageVersion.objects.filter(image_id__in=list(image_costs))
        .order_by("image_id", "version")
        .values_list("image_id", "version", "last_attempt", "cost")
    ):
        takes[image_id].append((version, last_attempt, cost))

    def charged(image_id: int, after: int, up_to: int | None) -> Decimal:
        return sum(
            (total for attempt, total in by_attempt[image_id]
             if attempt > after and (up_to is None or attempt <= up_to)),
            ZERO,
        )  # fmt: skip

    for image_id, image_cost in image_costs.items():
        kept = takes[image_id]
        kept_cost = sum((cost for _, _, cost in kept), ZERO)
        if any(last_attempt is None for _, last_attempt, _ in kept):
            # Takes kept before their attempts were recorded: only their sum can be checked.
            if kept_cost > image_cost or any(cost < ZERO for _, _, cost in kept):
                problems.append(
                    f"image {image_id}: its kept takes cost {kept_cost}, more than the image's "
                    f"cost {image_cost}, or one costs less than nothing"
                )
            continue
        after = 0
        for version, last_attempt, cost in kept:
            expected = charged(image_id, after, last_attempt)
            if cost != expected:
                problems.append(
                    f"image {image_id} take {version}: cost {cost} but the ledger charged its "
                    f"attempts {after + 1}-{last_attempt} {expected}"
                )
            after = last_attempt or after
        current, expected = image_cost - kept_cost, charged(image_id, after, None)
        if current != expected:
            problems.append(
                f"image {image_id} current take: costs {current} (the image's {image_cost} less "
                f"its kept takes' {kept_cost}) but the ledger charged its attempts after "
                f"{after} {expected}"
            )
    return problems


def check_books(user_ids: Iterable[int] | None = None) -> list[str]:
    """Every disagreement found, as sentences naming the rows; an empty list when the books
    balance. `user_ids` limits the check to those users' budgets and batches."""
    budgets = Budget.objects.all()
    batches = Batch.objects.all()
    images = ImageJob.objects.all()
    ledger = LedgerEntry.objects.all()
    if user_ids is not None:
        user_ids = list(user_ids)
        budgets = budgets.filter(user_id__in=user_ids)
        batches = batches.filter(user_id__in=user_ids)
        images = images.filter(batch__user_id__in=user_ids)
        ledger = ledger.filter(budget__user_id__in=user_ids)
    problems: list[str] = []
    charges = ledger.filter(kind=Kind.CHARGE)

    # Images: cost = their charges; holds only while in flight.
    charged_by_image = _sums(
        charges.filter(image__isnull=False).values("image_id").annotate(total=Sum("amount")),
        "image_id",
    )
    cost_by_batch: dict[int, Decimal] = defaultdict(lambda: ZERO)
    hold_by_batch: dict[int, Decimal] = defaultdict(lambda: ZERO)
    redrawn_costs: dict[int, Decimal] = {}
    for image_id, batch_id, status, cost, hold, version in images.values_list(
        "pk", "batch_id", "status", "cost", "hold", "version"
    ).iterator():
        charged = charged_by_image.get(image_id, ZERO)
        if cost != charged:
            problems.append(f"image {image_id}: cost {cost} but its ledger charges are {charged}")
        if hold and status not in IMAGE_IN_FLIGHT:
            problems.append(f"image {image_id}: holds {hold} while {status}")
        if version > 1:
            redrawn_costs[image_id] = cost
        cost_by_batch[batch_id] += cost
        hold_by_batch[batch_id] += hold
    problems += _check_takes(redrawn_costs, charges)

    # Batches: actual cost, reservation and holds against images and ledger.
    by_batch: dict[int, dict[str, Decimal]] = defaultdict(lambda: defaultdict(lambda: ZERO))
    for row in (
        ledger.filter(batch__isnull=False).values("batch_id", "kind").annotate(total=Sum("amount"))
    ):
        by_batch[row["batch_id"]][row["kind"]] = row["total"] or ZERO
    reserved_by_user: dict[int, Decimal] = defaultdict(lambda: ZERO)
    for batch in batches.only("pk", "user_id", "status", "actual_cost", "reserved", "held"):
        kinds = by_batch[batch.pk]
        name = f"batch {batch.pk}"
        if batch.actual_cost != cost_by_batch[batch.pk]:
            problems.append(
                f"{name}: actual_cost {batch.actual_cost} but its images cost "
                f"{cost_by_batch[batch.pk]}"
            )
        if batch.actual_cost != kinds[Kind.CHARGE]:
            problems.append(
                f"{name}: actual_cost {batch.actual_cost} but the ledger charged "
                f"{kinds[Kind.CHARGE]}"
            )
        open_in_ledger = kinds[Kind.RESERVE] - kinds[Kind.RELEASE] - kinds[Kind.CHARGE]
        if batch.reserved != open_in_ledger:
            problems.append(
                f"{name}: reserved {batch.reserved} but the ledger leaves {open_in_ledger} "
                f"reserved (reserve {kinds[Kind.RESERVE]} - release {kinds[Kind.RELEASE]} - "
                f"charge {kinds[Kind.CHARGE]})"
            )
        if batch.held != hold_by_batch[batch.pk]:
            problems.append(
                f"{name}: held {batch.held} but its images hold {hold_by_batch[batch.pk]}"
            )
        if batch.held > batch.reserved:
            problems.append(f"{name}: holds {batch.held}, more than it reserved {batch.reserved}")
        if batch.status in BATCH_TERMINAL and (batch.reserved or batch.held):
            problems.append(
                f"{name}: {batch.status} but still reserves {batch.reserved} (holds {batch.held})"
            )
        reserved_by_user[batch.user_id] += batch.reserved

    # Budgets: spent since the period began; reserved = the batches' reservations.
    last_reset = dict(
        ledger.filter(kind=Kind.PERIOD_RESET)
        .values("budget_id")
        .annotate(last=Max("pk"))
        .values_list("budget_id", "last")
    )
    for budget in budgets:
        since = Q(budget=budget, kind=Kind.CHARGE)
        if budget.pk in last_reset:
            since &= Q(pk__gt=last_reset[budget.pk])
        charged = ledger.filter(since).aggregate(total=Sum("amount"))["total"] or ZERO
        name = f"budget of user {budget.user_id}"
        if budget.spent != charged:
            problems.append(f"{name}: spent {budget.spent} but the ledger charged {charged}")
        if budget.reserved != reserved_by_user[budget.user_id]:
            problems.append(
                f"{name}: reserved {budget.reserved} but its batches reserve "
                f"{reserved_by_user[budget.user_id]}"
            )
        if budget.spent + budget.reserved > budget.limit:
            problems.append(
                f"{name}: spent {budget.spent} + reserved {budget.reserved} is over the "
                f"limit {budget.limit}"
            )
    return problems
