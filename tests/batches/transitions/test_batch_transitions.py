"""A batch's own moves (start, cancel request, finish, reopen, event numbers) and the reads every
caller shares (who may see it, loading it with its images, counts)."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, connections, transaction
from django.db.models import F
from django.test.utils import CaptureQueriesContext

from batches.models import Batch, BatchStatus, ImageJob
from tests.factories import UserFactory, make_batch, make_image

pytestmark = pytest.mark.django_db


def test_a_queued_batch_starts_once() -> None:
    batch = make_batch()
    assert Batch.objects.start(batch.pk)
    assert not Batch.objects.start(batch.pk)
    batch.refresh_from_db()
    assert batch.status == BatchStatus.RUNNING
    assert batch.started_at is not None


def test_a_cancel_is_requested_only_of_an_unfinished_batch() -> None:
    running = make_batch(running=True)
    done = make_batch(completed=True)

    assert Batch.objects.request_cancel(running.pk, "Stop.")
    assert not Batch.objects.request_cancel(done.pk, "Stop.")
    running.refresh_from_db()
    assert running.cancel_requested_at is not None
    assert running.cancel_reason == "Stop."


def test_exactly_one_caller_claims_a_batchs_finish() -> None:
    batch = make_batch(running=True)
    assert Batch.objects.claim_finish(batch.pk, BatchStatus.COMPLETED)
    assert not Batch.objects.claim_finish(batch.pk, BatchStatus.FAILED)
    batch.refresh_from_db()
    assert batch.status == BatchStatus.COMPLETED
    assert batch.finished_at is not None


def test_a_finished_batch_reopens_only_from_the_status_the_caller_saw() -> None:
    batch = make_batch(failed=True, cancel_reason="Stop.")

    assert not Batch.objects.reopen(batch.pk, BatchStatus.COMPLETED)
    assert Batch.objects.reopen(batch.pk, BatchStatus.FAILED)
    assert not Batch.objects.reopen(batch.pk, BatchStatus.FAILED)  # a second retry: nothing
    batch.refresh_from_db()
    assert (batch.status, batch.finished_at, batch.cancel_reason) == ("running", None, "")


def test_event_numbers_are_taken_in_ranges_without_gaps() -> None:
    batch = make_batch()
    assert Batch.objects.take_seqs(batch.pk) == 1
    assert Batch.objects.take_seqs(batch.pk, 5) == 6
    assert Batch.objects.take_seqs(batch.pk) == 7
    assert Batch.objects.take_seqs(10**12) is None
    assert Batch.objects.get(pk=batch.pk).seq == 7


@pytest.mark.django_db(transaction=True)
def test_taking_an_event_number_does_not_wait_for_the_batch_rows_lock() -> None:
    """A chunk's pass holds the Batch row while it charges; its events, and other chunks'
    events, must not queue behind it."""
    batch = make_batch()
    locked, release = threading.Event(), threading.Event()

    def charge_in_progress() -> None:
        with transaction.atomic():
            # What charge_attempts does to the batch row (hold_for_attempt likewise).
            Batch.objects.filter(pk=batch.pk).update(actual_cost=F("actual_cost") + 1)
            locked.set()
            release.wait(10)
        connections.close_all()

    holder = threading.Thread(target=charge_in_progress)
    holder.start()
    try:
        assert locked.wait(10)
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL lock_timeout = '2s'")
            assert Batch.objects.take_seqs(batch.pk, 3) == 3  # the seq row's first use
            assert Batch.objects.take_seqs(batch.pk) == 4
    finally:
        release.set()
        holder.join()


def test_authors_see_their_own_batches_and_staff_see_all() -> None:
    mine = make_batch()
    theirs = make_batch()
    staff = UserFactory(is_staff=True)

    assert list(Batch.objects.visible_to(mine.user)) == [mine]
    assert set(Batch.objects.visible_to(staff)) == {mine, theirs}


def test_a_batch_loads_with_its_images_in_panel_order_in_two_queries() -> None:
    batch = make_batch()
    for index in (2, 0, 1):
        make_image(batch=batch, index=index)

    with CaptureQueriesContext(connection) as queries:
        loaded = Batch.objects.with_images().get(pk=batch.pk)
        indexes = [image.index for image in loaded.images.all()]
    assert indexes == [0, 1, 2]
    assert len(queries) == 2


def test_counts_name_every_status_and_the_total() -> None:
    batch = make_batch(running=True)
    make_image(batch=batch, completed=True)
    make_image(batch=batch, completed=True)
    make_image(batch=batch, running=True)

    counts = batch.status_counts()
    assert counts["completed"] == 2
    assert counts["running"] == 1
    assert counts["failed"] == 0
    assert counts["total"] == 3
    assert ImageJob.objects.filter(batch=batch).unfinished().count() == 1


def test_a_batch_does_not_finish_while_one_of_its_images_is_unfinished() -> None:
    # A redraw or a retry may reopen an image after finalize looked: the claim checks again.
    batch = make_batch(running=True)
    make_image(batch=batch, completed=True)
    reopened = make_image(batch=batch)

    assert not Batch.objects.claim_finish(batch.pk, BatchStatus.COMPLETED)
    ImageJob.objects.filter(pk=reopened.pk).update(status="completed")
    assert Batch.objects.claim_finish(batch.pk, BatchStatus.COMPLETED)
