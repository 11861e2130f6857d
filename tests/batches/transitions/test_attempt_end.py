"""An attempt runs and ends: marked running, ended once (whoever reports first), or ended with
no job; waiting images cancelled; failed ones reopened for the owner's retry."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db.models import F

from batches.models import ImageJob, ImageStatus
from tests.factories import make_batch, make_image

pytestmark = pytest.mark.django_db


def test_only_submitted_images_whose_job_started_are_marked_running() -> None:
    image = make_image(on_runpod=True)
    already = make_image(running=True, batch=image.batch)

    changed = ImageJob.objects.mark_running(
        [(image.pk, "wrong-job"), (already.pk, already.runpod_job_id)]
    )
    assert changed == []
    assert ImageJob.objects.mark_running([(image.pk, image.runpod_job_id)]) == [image.pk]
    assert ImageJob.objects.get(pk=image.pk).status == ImageStatus.RUNNING


def test_an_attempt_ends_once_whoever_reports_it_first() -> None:
    image = make_image(running=True)
    job = image.runpod_job_id

    assert ImageJob.objects.end_attempt(image.pk, 1, job, status=ImageStatus.COMPLETED)
    # The poll that read the same job a moment later, and a redelivered task: nothing.
    assert not ImageJob.objects.end_attempt(image.pk, 1, job, status=ImageStatus.RETRYING)
    image.refresh_from_db()
    assert (image.status, image.hold) == (ImageStatus.COMPLETED, Decimal("0"))


def test_an_attempt_is_not_ended_by_a_report_on_another_job_or_attempt() -> None:
    image = make_image(running=True)

    assert not ImageJob.objects.end_attempt(image.pk, 1, "another-job", status="completed")
    assert not ImageJob.objects.end_attempt(image.pk, 2, image.runpod_job_id, status="completed")
    assert ImageJob.objects.get(pk=image.pk).status == ImageStatus.RUNNING


def test_an_attempt_whose_job_was_never_learned_ends_by_its_empty_job_id() -> None:
    image = make_image(submitted=True)
    assert ImageJob.objects.end_attempt(
        image.pk, 1, "", status=ImageStatus.RETRYING,
        attempts_before_retry=F("attempts_before_retry") + 1,
    )  # fmt: skip
    image.refresh_from_db()
    assert (image.status, image.attempts_before_retry, image.attempts_this_round) == (
        ImageStatus.RETRYING, 1, 0,
    )  # fmt: skip


def test_an_image_without_a_job_ends_once_and_an_image_with_one_does_not() -> None:
    image = make_image(submitted=True)
    on_runpod = make_image(on_runpod=True, batch=image.batch)

    assert ImageJob.objects.end_without_job(image.pk, 1, ImageStatus.FAILED, "refused")
    assert not ImageJob.objects.end_without_job(image.pk, 1, ImageStatus.CANCELLED, "again")
    assert not ImageJob.objects.end_without_job(on_runpod.pk, 1, ImageStatus.CANCELLED, "no")
    image.refresh_from_db()
    assert (image.status, image.error, image.hold) == ("failed", "refused", Decimal("0"))
    assert image.finished_at is not None


def test_cancel_waiting_cancels_only_the_batchs_images_without_a_job() -> None:
    batch = make_batch(running=True)
    pending = make_image(batch=batch)
    retrying = make_image(batch=batch, retrying=True)
    on_runpod = make_image(batch=batch, on_runpod=True)
    completed = make_image(batch=batch, completed=True)
    elsewhere = make_image()

    cancelled = ImageJob.objects.cancel_waiting(batch.pk, "Cancelled by the user.")

    assert sorted(cancelled) == sorted([pending.pk, retrying.pk])
    statuses = dict(ImageJob.objects.values_list("pk", "status"))
    assert statuses[on_runpod.pk] == ImageStatus.SUBMITTED
    assert statuses[completed.pk] == ImageStatus.COMPLETED
    assert statuses[elsewhere.pk] == ImageStatus.PENDING
    assert ImageJob.objects.get(pk=retrying.pk).next_attempt_at is None


def test_a_retry_reopens_failed_and_cancelled_images_with_a_fresh_attempt_limit() -> None:
    batch = make_batch(failed=True)
    failed = make_image(batch=batch, failed=True, hold=Decimal("0.1"))
    cancelled = make_image(batch=batch, cancelled=True)
    completed = make_image(batch=batch, completed=True)

    assert ImageJob.objects.reopen_for_retry([failed.pk, cancelled.pk, completed.pk]) == 2
    failed.refresh_from_db()
    assert (failed.status, failed.attempts, failed.attempts_this_round) == ("pending", 4, 0)
    assert (failed.error, failed.hold, failed.finished_at) == ("", Decimal("0"), None)
    assert ImageJob.objects.get(pk=completed.pk).status == ImageStatus.COMPLETED


def test_each_image_is_stamped_with_its_own_event_number() -> None:
    first = make_image()
    second = make_image(batch=first.batch)
    ImageJob.objects.stamp_seqs({first.pk: 11, second.pk: 12})
    assert dict(ImageJob.objects.values_list("pk", "seq")) == {first.pk: 11, second.pk: 12}
