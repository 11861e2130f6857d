"""Each model on its own endpoint: a model with no endpoint is not offered (API, estimate and
form), and a submitted panel records the endpoint its model runs on."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from django.test import Client
from rest_framework.test import APIClient

from batches.models import Batch
from budgets import estimates
from tests.support.history import record_history

pytestmark = pytest.mark.django_db

ROUTES = {"sdxl": "ep-sdxl", "flux-dev": "ep-flux"}


@pytest.fixture
def routed(settings: Any) -> dict[str, str]:
    settings.RUNPOD_ENDPOINTS = dict(ROUTES)
    return dict(ROUTES)


def body(*models: str, **batch_params: Any) -> dict[str, Any]:
    return {
        "title": "Chapter",
        "params": {"width": 128, "height": 128, "steps": 4, **batch_params},
        "images": [
            {"prompt": f"panel {n}", **({"params": {"model": model}} if model else {})}
            for n, model in enumerate(models)
        ],
    }


@pytest.mark.parametrize("url", ["/api/v1/batches/", "/api/v1/batches/estimate/"])
def test_a_model_without_an_endpoint_is_refused_with_the_reason(
    api: APIClient, routed: Any, url: str
) -> None:
    response = api.post(url, body("sdxl", "sdxl-turbo"), format="json")

    assert response.status_code == 400
    answer = response.json()
    assert answer["code"] == "invalid"
    assert "detail" in answer
    message = str(answer)
    assert "'sdxl-turbo' is not offered here" in message
    assert "RUNPOD_ENDPOINTS" in message
    assert "flux-dev, sdxl" in message
    assert not Batch.objects.exists()


def test_a_batch_wide_model_without_an_endpoint_is_refused_too(api: APIClient, routed: Any) -> None:
    response = api.post("/api/v1/batches/", body("", model="sdxl-turbo"), format="json")

    assert response.status_code == 400
    assert "not offered here" in str(response.json())


def test_an_unknown_model_is_still_a_plain_invalid_choice(api: APIClient, routed: Any) -> None:
    response = api.post("/api/v1/batches/", body("midjourney"), format="json")

    assert response.status_code == 400
    assert "not a valid choice" in str(response.json())


def test_each_panel_records_its_models_endpoint_and_sends_the_model(
    api: APIClient, routed: Any
) -> None:
    response = api.post("/api/v1/batches/", body("sdxl", "flux-dev", "sdxl"), format="json")

    assert response.status_code == 202, response.json()
    batch = Batch.objects.get(pk=response.json()["id"])
    images = list(batch.images.order_by("index"))
    assert [image.endpoint_id for image in images] == ["ep-sdxl", "ep-flux", "ep-sdxl"]
    assert batch.endpoint_id == "mixed"
    assert images[1].runpod_input(batch)["model"] == "flux-dev"


def test_a_one_model_batch_records_that_models_endpoint(api: APIClient, routed: Any) -> None:
    response = api.post("/api/v1/batches/", body("flux-dev", "flux-dev"), format="json")

    batch = Batch.objects.get(pk=response.json()["id"])
    assert batch.endpoint_id == "ep-flux"
    assert set(batch.images.values_list("endpoint_id", flat=True)) == {"ep-flux"}


def test_without_routes_every_panel_goes_to_the_one_endpoint(api: APIClient, settings: Any) -> None:
    settings.RUNPOD_ENDPOINTS = None
    response = api.post("/api/v1/batches/", body("sdxl", "flux-dev"), format="json")

    batch = Batch.objects.get(pk=response.json()["id"])
    assert batch.endpoint_id == settings.RUNPOD_ENDPOINT_ID
    assert set(batch.images.values_list("endpoint_id", flat=True)) == {settings.RUNPOD_ENDPOINT_ID}


def test_the_default_model_is_an_offered_one(api: APIClient, settings: Any) -> None:
    settings.RUNPOD_ENDPOINTS = {"flux-dev": "ep-flux"}

    response = api.post("/api/v1/batches/", body(""), format="json")

    assert response.status_code == 202, response.json()
    image = Batch.objects.get(pk=response.json()["id"]).images.get()
    assert (image.params["model"], image.endpoint_id) == ("flux-dev", "ep-flux")


def test_what_a_model_took_on_one_endpoint_does_not_price_it_on_another(routed: Any) -> None:
    record_history(30, model="flux-dev", seconds=0.4, endpoint="ep-old-flux")
    params = {"model": "flux-dev", "width": 768, "height": 768, "steps": 25, "guidance": 7.5}

    assert estimates.estimate_images([params]).basis["models"]["flux-dev"]["kind"] == "catalogue"
    record_history(30, model="flux-dev", seconds=0.4, endpoint="ep-flux")
    estimates.forget_history(["flux-dev"])
    assert estimates.estimate_images([params]).basis["models"]["flux-dev"]["samples"] == 30


def test_the_form_offers_only_routed_models(client: Client, user: Any, routed: Any) -> None:
    client.force_login(user)

    html = client.get("/batches/new/").content.decode()

    assert '<option value="sdxl"' in html
    assert '<option value="flux-dev"' in html
    assert 'value="sdxl-turbo"' not in html


def test_the_migration_gives_older_panels_their_batchs_endpoint(user: Any) -> None:
    from django.apps import apps

    migration = importlib.import_module("batches.migrations.0005_endpoint_per_image")
    batch = Batch.objects.create(user=user, title="old", endpoint_id="ep-before")
    old = batch.images.create(index=0, prompt="p", seed=1, params={"model": "sdxl"})
    new = batch.images.create(index=1, prompt="q", seed=2, params={}, endpoint_id="ep-flux")

    migration.endpoint_of_batch(apps, None)

    old.refresh_from_db()
    new.refresh_from_db()
    assert (old.endpoint_id, new.endpoint_id) == ("ep-before", "ep-flux")


def test_the_form_says_why_a_model_without_an_endpoint_is_refused(
    client: Client, user: Any, routed: Any
) -> None:
    client.force_login(user)

    response = client.post(
        "/batches/new/",
        {"model": "sdxl-turbo", "width": "512", "height": "512", "steps": "20",
         "priority": "normal", "panels": "Mara opens the vault door"},
    )  # fmt: skip

    assert response.status_code == 200
    assert "is not offered here" in response.content.decode()
    assert not Batch.objects.exists()
