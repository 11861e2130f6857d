"""Estimates that match the bill: what a batch will cost, learned from what the endpoint takes.

The catalogue (budgets/pricing.py) says how long a model should take on its GPU; the endpoint
says how long it does. For each model, on the endpoint it runs on, the seconds a panel takes
are fitted from the executionTime of its recently completed panels, normalised by their work
(megapixels x steps), and the retry allowance follows the share of attempts that failed:

- the sample is the last WINDOW finished panels of the model on this endpoint, each weighted by
  how recent it is (the weight halves every HALF_LIFE panels further back), so an endpoint that
  changes (a new GPU type, FlashBoot on or off) is followed within a few hundred panels;
- below MIN_SAMPLES completed panels with a reported time, the catalogue's figure is used, and
  below MIN_SAMPLES finished panels, the catalogue's 25 % allowance;
- the fit is `seconds = overhead + per_unit x work` by weighted least squares when the panels
  span different amounts of work; when they all ask for about the same, two parameters cannot
  be told apart, and the catalogue's curve is scaled to go through what was measured;
- the allowance is the extra attempts a panel needs, f / (1 - f) for a failure rate f (failed
  attempts over attempts), held within MIN_ALLOWANCE..MAX_ALLOWANCE: a cushion even when
  nothing fails, and never a reservation that doubles a batch.

What is learned is cached for CACHE_SECONDS (and dropped when a batch of the model finishes),
so pricing a submit costs no more than a cache read. Holds are not touched by any of this: an
attempt still holds its worst case (pricing.attempt_max_cost), which keeps the limit safe.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import redis
from django.conf import settings
from django.core.cache import cache
from django.db.models import Q
from django.utils import timezone

from batches.models import Batch, BatchStatus, ImageJob, ImageStatus
from budgets import pricing

logger = logging.getLogger(__name__)

MIN_SAMPLES = 20
WINDOW = 500
HALF_LIFE = 100
CACHE_SECONDS = 60
MIN_ALLOWANCE = Decimal("0.05")
MAX_ALLOWANCE = Decimal("0.50")
# Below this spread of work among the samples (weighted standard deviation over mean) a fit
# of two parameters follows the noise: the catalogue's curve is scaled instead.
MIN_WORK_SPREAD = 0.25
RATE = Decimal("0.0001")
ZERO = Decimal("0")

MEASURED = "measured"
CATALOGUE = "catalogue"
MIXED = "mixed"


@dataclass(frozen=True)
class Timing:
    """Seconds a panel takes: overhead + per-megapixel-step time x megapixels x steps."""

    overhead_seconds: float
    seconds_per_megapixel_step: float

    def seconds(self, work: float) -> float:
        return self.overhead_seconds + self.seconds_per_megapixel_step * work


@dataclass(frozen=True)
class Sample:
    """One completed panel: its work (megapixels x steps) and the seconds RunPod reported."""

    work: float
    seconds: float
    weight: float = 1.0


@dataclass(frozen=True)
class History:
    """What a model's recent panels on one endpoint say (None where they are too few)."""

    samples: int
    timing: Timing | None
    finished: int
    failure_rate: float | None


@dataclass(frozen=True)
class Estimate:
    """A batch's price: `expected_cost` to render every panel once, `allowance` for retries,
    `total` (what submit reserves), and the `basis` of both (the API's shape)."""

    images: int
    expected_cost: Decimal
    allowance: Decimal
    total: Decimal
    allowance_rate: Decimal
    currency: str
    basis: dict[str, Any]


def work_of(params: dict[str, Any]) -> float:
    """A panel's work: megapixels x steps (what a diffusion model's time grows with)."""
    return params["width"] * params["height"] / 1_000_000 * params["steps"]


def expected_ms(timing: Timing, params: dict[str, Any]) -> int:
    """The executionTime a panel is expected to report, in RunPod's whole milliseconds."""
    return max(0, round(timing.seconds(work_of(params)) * 1000))


def recency_weight(rank: int) -> float:
    """The weight of the panel `rank` places back from the newest (0)."""
    return float(0.5 ** (rank / HALF_LIFE))


