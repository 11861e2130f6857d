"""An attempt starts: claim (with its hold), record the job id /run returned, or give it back."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from batches.models import ImageJob, ImageStatus
from tests.factories import make_image

pytestmark = pytest.mark.django_db
HOLD = Decimal("0.004")


def test_a_claim_starts_the_next_attempt_of_waiting_images_with_their_hold() -> None:
    pending = make_image()
    retrying = make_image(retrying=True, batch=pending.batch)

    won = ImageJob.objects.claim_attempts([(pending, HOLD), (retrying, Decimal("0.002"))])

    assert sorted(won) == sorted([pending.pk, retrying.pk])
    pending.refresh_from_db()
    retrying.refresh_from_db()
    assert (pending.status, pending.attempts, pending.hold) == ("submitted", 1, HOLD)
    assert (retrying.status, retrying.attempts, retrying.hold) == ("submitted", 2, Decimal("0.002"))
    assert retrying.next_attempt_at is None
    assert pending.submitted_at is not None


def test_a_claim_loses_for_an_image_another_runner_moved_since_it_was_read() -> None:
    image = make_image()
    stale = ImageJob.objects.get(pk=image.pk)
    assert ImageJob.objects.claim_attempts([(image, HOLD)]) == [image.pk]

    # The same image, as a second runner read it before the first claim: it wins nothing.
    assert ImageJob.objects.claim_attempts([(stale, HOLD)]) == []
    assert ImageJob.objects.get(pk=image.pk).attempts == 1


def test_a_claim_never_starts_an_image_that_holds_a_job_or_has_ended() -> None:
    on_runpod = make_image(on_runpod=True)
    completed = make_image(completed=True, batch=on_runpod.batch)
    cancelled = make_image(cancelled=True, batch=on_runpod.batch)
    # Read as waiting (a stale copy): the row says otherwise.
    for image in (on_runpod, completed, cancelled):
        image.status = ImageStatus.PENDING

    assert (
        ImageJob.objects.claim_attempts([(i, HOLD) for i in (on_runpod, completed, cancelled)])
        == []
    )


def test_a_claim_clears_a_job_a_webhook_named_for_an_earlier_attempt() -> None:
    image = make_image(retrying=True, webhook_job_id="job-of-attempt-1")
    ImageJob.objects.claim_attempts([(image, HOLD)])
    assert ImageJob.objects.get(pk=image.pk).webhook_job_id == ""


def test_the_job_id_is_recorded_once_and_only_for_the_attempt_that_ran_it() -> None:
    image = make_image(submitted=True)
    other = make_image(submitted=True, batch=image.batch)

    rows = [(image.pk, 1, "job-a"), (other.pk, 2, "job-b")]  # `other` is on attempt 1, not 2
    assert ImageJob.objects.record_jobs(rows) == [image.pk]
    assert ImageJob.objects.record_jobs([(image.pk, 1, "job-c")]) == []
    assert ImageJob.objects.get(pk=image.pk).runpod_job_id == "job-a"
    assert ImageJob.objects.get(pk=other.pk).runpod_job_id == ""


def test_a_claim_whose_run_never_reached_runpod_is_given_back() -> None:
    image = make_image(submitted=True)
    retry_at = timezone.now() + timedelta(seconds=5)

    assert ImageJob.objects.give_back_attempt(image.pk, 1, ImageStatus.RETRYING, retry_at)
    image.refresh_from_db()
    assert (image.status, image.attempts, image.hold) == ("retrying", 0, Decimal("0"))
    assert image.next_attempt_at == retry_at
    # Only once, and never for an attempt that has a job.
    assert not ImageJob.objects.give_back_attempt(image.pk, 1, ImageStatus.RETRYING, retry_at)
    on_runpod = make_image(on_runpod=True, batch=image.batch)
    assert not ImageJob.objects.give_back_attempt(on_runpod.pk, 1, ImageStatus.PENDING, retry_at)
