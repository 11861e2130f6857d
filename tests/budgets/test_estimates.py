"""budgets.estimates: what a batch will cost, learned from what the endpoint's panels took."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.db.models.functions import Now

from batches import services
from batches.api.serializers import BatchSubmitSerializer
from batches.models import Batch, ImageStatus
from budgets import estimates, pricing
from budgets.books import check_books
from budgets.estimates import Sample, allowance_rate, estimate_images, fit_timing
from budgets.models import Budget
from tests.support.history import record_history

SDXL = pricing.DEFAULT_CATALOGUE["sdxl"]
FLUX = pricing.DEFAULT_CATALOGUE["flux-dev"]  # one with a fixed cost per panel


def params(width: int = 768, height: int = 768, steps: int = 25, model: str = "sdxl") -> dict:
    return {"model": model, "width": width, "height": height, "steps": steps, "guidance": 7.5}


# -- the fit, on its own ---------------------------------------------------------------------


def test_a_line_is_fitted_to_panels_of_different_sizes() -> None:
    samples = [Sample(work, 0.3 + 0.05 * work) for work in (5, 10, 20, 40) for _ in range(5)]

    timing = fit_timing(samples, SDXL)

    assert timing.overhead_seconds == pytest.approx(0.3)
    assert timing.seconds_per_megapixel_step == pytest.approx(0.05)


def test_panels_of_one_size_scale_the_catalogues_curve_through_what_they_took() -> None:
    work = 14.7456  # 768 x 768, 25 steps
    samples = [Sample(work, 0.75) for _ in range(30)]

    timing = fit_timing(samples, FLUX)

    assert timing.seconds(work) == pytest.approx(0.75)
    scale = 0.75 / FLUX.expected_seconds(768, 768, 25)
    assert timing.overhead_seconds == pytest.approx(FLUX.overhead_seconds * scale)
    assert timing.seconds_per_megapixel_step == pytest.approx(
        FLUX.seconds_per_megapixel_step * scale
    )


def test_a_fit_that_would_need_a_negative_overhead_goes_through_the_origin() -> None:
    samples = [Sample(10, 0.5), Sample(20, 1.5), Sample(40, 3.5)]

    timing = fit_timing(samples, SDXL)

    assert timing.overhead_seconds == 0
    assert timing.seconds_per_megapixel_step == pytest.approx((5 + 30 + 140) / (100 + 400 + 1600))


def test_recent_panels_weigh_more_than_old_ones() -> None:
    samples = [Sample(14.7456, 1.0, estimates.recency_weight(rank)) for rank in range(100)] + [
        Sample(14.7456, 2.0, estimates.recency_weight(rank)) for rank in range(100, 200)
    ]

    # Unweighted, 1.5 s; with the weight halving every 100 panels, a third of the way up.
    assert fit_timing(samples, SDXL).seconds(14.7456) == pytest.approx(4 / 3, abs=0.01)


@pytest.mark.parametrize(
    ("failure_rate", "rate"),
    [
        (0.0, "0.05"),  # nothing fails: still a small cushion
        (0.02, "0.05"),
        (0.2, "0.25"),  # one attempt in five fails: a quarter more attempts than panels
        (0.3, "0.4286"),
        (0.5, "0.50"),  # capped: a reservation never grows past half again
        (0.9, "0.50"),
        (1.0, "0.50"),
    ],
)
def test_the_allowance_follows_the_failure_rate_within_its_bounds(
    failure_rate: float, rate: str
) -> None:
    assert allowance_rate(failure_rate) == Decimal(rate)


# -- learned from the database ---------------------------------------------------------------


@pytest.mark.django_db
def test_known_execution_times_give_a_known_estimate() -> None:
    # 0.5 s at 512 x 512 x 20 and 2.0 s at 1024 x 1024 x 30: 0.2 s + 0.0572 s per MP-step.
    record_history(30, width=512, height=512, steps=20, seconds=0.5)
    record_history(30, width=1024, height=1024, steps=30, seconds=2.0)

    estimate = estimate_images([params()] * 10)

    # 768 x 768 x 25: 1.04375 s at 0.00031 per second = 0.0003236, rounded up per panel.
    assert estimate.expected_cost == Decimal("0.003240")
    assert estimate.allowance == Decimal("0.000162")  # nothing failed: the 5 % floor
    assert estimate.total == Decimal("0.003402")
    assert estimate.basis == {
        "kind": "measured",
        "samples": 60,
        "models": {
            "sdxl": {
                "kind": "measured",
                "samples": 60,
                "panels": 10,
                "failure_rate": 0.0,
                "allowance_rate": "0.0500",
            }
        },
    }


@pytest.mark.django_db
def test_panels_of_one_size_price_another_size_along_the_catalogues_curve() -> None:
    record_history(25, seconds=0.75)

    estimate = estimate_images([params(1024, 1024, 30)])

    # 0.75 / 1.47456 of the catalogue's 3.145728 s = 1.6 s, at 0.00031 per second.
    assert estimate.expected_cost == Decimal("0.000496")
    assert estimate.basis["kind"] == "measured"


@pytest.mark.django_db
def test_below_the_minimum_sample_the_catalogue_is_used() -> None:
    record_history(estimates.MIN_SAMPLES - 1, seconds=0.2)

    estimate = estimate_images([params(), params(512, 512, 20)])

    expected = pricing.expected_cost(params()) + pricing.expected_cost(params(512, 512, 20))
    assert estimate.expected_cost == expected
    assert estimate.allowance == pricing.money(expected * pricing.RETRY_ALLOWANCE)
    assert estimate.basis["kind"] == "catalogue"
    assert estimate.basis["models"]["sdxl"] == {
        "kind": "catalogue",
        "samples": 0,
        "panels": 2,
        "failure_rate": None,
        "allowance_rate": "0.2500",
    }


@pytest.mark.django_db
def test_history_is_per_model_and_per_endpoint(settings: Any) -> None:
    record_history(40, seconds=0.3, endpoint="another-endpoint")
    record_history(40, model="flux-dev", seconds=3.0)

    estimate = estimate_images([params(), params(model="flux-dev")])

    assert estimate.basis["kind"] == "mixed"
    assert estimate.basis["models"]["sdxl"]["kind"] == "catalogue"
    assert estimate.basis["models"]["flux-dev"]["samples"] == 40
    settings.RUNPOD_ENDPOINT_ID = "another-endpoint"
    assert estimate_images([params()]).basis["models"]["sdxl"]["samples"] == 40


@pytest.mark.django_db
def test_only_the_last_window_of_panels_is_read() -> None:
    record_history(estimates.WINDOW + 100, seconds=1.0)

    assert estimate_images([params()]).basis["samples"] == estimates.WINDOW


@pytest.mark.django_db
def test_failed_attempts_raise_the_allowance_up_to_its_cap() -> None:
    record_history(30, seconds=1.0, attempts=3)  # two failures for every panel made

    estimate = estimate_images([params()] * 4)

    assert estimate.basis["models"]["sdxl"]["failure_rate"] == pytest.approx(2 / 3, abs=1e-4)
    assert estimate.allowance == pricing.money(estimate.expected_cost * Decimal("0.5"))


@pytest.mark.django_db
def test_panels_that_gave_up_count_as_failures_not_as_timings() -> None:
    record_history(30, seconds=1.0)
    record_history(10, status=ImageStatus.FAILED, attempts=4)

    basis = estimate_images([params()]).basis["models"]["sdxl"]

    assert basis["samples"] == 30
    assert 0.5 < basis["failure_rate"] < 1


# -- submit reserves it; a finished batch refreshes it ---------------------------------------


def submit(user: Any, count: int, **batch_params: Any) -> Batch:
    serializer = BatchSubmitSerializer(
        data={
            "params": {"width": 768, "height": 768, "steps": 25, **batch_params},
            "images": [{"prompt": f"panel {n}"} for n in range(count)],
        }
    )
    serializer.is_valid(raise_exception=True)
    return services.submit_batch(
        user, serializer.validated_data, serializer.resolved_images()
    ).batch


@pytest.mark.django_db
def test_a_submit_reserves_the_learned_estimate_and_keeps_its_basis(
    user: Any, settings: Any
) -> None:
    record_history(30, seconds=0.5)

    batch = submit(user, 10)

    learned = estimate_images([params()] * 10)
    assert (batch.estimated_cost, batch.expected_cost) == (learned.total, learned.expected_cost)
    assert batch.estimate_basis == learned.basis
    assert batch.endpoint_id == settings.RUNPOD_ENDPOINT_ID
    assert Budget.objects.get(user=user).reserved == learned.total
    # A third of the catalogue's figure: that much less of the budget is blocked.
    catalogue = pricing.expected_cost(params()) * 10
    assert learned.expected_cost < catalogue / 2
    assert check_books() == []


@pytest.mark.django_db
def test_a_finished_batch_makes_the_next_estimate_read_its_panels(user: Any) -> None:
    assert estimate_images([params()]).basis["kind"] == "catalogue"  # now cached
    record_history(30, seconds=0.5)
    assert estimate_images([params()]).basis["kind"] == "catalogue"  # still the cached one

    batch = submit(user, 1)
    batch.images.update(status=ImageStatus.COMPLETED, execution_ms=500, finished_at=Now())
    services.finalize_batch(batch.pk)

    assert estimate_images([params()]).basis == {
        "kind": "measured",
        "samples": 31,
        "models": {
            "sdxl": {
                "kind": "measured",
                "samples": 31,
                "panels": 1,
                "failure_rate": 0.0,
                "allowance_rate": "0.0500",
            }
        },
    }
    assert check_books() == []
