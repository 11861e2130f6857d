"""An attempt runs and ends: marked running, ended once (whoever reports first), or ended with
no job; waiting images cancelled; failed ones reopened for the owner's retry."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db.models import F
from django.utils import timezone

from batches.models import AttemptEnding, ImageJob, ImageStatus
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


def test_many_attempts_end_in_one_call_each_once_with_its_own_fields() -> None:
    batch = make_batch(running=True)
    done, failed, ended_before, stale = (make_image(batch=batch, running=True) for _ in range(4))
    unconfirmed = make_image(batch=batch, submitted=True)
    ImageJob.objects.end_attempt(ended_before.pk, 1, ended_before.runpod_job_id, status="failed")
    finished_at = timezone.now()

    won = ImageJob.objects.end_attempts(
        [
            AttemptEnding(done.pk, 1, done.runpod_job_id, {
                "status": ImageStatus.COMPLETED, "image": "panels/a.png", "error": "",
                "finished_at": finished_at, "delay_ms": 12, "execution_ms": 900,
            }),
            AttemptEnding(failed.pk, 1, failed.runpod_job_id, {
                "status": ImageStatus.RETRYING, "runpod_job_id": "", "error": "boom",
                "next_attempt_at": finished_at, "delay_ms": None, "execution_ms": 5,
            }),
            # Already ended by a webhook, and a report on another job: neither is ended again.
            AttemptEnding(ended_before.pk, 1, ended_before.runpod_job_id, {
                "status": ImageStatus.COMPLETED, "image": "panels/b.png", "error": "",
                "finished_at": finished_at, "delay_ms": 1, "execution_ms": 1,
            }),
            AttemptEnding(stale.pk, 1, "another-job", {
                "status": ImageStatus.COMPLETED, "image": "panels/c.png", "error": "",
                "finished_at": finished_at, "delay_ms": 1, "execution_ms": 1,
            }),
            AttemptEnding(unconfirmed.pk, 1, "", {
                "status": ImageStatus.RETRYING,
                "attempts_before_retry": F("attempts_before_retry") + 1,
            }),
        ]
    )  # fmt: skip

    assert won == {done.pk, failed.pk, unconfirmed.pk}
    rows = {image.pk: image for image in ImageJob.objects.filter(batch=batch)}
    assert (rows[done.pk].status, rows[done.pk].image.name, rows[done.pk].finished_at) == (
        "completed", "panels/a.png", finished_at,
    )  # fmt: skip
    assert (rows[done.pk].delay_ms, rows[done.pk].execution_ms, rows[done.pk].hold) == (
        12, 900, Decimal("0"),
    )  # fmt: skip
    assert (rows[failed.pk].status, rows[failed.pk].runpod_job_id, rows[failed.pk].error) == (
        "retrying", "", "boom",
    )  # fmt: skip
    assert (rows[failed.pk].delay_ms, rows[failed.pk].next_attempt_at) == (None, finished_at)
    assert (rows[ended_before.pk].status, rows[ended_before.pk].image.name) == ("failed", "")
    assert rows[stale.pk].status == ImageStatus.RUNNING
    assert rows[unconfirmed.pk].attempts_before_retry == 1


def test_an_image_listed_twice_in_one_call_is_refused() -> None:
    image = make_image(running=True)
    twice = [AttemptEnding(image.pk, 1, image.runpod_job_id, {"status": "completed"})] * 2

    with pytest.raises(ValueError, match="one attempt per call"):
        ImageJob.objects.end_attempts(twice)
    assert ImageJob.objects.get(pk=image.pk).status == ImageStatus.RUNNING


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
