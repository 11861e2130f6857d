"""An attempt whose /run answer was lost: a webhook names its job, which is adopted once RunPod
confirms it, or forgotten when RunPod does not know it."""

from __future__ import annotations

import pytest

from batches.models import ImageJob
from tests.factories import make_image

pytestmark = pytest.mark.django_db


def test_a_webhook_job_is_noted_only_for_the_attempt_with_no_job_and_only_once() -> None:
    image = make_image(submitted=True)

    assert not ImageJob.objects.note_webhook_job(image.pk, 2, "job-x")  # another attempt
    assert ImageJob.objects.note_webhook_job(image.pk, 1, "job-x")
    assert not ImageJob.objects.note_webhook_job(image.pk, 1, "job-forged")  # first one stays
    assert ImageJob.objects.get(pk=image.pk).webhook_job_id == "job-x"

    on_runpod = make_image(on_runpod=True, batch=image.batch)
    assert not ImageJob.objects.note_webhook_job(on_runpod.pk, 1, "job-y")


def test_a_noted_job_is_adopted_as_the_attempts_own() -> None:
    image = make_image(submitted=True, webhook_job_id="job-x")

    assert not ImageJob.objects.adopt_job(image.pk, 1, "job-other")
    assert ImageJob.objects.adopt_job(image.pk, 1, "job-x")
    assert ImageJob.objects.get(pk=image.pk).runpod_job_id == "job-x"
    assert not ImageJob.objects.adopt_job(image.pk, 1, "job-x")  # once


def test_a_job_runpod_does_not_know_is_forgotten() -> None:
    image = make_image(submitted=True, webhook_job_id="job-forged")

    assert not ImageJob.objects.forget_webhook_job(image.pk, "job-other")
    assert ImageJob.objects.forget_webhook_job(image.pk, "job-forged")
    assert ImageJob.objects.get(pk=image.pk).webhook_job_id == ""
