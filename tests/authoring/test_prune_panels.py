"""Retention: panel files of batches finished long ago go; rows, costs and ledger stay."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.db.models import F
from django.utils import timezone

from batches.models import Batch, ImageJob, ImageVersion
from budgets.books import check_books
from budgets.models import LedgerEntry
from tests.authoring.support import complete_image, finished

pytestmark = pytest.mark.django_db


def age(batch: Batch, days: int) -> None:
    Batch.objects.filter(pk=batch.pk).update(finished_at=timezone.now() - timedelta(days=days))


def days_pass(batch: Batch, days: int) -> None:
    """Move the batch's finish and its last prune `days` back, keeping their order, as if that
    many days had passed since."""
    Batch.objects.filter(pk=batch.pk).update(
        finished_at=F("finished_at") - timedelta(days=days),
        panels_expired_at=F("panels_expired_at") - timedelta(days=days),
    )


def test_it_removes_old_files_and_keeps_rows_costs_and_ledger(api: Any, user: Any) -> None:
    old = finished(user, ["old one", "old two"])
    api.post(f"/api/v1/batches/{old.pk}/images/0/redraw/", {}, format="json")
    complete_image(ImageJob.objects.get(batch=old, index=0), (9, 9, 9))
    from batches import services

    services.finalize_batch(old.pk)
    recent = finished(user, ["recent"])
    age(old, 31)
    age(recent, 29)
    old_files = list(ImageJob.objects.filter(batch=old).values_list("image", flat=True))
    old_files += list(ImageVersion.objects.values_list("file", flat=True))
    ledger = LedgerEntry.objects.count()
    costs = list(ImageJob.objects.order_by("pk").values_list("cost", flat=True))

    out = StringIO()
    call_command("prune_panels", stdout=out)

    assert "removed 3 file(s)" in out.getvalue()
    assert f"#{old.pk}" in out.getvalue()
    assert not any(default_storage.exists(name) for name in old_files)
    assert Batch.objects.get(pk=old.pk).panels_expired_at is not None
    assert Batch.objects.get(pk=recent.pk).panels_expired_at is None
    assert ImageJob.objects.get(batch=recent).image.name
    assert list(ImageJob.objects.order_by("pk").values_list("cost", flat=True)) == costs
    assert LedgerEntry.objects.count() == ledger
    assert check_books() == []
    detail = api.get(f"/api/v1/batches/{old.pk}/").json()["images"]
    assert [(image["image_url"], image["expired"]) for image in detail] == [(None, True)] * 2
    # The first take is still listed (prompt, seed, cost), without a file to show.
    assert [
        (take["version"], take["image_url"], take["expired"]) for take in detail[0]["versions"]
    ] == [(1, None, True)]


def test_dry_run_shows_what_would_go_and_removes_nothing(user: Any) -> None:
    old = finished(user, ["old"])
    age(old, 40)
    name = ImageJob.objects.get(batch=old).image.name

    out = StringIO()
    call_command("prune_panels", "--dry-run", stdout=out)

    assert "would remove 1 file(s)" in out.getvalue()
    assert default_storage.exists(name)
    assert Batch.objects.get(pk=old.pk).panels_expired_at is None


def test_the_pages_say_the_images_expired(user: Any) -> None:
    from django.test import Client

    old = finished(user, ["old"])
    age(old, 40)
    call_command("prune_panels", stdout=StringIO())
    client = Client()
    client.force_login(user)

    page = client.get(f"/batches/{old.pk}/pages/").content.decode()
    detail = client.get(f"/batches/{old.pk}/").content.decode()

    assert "images expired" in page
    assert "Image expired" in detail


def test_a_take_redrawn_after_the_prune_goes_once_its_own_retention_ends(
    api: Any, user: Any
) -> None:
    from batches import services

    old = finished(user, ["old one", "old two"])
    age(old, 40)
    call_command("prune_panels", stdout=StringIO())
    first_prune = Batch.objects.get(pk=old.pk).panels_expired_at
    assert first_prune is not None
    redrawn = api.post(f"/api/v1/batches/{old.pk}/images/0/redraw/", {}, format="json")
    assert redrawn.status_code == 202, redrawn.json()
    complete_image(ImageJob.objects.get(batch=old, index=0), (9, 9, 9))
    services.finalize_batch(old.pk)
    new_file = ImageJob.objects.get(batch=old, index=0).image.name
    assert new_file
    assert default_storage.exists(new_file)

    # Within the retention of the redraw's finish: the new take stays.
    out = StringIO()
    call_command("prune_panels", stdout=out)
    assert f"#{old.pk}" not in out.getvalue()
    assert default_storage.exists(new_file)

    days_pass(old, 31)
    out = StringIO()
    call_command("prune_panels", stdout=out)

    assert f"#{old.pk}" in out.getvalue()
    assert "removed 1 file(s)" in out.getvalue()
    assert not default_storage.exists(new_file)
    assert ImageJob.objects.get(batch=old, index=0).image.name == ""
    second_prune = Batch.objects.get(pk=old.pk).panels_expired_at
    assert second_prune is not None
    assert second_prune > first_prune
    assert check_books() == []