def fit_timing(samples: Sequence[Sample], catalogue: pricing.ModelPrice) -> Timing:
    """The seconds a panel takes, fitted to `samples` (see the module's docstring)."""
    total_weight = sum(sample.weight for sample in samples)
    if not samples or total_weight <= 0:
        raise ValueError("no samples to fit")
    mean_work = sum(s.weight * s.work for s in samples) / total_weight
    mean_seconds = sum(s.weight * s.seconds for s in samples) / total_weight
    spread = sum(s.weight * (s.work - mean_work) ** 2 for s in samples)
    if mean_work > 0 and math.sqrt(spread / total_weight) / mean_work >= MIN_WORK_SPREAD:
        covariance = sum(
            s.weight * (s.work - mean_work) * (s.seconds - mean_seconds) for s in samples
        )
        per_unit = covariance / spread
        overhead = mean_seconds - per_unit * mean_work
        if per_unit > 0 and overhead >= 0:
            return Timing(overhead, per_unit)
        if per_unit > 0:
            # No fixed cost can be negative: the best line through the origin instead.
            through_origin = sum(s.weight * s.work * s.seconds for s in samples) / sum(
                s.weight * s.work**2 for s in samples
            )
            return Timing(0.0, through_origin)
    expected = sum(
        s.weight * (catalogue.overhead_seconds + catalogue.seconds_per_megapixel_step * s.work)
        for s in samples
    )
    scale = sum(s.weight * s.seconds for s in samples) / expected
    return Timing(catalogue.overhead_seconds * scale, catalogue.seconds_per_megapixel_step * scale)


def allowance_rate(failure_rate: float) -> Decimal:
    """Extra attempts per panel for a failure rate, within the stated bounds."""
    if failure_rate >= 1:
        return MAX_ALLOWANCE
    extra = Decimal(str(failure_rate / (1 - failure_rate))).quantize(RATE, ROUND_HALF_UP)
    return min(MAX_ALLOWANCE, max(MIN_ALLOWANCE, extra))


def endpoint_for(model: str) -> str:
    """The RunPod endpoint that renders `model` (RUNPOD_ENDPOINTS, budgets.pricing): what is
    learned about a model is learned on its endpoint only."""
    return pricing.endpoint_for(model)


def measure_history(model: str, endpoint: str) -> History:
    """Read a model's last WINDOW finished panels on `endpoint` and fit what they say."""
    catalogue_model = pricing.catalogue()[model]
    rows = (
        ImageJob.objects.filter(
            status__in=[ImageStatus.COMPLETED, ImageStatus.FAILED],
            finished_at__isnull=False,
            params__model=model,
        )
        # Each panel records its endpoint; rows made without one ran on their batch's.
        .filter(Q(endpoint_id=endpoint) | Q(endpoint_id="", batch__endpoint_id=endpoint))
        .order_by("-finished_at")
        .values_list("status", "attempts", "execution_ms", "params")[:WINDOW]
    )
    samples: list[Sample] = []
    attempts = failed = 0.0
    finished = 0
    for rank, (status, tries, execution_ms, params) in enumerate(rows):
        weight = recency_weight(rank)
        finished += 1
        completed = status == ImageStatus.COMPLETED
        attempts += weight * tries
        failed += weight * max(0, tries - completed)
        if completed and execution_ms is not None:
            try:
                work = work_of(params)
            except (KeyError, TypeError):  # params from before a change of shape: skip
                continue
            samples.append(Sample(work, execution_ms / 1000, weight))
    timing = fit_timing(samples, catalogue_model) if len(samples) >= MIN_SAMPLES else None
    failure_rate = failed / attempts if finished >= MIN_SAMPLES and attempts > 0 else None
    return History(len(samples), timing, finished, failure_rate)


def _cache_key(model: str, endpoint: str) -> str:
    digest = hashlib.sha256(f"{endpoint}\0{model}".encode()).hexdigest()[:24]
    # Versioned: a deploy that changes History never reads what the previous code cached.
    return f"estimates:history:v1:{digest}"


def model_history(model: str) -> History:
    """What the model's recent panels on its endpoint say, cached briefly. Without the cache
    (Redis restarting) it is read from PostgreSQL each time: slower, never wrong."""
    endpoint = endpoint_for(model)
    key = _cache_key(model, endpoint)
    try:
        cached = cache.get(key)
    except redis.RedisError:
        cached = None
    if isinstance(cached, History):
        return cached
    history = measure_history(model, endpoint)
    try:
        cache.set(key, history, CACHE_SECONDS)
    except redis.RedisError as error:
        logger.warning("estimates for %s not cached: %s", model, error)
    return history


def forget_history(models: Iterable[str]) -> None:
    """Drop what is cached for these models (a batch of them just finished: its panels are
    history now, and the next estimate should see them)."""
    offered = pricing.model_endpoints()
    # A model no longer offered has nothing cached: nothing prices it any more.
    keys = [_cache_key(model, offered[model]) for model in set(models) if model in offered]
    if not keys:
        return
    try:
        cache.delete_many(keys)
    except redis.RedisError as error:
        logger.warning("cached estimates not dropped (they expire anyway): %s", error)


