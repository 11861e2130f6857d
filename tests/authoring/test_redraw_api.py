"""POST /api/v1/batches/{id}/images/{index}/redraw/ and .../select/."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from rest_framework.test import APIClient

from batches import services
from batches.models import Batch, BatchStatus, ImageJob, ImageStatus, ImageVersion
from budgets.books import check_books
from budgets.models import Budget, LedgerEntry
from tests.authoring.support import complete_image, finished, submitted
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def redraw(api: Any, batch: Batch, index: int = 0, **body: Any) -> Any:
    return api.post(f"/api/v1/batches/{batch.pk}/images/{index}/redraw/", body, format="json")


def test_a_redraw_keeps_the_take_reserves_and_reopens_the_batch(api: Any, user: Any) -> None:
    batch = finished(user, ["Mara opens the vault", "close-up"])
    image = batch.images.get(index=0)
    old_file, old_seed, old_cost = image.image.name, image.seed, image.cost
    reserves_before = LedgerEntry.objects.filter(batch=batch, kind="reserve").count()

    response = redraw(api, batch, prompt="Mara slams the vault door")

    assert response.status_code == 202, response.json()
    body = response.json()
    assert body["status"] == "pending"
    assert body["prompt"] == "Mara slams the vault door"
    assert body["version"] == 2
    assert body["selected_version"] is None
    assert [take["version"] for take in body["versions"]] == [1]
    assert body["versions"][0]["prompt"] == "Mara opens the vault"
    assert body["versions"][0]["image_url"]
    image.refresh_from_db()
    assert image.status == ImageStatus.PENDING
    assert image.image.name == ""
    assert image.seed != old_seed  # a new seed by default
    assert image.attempts_before_retry == image.attempts == 1  # attempts keep counting
    kept = ImageVersion.objects.get(image=image)
    assert (kept.version, kept.file.name, kept.seed, kept.cost) == (1, old_file, old_seed, old_cost)
    batch.refresh_from_db()
    assert batch.status == BatchStatus.RUNNING
    assert batch.finished_at is None
    assert batch.reserved > 0
    assert LedgerEntry.objects.filter(batch=batch, kind="reserve").count() == reserves_before + 1
    assert check_books() == []


def test_a_redraw_keeps_a_given_seed_and_merges_params(api: Any, user: Any) -> None:
    batch = finished(user, ["one"])

    response = redraw(api, batch, seed=7, params={"steps": 8})

    assert response.status_code == 202
    image = ImageJob.objects.get(batch=batch, index=0)
    assert image.seed == 7
    assert image.params["steps"] == 8
    assert image.params["width"] == 128


def test_a_finished_redraw_ends_the_batch_again_and_the_books_balance(api: Any, user: Any) -> None:
    batch = finished(user, ["one", "two"])
    redraw(api, batch, index=1, prompt="two, again")
    image = ImageJob.objects.get(batch=batch, index=1)

    complete_image(image, (10, 200, 10))
    services.finalize_batch(batch.pk)

    batch.refresh_from_db()
    assert batch.status == BatchStatus.COMPLETED
    assert batch.reserved == 0
    image.refresh_from_db()
    assert image.attempts == 2
    charges = LedgerEntry.objects.filter(image=image, kind="charge").order_by("attempt")
    assert list(charges.values_list("attempt", flat=True)) == [1, 2]
    detail = api.get(f"/api/v1/batches/{batch.pk}/").json()["images"][1]
    assert [take["version"] for take in detail["versions"]] == [1, 2]
    assert sum(Decimal(take["cost"]) for take in detail["versions"]) == image.cost
    assert check_books() == []


def test_a_redraw_over_budget_is_402_and_changes_nothing(api: Any, user: Any) -> None:
    batch = finished(user, ["one"])
    budget = Budget.objects.get(user=user)
    Budget.objects.filter(pk=budget.pk).update(limit=budget.spent)

    response = redraw(api, batch)

    assert response.status_code == 402
    assert response.json()["code"] == "budget_exceeded"
    assert "estimated_cost" in response.json()
    image = ImageJob.objects.get(batch=batch, index=0)
    assert image.status == ImageStatus.COMPLETED
    assert image.image.name
    assert not ImageVersion.objects.exists()
    assert Batch.objects.get(pk=batch.pk).status == BatchStatus.COMPLETED
    assert check_books() == []


def test_redrawing_a_panel_still_being_drawn_is_a_conflict(api: Any, user: Any) -> None:
    batch = submitted(user, ["one"])

    response = redraw(api, batch)

    assert response.status_code == 409
    assert "still pending" in response.json()["detail"]


def test_redrawing_while_the_batch_is_being_cancelled_is_a_conflict(api: Any, user: Any) -> None:
    batch = submitted(user, ["one", "two"])
    Batch.objects.start(batch.pk)
    complete_image(batch.images.get(index=0), (1, 2, 3))
    Batch.objects.filter(pk=batch.pk).update(cancel_requested_at="2026-01-01T00:00:00Z")

    response = redraw(api, batch)

    assert response.status_code == 409
    assert "cancelled" in response.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": ""},
        {"prompt": "x" * 2001},
        {"seed": -1},
        {"seed": "abc"},
        {"params": {"width": 100}},
        {"params": {"model": "no-such-model"}},
        {"colour": "blue"},
    ],
)
def test_a_bad_redraw_body_is_400_with_field_errors(api: Any, user: Any, body: Any) -> None:
    batch = finished(user, ["one"])

    response = redraw(api, batch, **body)

    assert response.status_code == 400
    assert response.json()["code"] == "invalid"
    assert response.json()["fields"]
    assert ImageJob.objects.get(batch=batch).status == ImageStatus.COMPLETED


def test_a_missing_panel_or_another_users_batch_is_not_found(api: Any, user: Any) -> None:
    mine = finished(user, ["one"])
    theirs = finished(UserFactory(), ["theirs"])

    assert redraw(api, mine, index=5).status_code == 404
    assert redraw(api, theirs).status_code == 404
    select = api.post(
        f"/api/v1/batches/{theirs.pk}/images/0/select/", {"version": 1}, format="json"
    )
    assert select.status_code == 404
    assert ImageJob.objects.get(batch=theirs).status == ImageStatus.COMPLETED


def test_an_anonymous_caller_is_refused(user: Any) -> None:
    batch = finished(user, ["one"])
    client = APIClient()

    assert client.post(f"/api/v1/batches/{batch.pk}/images/0/redraw/").status_code == 401
    select = client.post(f"/api/v1/batches/{batch.pk}/images/0/select/", {"version": 1})
    assert select.status_code == 401


def test_select_picks_an_old_take_back(api: Any, user: Any) -> None:
    batch = finished(user, ["one"])
    redraw(api, batch, prompt="one, redrawn")
    image = ImageJob.objects.get(batch=batch)
    complete_image(image, (0, 0, 250))

    response = api.post(
        f"/api/v1/batches/{batch.pk}/images/0/select/", {"version": 1}, format="json"
    )

    assert response.status_code == 200
    assert response.json()["selected_version"] == 1
    assert ImageJob.objects.get(pk=image.pk).selected_version == 1


@pytest.mark.parametrize("body", [{"version": 3}, {"version": 0}, {"version": "x"}, {}])
def test_selecting_a_take_that_does_not_exist_is_400(api: Any, user: Any, body: Any) -> None:
    batch = finished(user, ["one"])

    response = api.post(f"/api/v1/batches/{batch.pk}/images/0/select/", body, format="json")

    assert response.status_code == 400
    assert response.json()["code"] == "invalid"
    assert ImageJob.objects.get(batch=batch).selected_version is None


@pytest.mark.parametrize("body", [[], "prompt", [{"prompt": "x"}], {"seed": 10**40}])
def test_a_body_of_the_wrong_shape_is_400(api: Any, user: Any, body: Any) -> None:
    batch = finished(user, ["one"])

    response = api.post(f"/api/v1/batches/{batch.pk}/images/0/redraw/", body, format="json")

    assert response.status_code == 400
    assert set(response.json()) >= {"code", "detail"}


def test_huge_numbers_in_the_path_are_404_not_500(api: Any, user: Any) -> None:
    batch = finished(user, ["one"])
    huge = 10**30

    assert redraw(api, batch, index=huge).status_code == 404
    assert api.post(f"/api/v1/batches/{huge}/pause/").status_code == 404
    assert api.get(f"/api/v1/batches/{huge}/export/?format=pdf").status_code == 404
    select = api.post(f"/api/v1/batches/{batch.pk}/images/{huge}/select/", {"version": 1})
    assert select.status_code == 404


def test_a_redraw_with_another_model_is_drawn_on_that_models_endpoint(
    api: Any, user: Any, settings: Any
) -> None:
    settings.RUNPOD_ENDPOINTS = {"sdxl": "ep-sdxl", "flux-dev": "ep-flux"}
    batch = finished(user, ["one"])

    response = redraw(api, batch, params={"model": "flux-dev"})

    assert response.status_code == 202, response.json()
    image = ImageJob.objects.get(batch=batch, index=0)
    # Priced as flux-dev, so rendered by flux-dev's endpoint: never billed one model's price for
    # another model's work.
    assert (image.params["model"], image.endpoint_id) == ("flux-dev", "ep-flux")
    assert check_books() == []


def test_a_redraw_of_a_model_no_endpoint_serves_any_more_is_a_conflict(
    api: Any, user: Any, settings: Any
) -> None:
    batch = finished(user, ["one"])
    settings.RUNPOD_ENDPOINTS = {"flux-dev": "ep-flux"}  # sdxl is no longer offered here

    response = redraw(api, batch)

    assert response.status_code == 409
    assert "sdxl" in response.json()["detail"]
    assert ImageJob.objects.get(batch=batch, index=0).status == ImageStatus.COMPLETED


def test_the_tile_form_refuses_a_prompt_with_a_nul_byte_with_a_message(user: Any) -> None:
    from django.test import Client

    batch = finished(user, ["one"])
    client = Client()
    client.force_login(user)

    response = client.post(
        f"/batches/{batch.pk}/panels/0/redraw/", {"prompt": "a\x00b", "new_seed": "on"},
        follow=True,
    )  # fmt: skip

    assert response.status_code == 200
    assert "NUL" in response.content.decode()
    assert ImageJob.objects.get(batch=batch, index=0).status == ImageStatus.COMPLETED
