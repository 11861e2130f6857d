"""A retry of a batch and, at the same moment, a redraw of its failed panel or a staff delete of
the batch, from two requests on two PostgreSQL connections: one wins, the other is refused
(a 409 the author can act on, or the admin's message), never a deadlock (a 500), and the books
balance."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.db.models import F
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from batches import retention, services
from batches.models import Batch, BatchStatus, ImageJob, ImageStatus, ImageVersion
from budgets import pricing
from budgets import services as budget_services
from budgets.books import check_books
from tests.authoring.support import complete_image, submitted
from tests.factories import UserFactory

# Each request waits this long, after its first row lock, for the other to take its own: long
# enough for the two to interleave as badly as they can, short enough that a request blocked
# behind the other's lock does not hold the test up for long.
BOTH_LOCKED_WAIT_SECONDS = 3.0


@pytest.fixture(autouse=True)
def _no_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the locks are under test: the session's Celery worker (started by integration
    tests) must not run a retried or redrawn batch, moving its money, while the books are
    checked. No chord is sent; the chunks are still marked queued, as a sent chord leaves them,
    so the sweeper does not send them either."""
    monkeypatch.setattr(services, "chord", lambda header: lambda callback: None)


def fail_image(image: ImageJob) -> None:
    """One attempt of `image` held, charged (it ran) and failed, as the chunk loop does it."""
    max_cost = pricing.attempt_max_cost(image.params)
    assert budget_services.hold_for_attempt(image.batch_id, max_cost)
    ImageJob.objects.filter(pk=image.pk).update(
        status=ImageStatus.RUNNING, attempts=F("attempts") + 1, hold=max_cost
    )
    image.refresh_from_db()
    job_id = f"job-{image.pk}-{image.attempts}"
    ImageJob.objects.filter(pk=image.pk).update(
        status=ImageStatus.FAILED, hold=Decimal("0"), error="the worker failed",
        runpod_job_id=job_id, finished_at=timezone.now(),
    )  # fmt: skip
    cost = budget_services.billable_cost(image, 400)
    budget_services.charge_attempt(image, image.attempts, cost, max_cost, job_id=job_id)


def is_row_lock(sql: str) -> bool:
    """A statement that locks a batch's or an image's row: SELECT ... FOR UPDATE or UPDATE."""
    text = sql.lstrip().upper()
    touches = '"BATCHES_BATCH"' in text or '"BATCHES_IMAGEJOB"' in text
    return touches and ("FOR UPDATE" in text or text.startswith("UPDATE"))


def race(
    calls: dict[str, Callable[[], Any]],
) -> tuple[dict[str, Any], dict[str, BaseException]]:
    """Run two requests on two connections so that each takes its first row lock before
    either goes on (or, when one is blocked by the other's lock, after a short wait): the
    worst interleaving for lock order. Returns their answers and the errors they raised."""
    first, second = calls
    locked = {name: threading.Event() for name in calls}
    responses: dict[str, Any] = {}
    errors: dict[str, BaseException] = {}

    def run(name: str) -> None:
        other = locked[second if name == first else first]

        def after_first_lock(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
            result = execute(sql, params, many, context)
            if not locked[name].is_set() and is_row_lock(sql):
                locked[name].set()
                other.wait(BOTH_LOCKED_WAIT_SECONDS)
            return result

        try:
            with connection.execute_wrapper(after_first_lock):
                responses[name] = calls[name]()
        except BaseException as error:  # reported to the test's thread
            errors[name] = error
        finally:
            locked[name].set()  # never leave the other request waiting for this one
            connection.close()

    threads = [threading.Thread(target=run, args=(name,)) for name in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return responses, errors


def partial_batch(user: Any) -> Batch:
    """A finished batch with one drawn panel and one failed one."""
    batch = submitted(user, ["Mara opens the vault", "the vault is empty"])
    complete_image(batch.images.get(index=0), (40, 90, 160))
    fail_image(batch.images.get(index=1))
    services.finalize_batch(batch.pk)
    batch.refresh_from_db()
    assert batch.status == BatchStatus.PARTIAL
    return batch


def api_client(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.mark.django_db(transaction=True)
def test_a_retry_and_a_redraw_of_the_same_failed_panel_never_deadlock(user: Any) -> None:
    batch = partial_batch(user)
    retry, redraw = api_client(user), api_client(user)

    responses, errors = race(
        {
            "retry": lambda: retry.post(f"/api/v1/batches/{batch.pk}/retry/"),
            "redraw": lambda: redraw.post(
                f"/api/v1/batches/{batch.pk}/images/1/redraw/",
                {"prompt": "the vault is full"},
                format="json",
            ),
        }
    )

    assert errors == {}
    statuses = sorted(response.status_code for response in responses.values())
    assert statuses == [202, 409], {name: r.json() for name, r in responses.items()}
    refused = next(r for r in responses.values() if r.status_code == 409)
    assert refused.json()["code"] == "conflict"
    image = ImageJob.objects.get(batch=batch, index=1)
    assert image.status == ImageStatus.PENDING
    winner = next(name for name, r in responses.items() if r.status_code == 202)
    # The redraw's new prompt is there only when the redraw won.
    assert (image.prompt == "the vault is full") == (winner == "redraw")
    assert Batch.objects.get(pk=batch.pk).status == BatchStatus.RUNNING
    assert check_books() == []


@pytest.mark.django_db(transaction=True)
def test_a_retry_and_a_staff_delete_of_the_same_batch_never_deadlock(user: Any) -> None:
    batch = partial_batch(user)
    retry = api_client(user)
    staff = Client()
    staff.force_login(UserFactory(username="staffer", is_staff=True, is_superuser=True))

    responses, errors = race(
        {
            "retry": lambda: retry.post(f"/api/v1/batches/{batch.pk}/retry/"),
            "delete": lambda: staff.post(
                f"/admin/batches/batch/{batch.pk}/delete/", {"post": "yes"}
            ),
        }
    )

    assert errors == {}
    assert responses["delete"].status_code == 302
    deleted = not Batch.objects.filter(pk=batch.pk).exists()
    # Whichever came first wins: a deleted batch cannot be retried (404 or 409), and a batch
    # a retry reopened is running, which the admin refuses to delete.
    if deleted:
        assert responses["retry"].status_code in (404, 409), responses["retry"].json()
    else:
        assert responses["retry"].status_code == 202, responses["retry"].json()
        assert Batch.objects.get(pk=batch.pk).status == BatchStatus.RUNNING
    assert check_books() == []


@pytest.mark.django_db(transaction=True)
def test_a_prune_and_a_redraw_of_the_same_batch_never_deadlock(user: Any) -> None:
    batch = partial_batch(user)
    Batch.objects.filter(pk=batch.pk).update(finished_at=timezone.now() - timedelta(days=40))
    redraw = api_client(user)

    responses, errors = race(
        {
            "prune": lambda: retention.prune_panels(),
            "redraw": lambda: redraw.post(
                f"/api/v1/batches/{batch.pk}/images/0/redraw/", {}, format="json"
            ),
        }
    )

    assert errors == {}
    assert responses["redraw"].status_code == 202, responses["redraw"].json()
    pruned = batch.pk in responses["prune"].batches
    batch.refresh_from_db()
    # A prune that came first removed the take's file: the redraw keeps no take of it. One
    # that came second found the batch reopened and left it alone.
    assert (batch.panels_expired_at is not None) == pruned
    assert ImageVersion.objects.filter(image__batch=batch).count() == (0 if pruned else 1)
    assert batch.status == BatchStatus.RUNNING
    assert check_books() == []
