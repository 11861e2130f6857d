"""A batch mixing two models on the real pipeline: each panel is rendered by its model's
endpoint (the emulator counts jobs per endpoint id), and each is charged at its model's price."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db.models import Sum

from batches.models import BatchStatus
from budgets import pricing
from budgets.models import LedgerEntry
from tests.batches.test_pipeline import finished, submit
from tests.conftest import Stack, wait_for
from tests.support.books import assert_books_match_the_bill

pytestmark = pytest.mark.integration

SDXL_ENDPOINT, FLUX_ENDPOINT = "comicgen-test", "comicgen-test-flux"


@pytest.fixture
def two_endpoints(live: Stack, settings: Any) -> Iterator[Stack]:
    """The stack's emulator serving a second endpoint id, and flux-dev routed to it."""
    assert live.emulator.endpoint_id == SDXL_ENDPOINT
    live.emulator.configure(endpoint_id=f"{SDXL_ENDPOINT},{FLUX_ENDPOINT}")
    settings.RUNPOD_ENDPOINTS = {"sdxl": SDXL_ENDPOINT, "flux-dev": FLUX_ENDPOINT}
    yield live
    live.emulator.configure(endpoint_id=SDXL_ENDPOINT)


def test_a_two_model_batch_lands_on_two_endpoints_and_each_panel_pays_its_price(
    two_endpoints: Stack, api: Any
) -> None:
    prompts = ["vault door", "close-up", "the corridor", "the feather", "rooftop"]
    models = ["sdxl", "flux-dev", "flux-dev", "sdxl", "flux-dev"]
    created = submit(
        api,
        [],
        images=[
            {"prompt": prompt, "params": {"model": model}}
            for prompt, model in zip(prompts, models, strict=True)
        ],
    )

    batch = wait_for(lambda: finished(created["id"]), timeout=60)

    assert batch.status == BatchStatus.COMPLETED
    assert batch.endpoint_id == pricing.MIXED_ENDPOINTS
    stats = two_endpoints.emulator.stats()["endpoints"]
    assert stats[SDXL_ENDPOINT]["COMPLETED"] == 2
    assert stats[FLUX_ENDPOINT]["COMPLETED"] == 3
    charges = LedgerEntry.objects.filter(batch=batch, kind=LedgerEntry.Kind.CHARGE)
    for model, endpoint in (("sdxl", SDXL_ENDPOINT), ("flux-dev", FLUX_ENDPOINT)):
        images = batch.images.filter(params__model=model)
        assert set(images.values_list("endpoint_id", flat=True)) == {endpoint}
        model_charges = charges.filter(image__in=images)
        # What the endpoint billed is what the ledger charged for that model's panels...
        assert model_charges.aggregate(ms=Sum("billed_ms"))["ms"] == stats[endpoint]["billed_ms"]
        # ...each at that model's GPU price.
        for image in images:
            assert image.cost == pricing.actual_cost(image.params, image.execution_ms)
    flux = batch.images.filter(params__model="flux-dev").first()
    sdxl = batch.images.filter(params__model="sdxl").first()
    assert pricing.catalogue()["flux-dev"].price_per_second > (
        pricing.catalogue()["sdxl"].price_per_second
    )
    assert flux.cost / flux.execution_ms > sdxl.cost / sdxl.execution_ms
    assert_books_match_the_bill(two_endpoints.emulator)
