"""The Batch admin: progress in the list, live progress on the change page, bulk actions;
no raw forms that bypass the services, and no deletion that strands money."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.test import Client

from batches import services
from batches.models import Batch, BatchStatus, ImageJob, ImageStatus
from budgets import services as budget_services
from budgets.models import Budget, LedgerEntry

pytestmark = pytest.mark.django_db


def test_the_list_shows_status_and_progress(
    staff_client: Client, user: Any, batch_factory: Any
) -> None:
    batch = batch_factory(user, ["a", "b", "c"], title="Admin chapter")
    batch.images.filter(index=0).update(status=ImageStatus.COMPLETED)

    html = staff_client.get("/admin/batches/batch/").content.decode()

    assert "Admin chapter" in html
    assert 'class="badge badge--queued"' in html
    assert "1/3" in html
    assert 'class="progress"' in html


def test_the_change_page_shows_the_live_progress_and_tiles(
    staff_client: Client, user: Any, batch_factory: Any
) -> None:
    batch = batch_factory(user, ["first", "second"])
    change_url = f"/admin/batches/batch/{batch.pk}/change/"

    html = staff_client.get(change_url).content.decode()

    assert f'ws-connect="/ws/batches/{batch.pk}/page/?next=' in html
    assert 'id="batch-progress"' in html
    assert html.count('class="tile tile--pending"') == 2
    assert f'<input type="hidden" name="next" value="{change_url}">' in html
    assert "django_htmx/htmx-2.min.js" in html
    # The live section sits before the admin's own form, never nested inside it.
    assert html.index('id="batch-progress"') < html.index('id="batch_form"')


def test_cancel_selected_batches(staff_client: Client, user: Any, batch_factory: Any) -> None:
    running = batch_factory(user, ["a"])
    done = batch_factory(user, ["b"])
    Batch.objects.filter(pk=done.pk).update(status=BatchStatus.COMPLETED)

    response = staff_client.post(
        "/admin/batches/batch/",
        {"action": "cancel_selected", "_selected_action": [running.pk, done.pk]},
        follow=True,
    )

    running.refresh_from_db()
    assert running.status == BatchStatus.CANCELLED
    html = response.content.decode()
    assert "Cancelling 1 batch(es)." in html
    assert f"Already finished, left alone: #{done.pk}." in html


def test_retry_failed_images(staff_client: Client, user: Any, batch_factory: Any) -> None:
    batch = batch_factory(user, ["ok", "bad"])
    batch.images.filter(index=0).update(status=ImageStatus.COMPLETED)
    batch.images.filter(index=1).update(status=ImageStatus.FAILED)
    Batch.objects.filter(pk=batch.pk).update(status=BatchStatus.PARTIAL, reserved=0)

    response = staff_client.post(
        "/admin/batches/batch/",
        {"action": "retry_failed", "_selected_action": [batch.pk]},
        follow=True,
    )

    batch.refresh_from_db()
    assert batch.status == BatchStatus.RUNNING
    assert batch.images.get(index=1).status == ImageStatus.PENDING
    assert "1 image(s) requeued." in response.content.decode()


# -- deleting: only finished batches, never leaving money reserved --------------------------


def _finish_with_a_charge(batch: Batch, cost: Decimal = Decimal("0.0002")) -> ImageJob:
    """Run a batch to `completed` through the services: each panel held, stored and charged
    once, then finalize releases the rest of the reservation. Returns the first panel."""
    hold = Decimal("0.001")
    first = None
    for image in batch.images.order_by("index"):
        assert budget_services.hold_for_attempt(batch.pk, hold)
        name = default_storage.save(f"panels/test/{image.pk}.png", ContentFile(b"\x89PNG"))
        ImageJob.objects.filter(pk=image.pk).update(
            status=ImageStatus.COMPLETED, attempts=1, image=name
        )
        assert budget_services.charge_attempt(image, 1, cost, hold)
        first = first or image
    assert services.finalize_batch(batch.pk) == BatchStatus.COMPLETED
    assert first is not None
    return first


def _running(batch: Batch) -> Batch:
    Batch.objects.filter(pk=batch.pk).update(status=BatchStatus.RUNNING)
    batch.refresh_from_db()
    return batch


def test_deleting_a_running_batch_is_refused_and_keeps_its_reservation(
    staff_client: Client, user: Any, batch_factory: Any
) -> None:
    batch = _running(batch_factory(user, ["a", "b"]))
    reserved = batch.reserved
    assert reserved > 0
    budget_reserved = Budget.objects.get(user=user).reserved
    url = f"/admin/batches/batch/{batch.pk}/delete/"

    response = staff_client.post(url, {"post": "yes"}, follow=True)

    assert response.redirect_chain[-1][0] == f"/admin/batches/batch/{batch.pk}/change/"
    html = response.content.decode()
    assert f"Not deleted. Batch #{batch.pk} is running" in html
    assert "Cancel it first" in html
    batch.refresh_from_db()
    assert batch.status == BatchStatus.RUNNING
    assert batch.reserved == reserved
    assert batch.images.count() == 2
    assert Budget.objects.get(user=user).reserved == budget_reserved
    # The confirmation page is refused the same way, and the change page offers no Delete.
    assert staff_client.get(url).status_code == 302
    change = staff_client.get(f"/admin/batches/batch/{batch.pk}/change/").content.decode()
    assert f'href="{url}"' not in change
    assert 'id="delete-refusal"' in change


def test_deleting_a_queued_batch_is_refused_too(
    staff_client: Client, user: Any, batch_factory: Any
) -> None:
    batch = batch_factory(user, ["a"])

    response = staff_client.post(f"/admin/batches/batch/{batch.pk}/delete/", {"post": "yes"})

    assert response.status_code == 302
    assert Batch.objects.filter(pk=batch.pk, status=BatchStatus.QUEUED).exists()


def test_deleting_a_finished_batch_keeps_its_ledger_rows_and_removes_its_files(
    staff_client: Client,
    user: Any,
    batch_factory: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    batch = batch_factory(user, ["a", "b"])
    panel = _finish_with_a_charge(batch)
    names = list(batch.images.values_list("image", flat=True))
    assert all(default_storage.exists(name) for name in names)
    entries = LedgerEntry.objects.filter(batch=batch)
    kinds = sorted(entries.values_list("kind", flat=True))
    assert kinds.count("charge") == 2
    assert "release" in kinds
    budget_before = Budget.objects.get(user=user)
    assert budget_before.reserved == 0
    url = f"/admin/batches/batch/{batch.pk}/delete/"

    confirm = staff_client.get(url)
    assert confirm.status_code == 200
    assert "Are you sure" in confirm.content.decode()  # no "permission to delete image jobs"
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(url, {"post": "yes"})

    assert response.status_code == 302
    assert not Batch.objects.filter(pk=batch.pk).exists()
    assert not ImageJob.objects.filter(pk=panel.pk).exists()
    orphaned = LedgerEntry.objects.filter(budget__user=user, batch__isnull=True)
    assert sorted(orphaned.values_list("kind", flat=True)) == kinds
    assert orphaned.filter(kind="charge", image__isnull=True).count() == 2
    # The books still add up: the budget's spent is the sum of its charges.
    budget = Budget.objects.get(user=user)
    charged = sum(e.amount for e in LedgerEntry.objects.filter(budget=budget, kind="charge"))
    assert budget.spent == charged == budget_before.spent
    assert budget.reserved == 0
    assert not any(default_storage.exists(name) for name in names)


def test_bulk_delete_skips_unfinished_batches_and_says_why(
    staff_client: Client,
    user: Any,
    batch_factory: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    running = _running(batch_factory(user, ["a"]))
    queued = batch_factory(user, ["b"])
    finished = batch_factory(user, ["c"])
    _finish_with_a_charge(finished)
    selected = [running.pk, queued.pk, finished.pk]

    # First the confirmation page: it lists only the finished batch and names the others.
    confirm = staff_client.post(
        "/admin/batches/batch/", {"action": "delete_selected", "_selected_action": selected}
    )
    html = confirm.content.decode()
    assert confirm.status_code == 200
    assert f"#{running.pk} (running), #{queued.pk} (queued)" in html
    assert f'value="{finished.pk}"' in html
    assert f'name="_selected_action" value="{running.pk}"' not in html

    # A confirmation that still names them (a stale page, a crafted POST) leaves them alone.
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(
            "/admin/batches/batch/",
            {"action": "delete_selected", "_selected_action": selected, "post": "yes"},
            follow=True,
        )

    assert set(Batch.objects.values_list("pk", flat=True)) == {running.pk, queued.pk}
    html = response.content.decode()
    assert "Successfully deleted 1 batch." in html
    assert f"Not deleted, still unfinished: #{running.pk} (running)" in html
    running.refresh_from_db()
    assert running.reserved > 0
    assert Budget.objects.get(user=user).reserved == running.reserved + queued.reserved


# -- no raw forms: batches come from the submit service, images are read-only ------------


def test_the_add_pages_answer_403_not_500(staff_client: Client) -> None:
    assert staff_client.get("/admin/batches/batch/add/").status_code == 403
    assert staff_client.post("/admin/batches/batch/add/", {"title": "raw"}).status_code == 403
    assert staff_client.get("/admin/batches/imagejob/add/").status_code == 403
    assert not Batch.objects.exists()


def test_the_list_points_to_the_authors_form_instead_of_add(staff_client: Client) -> None:
    html = staff_client.get("/admin/batches/batch/").content.decode()

    assert 'href="/batches/new/"' in html
    assert "/admin/batches/batch/add/" not in html


def test_posting_an_image_change_form_changes_nothing(
    staff_client: Client, user: Any, batch_factory: Any
) -> None:
    batch = _running(batch_factory(user, ["a"]))
    image = batch.images.get()
    ImageJob.objects.filter(pk=image.pk).update(
        status=ImageStatus.RUNNING, hold=Decimal("0.001"), attempts=1, runpod_job_id="job-1"
    )
    url = f"/admin/batches/imagejob/{image.pk}/change/"

    page = staff_client.get(url)
    response = staff_client.post(
        url,
        {
            "batch": batch.pk,
            "index": 0,
            "prompt": "changed",
            "seed": 1,
            "params": "{}",
            "status": ImageStatus.COMPLETED,
            "attempts": 0,
            "cost": "0",
            "hold": "0",
            "runpod_job_id": "",
        },
    )

    assert page.status_code == 200
    assert "View image job" in page.content.decode()
    assert response.status_code == 403
    image.refresh_from_db()
    assert (image.status, image.hold, image.attempts, image.runpod_job_id, image.prompt) == (
        ImageStatus.RUNNING,
        Decimal("0.001"),
        1,
        "job-1",
        "a",
    )
    assert staff_client.post(f"/admin/batches/imagejob/{image.pk}/delete/").status_code == 403
    assert ImageJob.objects.filter(pk=image.pk).exists()


def test_posting_a_batch_change_form_changes_only_the_title(
    staff_client: Client, user: Any, batch_factory: Any
) -> None:
    batch = _running(batch_factory(user, ["a", "b"]))
    before: dict[str, Any] = dict(Batch.objects.values().get(pk=batch.pk))
    image_ids = list(batch.images.order_by("index").values_list("pk", flat=True))
    form: dict[str, Any] = {
        "title": "Renamed",
        "status": BatchStatus.COMPLETED,
        "priority": "high",
        "params": '{"steps": 500}',
        "estimated_cost": "0",
        "actual_cost": "0",
        "reserved": "0",
        "held": "0",
        "images-TOTAL_FORMS": len(image_ids),
        "images-INITIAL_FORMS": len(image_ids),
        "images-MIN_NUM_FORMS": 0,
        "images-MAX_NUM_FORMS": 1000,
    }
    for n, image_id in enumerate(image_ids):
        form |= {f"images-{n}-id": image_id, f"images-{n}-batch": batch.pk}
        form |= {f"images-{n}-status": ImageStatus.COMPLETED, f"images-{n}-cost": "9"}

    response = staff_client.post(f"/admin/batches/batch/{batch.pk}/change/", form)

    assert response.status_code == 302, response.content.decode()[:2000]
    after: dict[str, Any] = dict(Batch.objects.values().get(pk=batch.pk))
    assert after["title"] == "Renamed"
    changed = {key for key in before if before[key] != after[key]}
    assert changed == {"title", "updated_at"}
    assert set(batch.images.values_list("status", flat=True)) == {ImageStatus.PENDING}
    assert set(batch.images.values_list("cost", flat=True)) == {Decimal("0")}


def test_the_change_pages_render_for_staff(
    staff_client: Client, user: Any, batch_factory: Any
) -> None:
    batch = batch_factory(user, ["a"])
    _finish_with_a_charge(batch)
    image = batch.images.get()

    assert staff_client.get(f"/admin/batches/batch/{batch.pk}/change/").status_code == 200
    assert staff_client.get(f"/admin/batches/imagejob/{image.pk}/change/").status_code == 200
    assert staff_client.get("/admin/batches/imagejob/").status_code == 200


# -- the change page of a running batch: live values, nothing the engine owns editable --------


def test_a_running_batchs_page_offers_only_the_title_for_editing(
    staff_client: Client, user: Any, batch_factory: Any
) -> None:
    batch = _running(batch_factory(user, ["a", "b"]))

    html = staff_client.get(f"/admin/batches/batch/{batch.pk}/change/").content.decode()

    form = html[html.index('id="batch_form"') :]
    editable = set(re.findall(r'<(?:input|select|textarea)[^>]*name="([a-z_]+)"', form))
    assert editable <= {"title", "csrfmiddlewaretoken", "_save", "_continue"}, editable
    assert 'name="title"' in form
    for owned in ("priority", "params", "status", "actual_cost", "reserved", "held"):
        assert f'name="{owned}"' not in form, owned
    # It says what is editable, and when the engine's values may be acted on.
    assert "Editable: the title only, at any time" in html
    assert "Cancel batch (above) while it runs; Retry and Delete once it has finished" in html


def test_the_state_and_money_fields_refresh_while_the_batch_runs(
    staff_client: Client, user: Any, batch_factory: Any
) -> None:
    batch = _running(batch_factory(user, ["a", "b"]))
    live_url = f"/admin/batches/batch/{batch.pk}/live-facts/"

    page = staff_client.get(f"/admin/batches/batch/{batch.pk}/change/").content.decode()
    assert f'hx-get="{live_url}" hx-trigger="every 3s" hx-swap="outerHTML"' in page
    assert 'data-field="actual_cost">0.000000 USD' in page

    # The engine charges a panel: the next refresh shows it, without reloading the page.
    batch.images.filter(index=0).update(status=ImageStatus.COMPLETED)
    Batch.objects.filter(pk=batch.pk).update(actual_cost=Decimal("0.001234"))
    fresh = staff_client.get(live_url)

    assert fresh.status_code == 200
    assert "no-store" in fresh["Cache-Control"]
    facts = fresh.content.decode()
    assert facts.startswith('<div id="batch-live-facts"')
    assert 'data-field="actual_cost">0.001234 USD' in facts
    assert "1 of 2 panels done" in facts
    assert 'hx-trigger="every 3s"' in facts  # still running: it keeps asking

    # Finished: the block shows the end and stops asking.
    Batch.objects.filter(pk=batch.pk).update(status=BatchStatus.COMPLETED)
    final = staff_client.get(live_url).content.decode()
    assert "hx-trigger" not in final
    assert "Allowed now that it has finished (reload this page for the Delete link)." in final
    assert 'data-field="status">Completed<' in final


def test_the_live_values_are_for_staff_only(
    author_client: Client, user: Any, batch_factory: Any
) -> None:
    batch = _running(batch_factory(user, ["a"]))

    response = author_client.get(f"/admin/batches/batch/{batch.pk}/live-facts/")

    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]
