"""What a webhook leaves in the mailbox for its chunk: the result of the job the attempt ran,
even when it arrives before the chunk has written the job id /run returned (a fast job reports
within milliseconds), and nothing for jobs it has no reason to believe in."""

from __future__ import annotations

import pytest

from batches import webhooks
from batches.models import ImageJob, ImageJobQuerySet
from tests.factories import make_image

pytestmark = pytest.mark.django_db


def report(image: ImageJob, job_id: str, status: str = "COMPLETED") -> bool:
    token = webhooks.webhook_token(image.batch_id, 0, image.pk, image.attempts)
    payload = {"id": job_id, "status": status, "executionTime": 900, "output": {}}
    return webhooks.receive_webhook(image.batch_id, 0, image.pk, image.attempts, token, payload)


def test_a_report_before_the_job_id_is_recorded_waits_for_the_chunk() -> None:
    image = make_image(submitted=True)  # claimed, /run answered, id not written yet

    assert report(image, "job-fast")

    # The chunk records the id /run returned, then takes the result: no /status poll needed.
    assert ImageJob.objects.record_jobs([(image.pk, 1, "job-fast")]) == [image.pk]
    taken = webhooks.take_results(["job-fast"])
    assert taken["job-fast"]["status"] == "COMPLETED"
    assert ImageJob.objects.get(pk=image.pk).webhook_job_id == "job-fast"


def test_only_the_first_report_for_an_attempt_without_a_job_is_kept() -> None:
    image = make_image(submitted=True)

    assert report(image, "job-first")
    for number in range(5):
        assert report(image, f"job-other-{number}")

    others = [f"job-other-{number}" for number in range(5)]
    assert webhooks.take_results(others) == {}
    assert set(webhooks.take_results(["job-first"])) == {"job-first"}


def test_a_report_on_a_recorded_job_is_kept_and_one_on_another_job_is_not() -> None:
    image = make_image(on_runpod=True)

    assert report(image, image.runpod_job_id)
    assert report(image, "job-forged")

    assert set(webhooks.take_results([image.runpod_job_id, "job-forged"])) == {image.runpod_job_id}


def test_a_report_racing_the_chunk_that_records_its_job_id_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The webhook reads the image before the chunk writes the job id, and notes the job after:
    the note finds the id written and fails. The result must still wait for the chunk, or the
    chunk learns of the job's end only at its next /status poll (seconds later)."""
    image = make_image(submitted=True)
    note_webhook_job = ImageJobQuerySet.note_webhook_job

    def chunk_records_first(self: ImageJobQuerySet, image_id: int, attempt: int, job: str) -> bool:
        ImageJob.objects.record_jobs([(image_id, attempt, job)])
        return note_webhook_job(self, image_id, attempt, job)

    monkeypatch.setattr(ImageJobQuerySet, "note_webhook_job", chunk_records_first)

    assert report(image, "job-fast")

    assert ImageJob.objects.get(pk=image.pk).runpod_job_id == "job-fast"
    assert webhooks.take_results(["job-fast"])["job-fast"]["status"] == "COMPLETED"