def estimate_images(image_params: Sequence[dict[str, Any]]) -> Estimate:
    """The price of a batch: each panel's expected cost (learned, or from the catalogue), plus
    the retry allowance of its model (measured, or the catalogue's)."""
    by_model: dict[str, list[dict[str, Any]]] = {}
    for params in image_params:
        by_model.setdefault(params["model"], []).append(params)
    expected = allowance = ZERO
    models: dict[str, dict[str, Any]] = {}
    for model, panels in sorted(by_model.items()):
        history = model_history(model)
        if history.timing is not None:
            timing = history.timing
            # Priced as RunPod bills: whole milliseconds of executionTime at the GPU's price.
            cost = sum(
                (pricing.actual_cost(p, expected_ms(timing, p)) for p in panels),
                ZERO,
            )
        else:
            cost = sum((pricing.expected_cost(p) for p in panels), ZERO)
        if history.failure_rate is not None:
            rate = allowance_rate(history.failure_rate)
        else:
            rate = pricing.RETRY_ALLOWANCE
        expected += cost
        allowance += pricing.money(cost * rate)
        models[model] = {
            "kind": MEASURED if history.timing is not None else CATALOGUE,
            "samples": history.samples if history.timing is not None else 0,
            "panels": len(panels),
            "failure_rate": (
                round(history.failure_rate, 4) if history.failure_rate is not None else None
            ),
            "allowance_rate": str(rate.quantize(RATE)),
        }
    kinds = {entry["kind"] for entry in models.values()}
    basis = {
        "kind": kinds.pop() if len(kinds) == 1 else MIXED,
        "samples": sum(entry["samples"] for entry in models.values()),
        "models": models,
    }
    return Estimate(
        images=len(image_params),
        expected_cost=expected,
        allowance=allowance,
        total=expected + allowance,
        allowance_rate=(allowance / expected).quantize(RATE, ROUND_HALF_UP) if expected else ZERO,
        currency=settings.COMICGEN_CURRENCY,
        basis=basis,
    )


# -- accuracy: each finished batch's estimate against what it cost -----------------------------


@dataclass(frozen=True)
class Accuracy:
    """Completed batches of one model (or `mixed`) in one week: how far the estimate was off.
    `error` is actual / expected - 1 (the allowance aside: what the fit is judged on);
    `over_reserved` is estimated (with the allowance) / actual - 1, the budget blocked for
    nothing."""

    model: str
    week: date
    batches: int
    measured: int
    mean_error: float
    mean_abs_error: float
    worst_error: float
    over_reserved: float


def batch_model(basis: dict[str, Any]) -> str:
    """The model a batch was priced for, `mixed` for several, `-` before bases were kept."""
    models = list(basis.get("models", {})) if isinstance(basis, dict) else []
    return models[0] if len(models) == 1 else ("mixed" if models else "-")


def estimate_accuracy(weeks: int = 12, limit: int = 20_000) -> list[Accuracy]:
    """Estimate errors of the completed batches of the last `weeks`, by model and week (newest
    week first). Completed only: a cancelled or partial batch did not run what was priced."""
    since = timezone.now() - timedelta(weeks=weeks)
    rows = (
        Batch.objects.filter(
            status=BatchStatus.COMPLETED, finished_at__gte=since, expected_cost__gt=0
        )
        .order_by("-finished_at")
        .values_list("finished_at", "expected_cost", "estimated_cost", "actual_cost",
                     "estimate_basis")[:limit]
    )  # fmt: skip
    groups: dict[tuple[str, date], list[tuple[float, float, bool]]] = {}
    for finished_at, expected, estimated, actual, basis in rows:
        day = timezone.localdate(finished_at)
        week = day - timedelta(days=day.weekday())
        error = float(actual / expected) - 1
        over = float(estimated / actual) - 1 if actual else 0.0
        measured = isinstance(basis, dict) and basis.get("kind") == MEASURED
        groups.setdefault((batch_model(basis), week), []).append((error, over, measured))
    report = [
        Accuracy(
            model=model,
            week=week,
            batches=len(items),
            measured=sum(measured for _, _, measured in items),
            mean_error=sum(error for error, _, _ in items) / len(items),
            mean_abs_error=sum(abs(error) for error, _, _ in items) / len(items),
            worst_error=max((error for error, _, _ in items), key=abs),
            over_reserved=sum(over for _, over, _ in items) / len(items),
        )
        for (model, week), items in groups.items()
    ]
    report.sort(key=lambda row: (row.model, -row.week.toordinal()))
    return report
