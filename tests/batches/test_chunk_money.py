"""The chunk loop charges every RunPod job it may have started exactly once, and one bad answer
fails only its own attempt. RunPod is faked at the HTTP boundary (`responses`); PostgreSQL and
Redis are real. Each test drives the loop pass by pass and ends with the books check."""

from __future__ import annotations

import base64
import io
import itertools
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
import responses
from django.db import connection
from django.utils import timezone
from PIL import Image

from batches import chunks, flow, services, webhooks
from batches.models import Batch, ImageJob, ImageStatus
from budgets import pricing
from budgets.books import check_books
from budgets.models import LedgerEntry

BASE = "https://runpod.test/v2/ep"
PARAMS = {"model": "sdxl", "width": 512, "height": 512, "steps": 20, "guidance": 7.0}


def png_data_uri() -> str:
    buffer = io.BytesIO()
    image = Image.new("RGB", (8, 8), (200, 30, 30))
    image.putpixel((0, 0), (250, 250, 250))  # not one flat colour: the quality gate passes it
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


Answer = Callable[[str, dict[str, Any]], dict[str, Any]]


class FakeRunPod:
    """RunPod's /run, /status and /cancel for one endpoint. `outcome(job_id, input)` gives the
    /status answer of a job; `run_failures` makes the next /run calls fail with that HTTP status
    (after creating the job, as a real timeout after RunPod accepted it does)."""

    def __init__(self, mock: responses.RequestsMock) -> None:
        self.ids = itertools.count(1)
        self.jobs: dict[str, dict[str, Any]] = {}
        self.run_failures: list[int] = []
        self.cancelled: list[str] = []
        self.cancel_refused_with = 0  # an HTTP status /cancel answers with instead of 200
        self.outcome: Answer = lambda job_id, job_input: completed(job_id)
        self.cancel_outcome: Answer = lambda job_id, job_input: {
            "id": job_id,
            "status": "CANCELLED",
        }
        mock.add_callback(responses.POST, f"{BASE}/run", lambda request: self.on_run(request))
        mock.add_callback(responses.GET, re.compile(rf"{BASE}/status/.+"), self.on_status)
        mock.add_callback(responses.POST, re.compile(rf"{BASE}/cancel/.+"), self.on_cancel)

    def on_run(self, request: Any) -> tuple[int, dict[str, str], str]:
        job_id = f"job-{next(self.ids)}"
        self.jobs[job_id] = json.loads(request.body)["input"]
        if self.run_failures:
            return self.run_failures.pop(0), {}, "upstream error"
        return 200, {}, json.dumps({"id": job_id, "status": "IN_QUEUE"})

    def on_status(self, request: Any) -> tuple[int, dict[str, str], str]:
        job_id = request.url.rsplit("/", 1)[1]
        if job_id not in self.jobs:
            return 404, {}, "not found"
        answer = self.outcome(job_id, self.jobs[job_id])
        if answer.get("status") == "GONE":
            return 404, {}, "job expired"
        return 200, {}, json.dumps(answer)

    def on_cancel(self, request: Any) -> tuple[int, dict[str, str], str]:
        job_id = request.url.rsplit("/", 1)[1]
        self.cancelled.append(job_id)
        self.outcome = self.cancel_outcome
        if self.cancel_refused_with:
            return self.cancel_refused_with, {}, "cannot cancel"
        return 200, {}, json.dumps({"id": job_id, "status": "CANCELLED"})


def completed(job_id: str, execution_ms: int = 1200, output: Any = None) -> dict[str, Any]:
    if output is None:
        output = {"images": [png_data_uri()], "seed": 1}
    return {
        "id": job_id,
        "status": "COMPLETED",
        "output": output,
        "delayTime": 40,
        "executionTime": execution_ms,
    }


@pytest.fixture
def runpod(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeRunPod]:
    settings.RUNPOD_BASE_URL = "https://runpod.test/v2"
    settings.RUNPOD_ENDPOINT_ID = "ep"
    settings.RUNPOD_API_KEY = "key"
    settings.COMICGEN_PUBLIC_URL = ""
    settings.RUNPOD_POLL_INTERVAL = 0.05
    settings.COMICGEN_RETRY_BASE_DELAY = 0
    settings.COMICGEN_MAX_ATTEMPTS = 3
    # Far above what the session's Celery worker may hold in the shared Redis meanwhile.
    settings.RUNPOD_MAX_IN_FLIGHT = 1000
    # Only this test's loop runs the batch: no chord is sent to the session's Celery worker.
    monkeypatch.setattr("batches.services.enqueue_batch", lambda batch, chunks=None: None)
    monkeypatch.setattr("batches.services.enqueue_batch_later", lambda *args: None)
    chunks._clients.__dict__.clear()  # a client built for another test's RunPod URL
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_passthru("http+unix://")
        yield FakeRunPod(mock)
    chunks._clients.__dict__.clear()


def submit(user: Any, prompts: list[str]) -> Batch:
    images = [{"prompt": prompt, "seed": 7, "params": dict(PARAMS)} for prompt in prompts]
    data = {"title": "money", "priority": "normal"}
    return services.submit_batch(user, data, images).batch


def chunk_of(batch: Batch) -> chunks.ChunkRun:
    lease = flow.ChunkLease(batch.pk, 0, owner="test")
    assert lease.acquire()
    run = chunks.ChunkRun(batch.pk, 0, lease)
    run.load(Batch.objects.get(pk=batch.pk))
    return run


def drive(run: chunks.ChunkRun, passes: int = 40) -> None:
    """Run passes until the chunk is done (polls are due every pass: interval 0.05 s)."""
    for _ in range(passes):
        run.last_checked.clear()
        if run.run_pass() is None:
            return
    raise AssertionError("the chunk did not finish")


def assert_books(batch: Batch) -> None:
    services.finalize_batch(batch.pk)
    assert check_books() == []


def charges(image: ImageJob) -> list[tuple[int, str, Decimal, int | None]]:
    rows = LedgerEntry.objects.filter(image=image, kind="charge").order_by("attempt")
    return list(rows.values_list("attempt", "runpod_job_id", "amount", "billed_ms"))


def price(execution_ms: int) -> Decimal:
    return pricing.actual_cost(PARAMS, execution_ms)


MAX_MS = pricing.attempt_max_billed_ms(PARAMS)


@pytest.mark.django_db
def test_a_job_cancelled_while_running_is_charged_the_time_it_ran(
    runpod: FakeRunPod, user: Any
) -> None:
    runpod.outcome = lambda job_id, _: {"id": job_id, "status": "IN_PROGRESS", "delayTime": 5}
    runpod.cancel_outcome = lambda job_id, _: {
        "id": job_id, "status": "CANCELLED", "delayTime": 5, "executionTime": 1500,
    }  # fmt: skip
    batch = submit(user, ["a long panel"])
    run = chunk_of(batch)
    run.run_pass()
    run.last_checked.clear()
    run.run_pass()
    assert ImageJob.objects.get(batch=batch).status == ImageStatus.RUNNING

    services.cancel_batch(batch)
    drive(run)

    image = ImageJob.objects.get(batch=batch)
    assert image.status == ImageStatus.CANCELLED
    assert runpod.cancelled == ["job-1"]
    assert charges(image) == [(1, "job-1", price(1500), 1500)]
    assert image.cost == price(1500) > 0
    assert_books(batch)


@pytest.mark.django_db
def test_a_job_cancelled_in_the_queue_is_charged_nothing(runpod: FakeRunPod, user: Any) -> None:
    runpod.outcome = lambda job_id, _: {"id": job_id, "status": "IN_QUEUE"}
    batch = submit(user, ["never started"])
    run = chunk_of(batch)
    run.run_pass()

    services.cancel_batch(batch)
    drive(run)

    image = ImageJob.objects.get(batch=batch)
    assert image.status == ImageStatus.CANCELLED
    assert charges(image) == [(1, "job-1", Decimal("0"), 0)]
    assert_books(batch)


@pytest.mark.django_db
def test_a_job_that_ran_past_its_timeout_is_charged_all_it_ran(
    runpod: FakeRunPod, user: Any
) -> None:
    overrun_ms = MAX_MS + 7000  # past the timeout and the hold's margin too
    runpod.outcome = lambda job_id, _: {
        "id": job_id, "status": "TIMED_OUT", "executionTime": overrun_ms, "delayTime": 1,
    }  # fmt: skip
    batch = submit(user, ["slow"])
    run = chunk_of(batch)
    run.run_pass()
    runpod.outcome = lambda job_id, _: completed(job_id) if job_id != "job-1" else {
        "id": job_id, "status": "TIMED_OUT", "executionTime": overrun_ms, "delayTime": 1,
    }  # fmt: skip
    drive(run)

    image = ImageJob.objects.get(batch=batch)
    assert image.status == ImageStatus.COMPLETED
    first, second = charges(image)
    assert first == (1, "job-1", price(overrun_ms), overrun_ms)
    assert first[2] > pricing.attempt_max_cost(PARAMS)  # more than the attempt held
    assert second == (2, "job-2", price(1200), 1200)
    assert_books(batch)


@pytest.mark.django_db
def test_a_job_whose_result_vanished_is_charged_its_maximum_and_retried(
    runpod: FakeRunPod, user: Any
) -> None:
    runpod.outcome = lambda job_id, _: (
        {"status": "GONE"} if job_id == "job-1" else completed(job_id)
    )
    batch = submit(user, ["expired"])
    drive(chunk_of(batch))

    image = ImageJob.objects.get(batch=batch)
    assert image.status == ImageStatus.COMPLETED
    assert charges(image) == [
        (1, "job-1", pricing.attempt_max_cost(PARAMS), MAX_MS),
        (2, "job-2", price(1200), 1200),
    ]
    assert_books(batch)


ODD_OUTPUTS: dict[str, Any] = {
    "images as a dict": {"images": {"0": "x"}},
    "a data URI without a comma": {"images": ["data:image/png;base64"]},
    "not base64": {"images": ["%%%not base64%%%"]},
    "a PNG header and garbage": {"images": ["iVBORw0KGgoAAAAAAAAAAAAA"]},
    "a URL on another host": {"images": ["https://169.254.169.254/latest/meta-data"]},
    "a URL that fails": {"images": ["https://bucket.runpod.io/missing.png"]},
    "an http URL": {"images": ["http://bucket.runpod.io/panel.png"]},
    "output as a list": ["not", "an", "object"],
    "output as a number": 12345678901234567890,
}


@pytest.mark.django_db
def test_odd_outputs_fail_only_their_own_attempt_and_the_chunk_goes_on(
    runpod: FakeRunPod, user: Any
) -> None:
    prompts = list(ODD_OUTPUTS)
    first_jobs: dict[str, str] = {}

    def outcome(job_id: str, job_input: dict[str, Any]) -> dict[str, Any]:
        # The first job RunPod ran for a prompt answers oddly; any later one is fine.
        first = first_jobs.setdefault(job_input["prompt"], job_id)
        if first == job_id:
            return completed(job_id, output=ODD_OUTPUTS.get(job_input["prompt"]))
        return completed(job_id)

    runpod.outcome = outcome
    batch = submit(user, [*prompts, "a good one"])
    drive(chunk_of(batch))

    images = {image.prompt: image for image in ImageJob.objects.filter(batch=batch)}
    assert all(image.status == ImageStatus.COMPLETED for image in images.values())
    assert images["a good one"].attempts == 1
    for prompt in prompts:
        image = images[prompt]
        assert image.attempts == 2, prompt
        first, second = charges(image)
        assert (first[0], first[1], second[0]) == (1, first_jobs[prompt], 2), prompt
    assert_books(batch)


@pytest.mark.django_db
def test_an_absurd_execution_time_is_charged_as_the_attempts_maximum(
    runpod: FakeRunPod, user: Any
) -> None:
    runpod.outcome = lambda job_id, _: completed(job_id, execution_ms=10**20)
    batch = submit(user, ["garbled timing"])
    drive(chunk_of(batch))

    image = ImageJob.objects.get(batch=batch)
    assert image.status == ImageStatus.COMPLETED
    assert image.execution_ms is None
    assert charges(image) == [(1, "job-1", pricing.attempt_max_cost(PARAMS), MAX_MS)]
    assert_books(batch)


@pytest.mark.django_db
def test_a_lost_run_answer_without_webhooks_is_charged_its_maximum_and_not_resent_blindly(
    runpod: FakeRunPod, user: Any
) -> None:
    runpod.run_failures = [500]
    batch = submit(user, ["ambiguous"])
    drive(chunk_of(batch))

    image = ImageJob.objects.get(batch=batch)
    assert image.status == ImageStatus.COMPLETED
    # The lost job (job-1) may have run: the ledger carries its worst case; it does not count
    # against the image's attempts.
    assert charges(image) == [
        (1, "", pricing.attempt_max_cost(PARAMS), MAX_MS),
        (2, "job-2", price(1200), 1200),
    ]
    assert (image.attempts, image.attempts_this_round) == (2, 1)
    assert_books(batch)


@pytest.mark.django_db
def test_a_lost_run_answer_with_webhooks_keeps_its_hold_and_adopts_the_job_from_its_webhook(
    runpod: FakeRunPod, user: Any, settings: Any
) -> None:
    settings.COMICGEN_PUBLIC_URL = "https://comicgen.test"
    runpod.run_failures = [502]
    batch = submit(user, ["ambiguous"])
    run = chunk_of(batch)
    run.run_pass()
    run.run_pass()

    image = ImageJob.objects.get(batch=batch)
    assert (image.status, image.runpod_job_id, image.attempts) == (ImageStatus.SUBMITTED, "", 1)
    assert image.hold == pricing.attempt_max_cost(PARAMS)
    assert Batch.objects.get(pk=batch.pk).held == image.hold
    assert len(runpod.jobs) == 1  # not submitted again

    token = webhooks.webhook_token(batch.pk, 0, image.pk, 1)
    assert webhooks.receive_webhook(batch.pk, 0, image.pk, 1, token, completed("job-1", 900))
    assert ImageJob.objects.get(pk=image.pk).webhook_job_id == "job-1"  # kept in PostgreSQL
    drive(run)

    image.refresh_from_db()
    assert image.status == ImageStatus.COMPLETED
    assert len(runpod.jobs) == 1
    # Adopted on RunPod's /status word (1200 ms), not on the webhook's (900 ms).
    assert charges(image) == [(1, "job-1", price(1200), 1200)]
    assert_books(batch)


def lost_run_ended_after_the_grace(runpod: FakeRunPod, user: Any, settings: Any) -> Batch:
    """A batch whose only attempt lost its /run answer and ended, after the grace, charged
    nothing; its second attempt completed."""
    settings.COMICGEN_PUBLIC_URL = "https://comicgen.test"
    runpod.run_failures = [504]
    batch = submit(user, ["ambiguous"])
    run = chunk_of(batch)
    run.run_pass()
    run.run_pass()
    assert len(runpod.jobs) == 1  # waiting for the lost job's word, not sending another
    grace = settings.COMICGEN_ORPHAN_GRACE_SECONDS + pricing.attempt_timeout_ms(PARAMS) / 1000
    ImageJob.objects.filter(batch=batch).update(
        submitted_at=timezone.now() - timedelta(seconds=grace + 1)
    )
    drive(run)
    services.finalize_batch(batch.pk)
    return batch


@pytest.mark.django_db
def test_a_forged_webhook_cannot_get_a_job_adopted_or_change_what_is_charged(
    runpod: FakeRunPod, user: Any, settings: Any
) -> None:
    settings.COMICGEN_PUBLIC_URL = "https://comicgen.test"
    runpod.run_failures = [502]
    batch = submit(user, ["ambiguous"])
    run = chunk_of(batch)
    run.run_pass()
    image = ImageJob.objects.get(batch=batch)
    token = webhooks.webhook_token(batch.pk, 0, image.pk, 1)
    forged = completed("forged-1", execution_ms=0)

    assert webhooks.receive_webhook(batch.pk, 0, image.pk, 1, token, forged)
    run.run_pass()

    image.refresh_from_db()
    assert (image.status, image.runpod_job_id, image.webhook_job_id) == ("submitted", "", "")
    # The real job's webhook still gets it adopted, at RunPod's figures.
    assert webhooks.receive_webhook(batch.pk, 0, image.pk, 1, token, completed("job-1", 5))
    drive(run)
    assert charges(ImageJob.objects.get(pk=image.pk)) == [(1, "job-1", price(1200), 1200)]
    assert_books(batch)


@pytest.mark.django_db
def test_a_job_that_reports_after_its_attempt_ended_uncharged_is_charged_late(
    runpod: FakeRunPod, user: Any, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    late: list[tuple[int, int, str]] = []
    monkeypatch.setattr(webhooks, "queue_late_charge", lambda *args: late.append(args))
    batch = lost_run_ended_after_the_grace(runpod, user, settings)
    image = ImageJob.objects.get(batch=batch)
    assert charges(image)[0] == (1, "", Decimal("0"), 0)
    budget_before = Batch.objects.get(pk=batch.pk).user.budget.spent

    # job-1 finally ran (1500 ms) and reports on attempt 1's webhook URL.
    runpod.outcome = lambda job_id, _: completed(job_id, execution_ms=1500)
    token = webhooks.webhook_token(batch.pk, 0, image.pk, 1)
    assert webhooks.receive_webhook(batch.pk, 0, image.pk, 1, token, completed("job-1", 1))
    assert late == [(image.pk, 1, "job-1")]
    assert chunks.charge_late_job(*late[0]) == "charged"
    assert chunks.charge_late_job(*late[0]) == "nothing to charge"  # once

    image.refresh_from_db()
    assert charges(image) == [(1, "job-1", price(1500), 1500), (2, "job-2", price(1200), 1200)]
    assert Batch.objects.get(pk=batch.pk).user.budget.spent == budget_before + price(1500)
    assert check_books() == []


@pytest.mark.django_db
def test_a_late_report_of_a_job_runpod_does_not_know_charges_nothing(
    runpod: FakeRunPod, user: Any, settings: Any
) -> None:
    batch = lost_run_ended_after_the_grace(runpod, user, settings)
    image = ImageJob.objects.get(batch=batch)

    assert chunks.charge_late_job(image.pk, 1, "forged-9") == "RunPod does not know this job"
    assert charges(image)[0] == (1, "", Decimal("0"), 0)
    assert check_books() == []


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("token", "payload"),
    [
        ("tøken-ñ", {"id": "job-1", "status": "COMPLETED"}),
        (None, {"id": "job-1", "status": ["COMPLETED"]}),
        (None, {"id": "job-1", "status": {"a": 1}}),
        (None, {"id": "x" * 101, "status": "COMPLETED"}),
        (None, {"id": "job\x00one", "status": "COMPLETED"}),
        (None, {"id": 12, "status": "COMPLETED"}),
        (None, ["job-1"]),
    ],
)
def test_a_hostile_webhook_is_refused_and_changes_nothing(
    runpod: FakeRunPod, user: Any, token: str | None, payload: Any
) -> None:
    batch = submit(user, ["target"])
    image = ImageJob.objects.get(batch=batch)
    token = token or webhooks.webhook_token(batch.pk, 0, image.pk, 0)

    assert webhooks.receive_webhook(batch.pk, 0, image.pk, 0, token, payload) is False
    image.refresh_from_db()
    assert (image.webhook_job_id, image.runpod_job_id) == ("", "")


@pytest.mark.django_db
def test_webhooks_naming_other_jobs_store_nothing_for_a_running_attempt(
    runpod: FakeRunPod, user: Any, settings: Any
) -> None:
    settings.COMICGEN_PUBLIC_URL = "https://comicgen.test"
    runpod.outcome = lambda job_id, _: {"id": job_id, "status": "IN_PROGRESS"}
    batch = submit(user, ["busy"])
    run = chunk_of(batch)
    run.run_pass()
    image = ImageJob.objects.get(batch=batch)
    token = webhooks.webhook_token(batch.pk, 0, image.pk, 1)

    for number in range(20):
        assert webhooks.receive_webhook(batch.pk, 0, image.pk, 1, token, completed(f"x-{number}"))

    assert list(flow.get_redis().scan_iter("comicgen:result:*")) == []


@pytest.mark.django_db
def test_a_lost_run_answer_never_confirmed_by_webhook_ends_uncharged_after_the_grace(
    runpod: FakeRunPod, user: Any, settings: Any
) -> None:
    batch = lost_run_ended_after_the_grace(runpod, user, settings)

    image = ImageJob.objects.get(batch=batch)
    assert len(runpod.jobs) == 2  # job-1 (its answer lost), then job-2 after the grace only
    assert image.status == ImageStatus.COMPLETED
    assert charges(image) == [(1, "", Decimal("0"), 0), (2, "job-2", price(1200), 1200)]
    assert image.attempts_this_round == 1
    assert check_books() == []


@pytest.mark.django_db
def test_a_rate_limited_run_gives_the_attempt_and_its_hold_back(
    runpod: FakeRunPod, user: Any
) -> None:
    runpod.run_failures = [429]
    batch = submit(user, ["throttled"])
    run = chunk_of(batch)
    run.run_pass()

    image = ImageJob.objects.get(batch=batch)
    assert (image.status, image.attempts, image.hold) == (ImageStatus.PENDING, 0, 0)
    assert Batch.objects.get(pk=batch.pk).held == 0
    ImageJob.objects.filter(pk=image.pk).update(next_attempt_at=None)
    drive(run)

    image.refresh_from_db()
    assert image.status == ImageStatus.COMPLETED
    # job-1 was refused by the rate limiter (never ran); job-2 is the only one charged.
    assert charges(image) == [(1, "job-2", price(1200), 1200)]
    assert_books(batch)


@pytest.mark.django_db
def test_a_pass_whose_calls_are_all_rate_limited_backs_off_once_not_once_per_call(
    runpod: FakeRunPod, user: Any
) -> None:
    """RunPod's rate limit refuses a pass's ten /run calls together: that is one refusal, and
    the images try again after the first step of the backoff (about a second), not after the
    backoff ten refusals in a row would earn (up to CALL_RETRY_MAX)."""
    runpod.run_failures = [429] * 10
    batch = submit(user, [f"throttled {number}" for number in range(10)])
    run = chunk_of(batch)

    run.run_pass()

    # Each retry is due within the first step (and its jitter) of the pass's end, however long
    # the pass took: ten refusals in a row would have earned a longer one.
    after = timezone.now()
    retry_at = [image.next_attempt_at for image in ImageJob.objects.filter(batch=batch)]
    first_step = chunks.CALL_RETRY_BASE * 2
    assert all(at is not None and at <= after + timedelta(seconds=first_step + 0.5)
               for at in retry_at)  # fmt: skip
    assert run.call_failures == 1
    assert Batch.objects.get(pk=batch.pk).held == 0


@pytest.mark.django_db
def test_a_retried_image_is_charged_for_every_new_attempt(runpod: FakeRunPod, user: Any) -> None:
    runpod.outcome = lambda job_id, _: {
        "id": job_id, "status": "FAILED", "error": "CUDA error", "executionTime": 300,
    }  # fmt: skip
    batch = submit(user, ["always fails"])
    for _round in range(3):
        drive(chunk_of(batch))
        services.finalize_batch(batch.pk)
        flow.ChunkLease(batch.pk, 0, owner="test").release()
        assert check_books() == []
        if _round < 2:
            services.retry_batch(Batch.objects.get(pk=batch.pk))

    image = ImageJob.objects.get(batch=batch)
    assert image.status == ImageStatus.FAILED
    assert image.attempts == 9
    assert [row[0] for row in charges(image)] == list(range(1, 10))
    assert image.cost == 9 * price(300)
    assert Batch.objects.get(pk=batch.pk).actual_cost == image.cost


@pytest.mark.django_db(transaction=True)
def test_a_cancel_before_the_claim_leaves_nothing_reserved(
    runpod: FakeRunPod, user: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = submit(user, ["cancelled under the chunk's feet"])
    run = chunk_of(batch)
    # The cancel (and the finalize it brings) lands just after this pass checked for one, while
    # its claim is not committed: the cancel waits for the claimed rows, the hold refuses the
    # cancelled batch and the claim is rolled back.
    real_hold = chunks.budget_services.hold_for_attempt
    cancels: list[threading.Thread] = []

    def hold_after_a_cancel(batch_id: int, max_cost: Decimal) -> bool:
        cancels.append(cancel_from_another_connection(batch_id, wait=0))
        # The cancel commits its request at once, then waits for the claimed rows: hold once
        # the request is visible (a fixed wait failed on a slow machine, the hold then won).
        deadline = time.monotonic() + 10
        cancel_asked = Batch.objects.filter(pk=batch_id, cancel_requested_at__isnull=False)
        while not cancel_asked.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return real_hold(batch_id, max_cost)

    monkeypatch.setattr(chunks.budget_services, "hold_for_attempt", hold_after_a_cancel)
    run.run_pass()
    for cancel in cancels:
        cancel.join(10)

    assert Batch.objects.get(pk=batch.pk).status == "cancelled"
    assert len(runpod.jobs) == 0
    assert check_books() == []


@pytest.mark.django_db(transaction=True)
def test_a_cancel_during_the_claim_and_hold_leaves_the_holds_balanced(
    runpod: FakeRunPod, user: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = submit(user, ["cancelled mid-claim"])
    run = chunk_of(batch)
    real_hold = chunks.budget_services.hold_for_attempt

    def cancel_after_the_hold(batch_id: int, max_cost: Decimal) -> bool:
        held = real_hold(batch_id, max_cost)
        # The chunk's claim-and-hold transaction holds the batch row from the hold to its
        # commit, so the cancel waits for it instead of slipping in: give up waiting after
        # half a second.
        cancel_from_another_connection(batch_id, wait=0.5)
        return held

    monkeypatch.setattr(chunks.budget_services, "hold_for_attempt", cancel_after_the_hold)
    run.run_pass()
    drive(run)
    services.finalize_batch(batch.pk)

    assert Batch.objects.get(pk=batch.pk).held == 0
    assert check_books() == []


def cancel_from_another_connection(batch_id: int, wait: float | None = None) -> threading.Thread:
    """Cancel the batch from another thread (so another PostgreSQL connection) and wait for it,
    at most `wait` seconds. Returns the thread."""

    def cancel() -> None:
        try:
            services.cancel_batch(Batch.objects.get(pk=batch_id))
        finally:
            connection.close()

    thread = threading.Thread(target=cancel)
    thread.start()
    thread.join(wait)
    return thread


@pytest.mark.django_db
def test_a_worker_lost_between_hold_and_claim_leaves_no_hold_behind(
    runpod: FakeRunPod, user: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = submit(user, ["lost worker"])
    run = chunk_of(batch)

    class WorkerLost(Exception):
        pass

    def dies_at_the_claim(*args: Any, **kwargs: Any) -> Any:
        raise WorkerLost

    monkeypatch.setattr(chunks.ImageJob.objects, "claim_attempts", dies_at_the_claim)
    with pytest.raises(WorkerLost):
        run.run_pass()
    monkeypatch.undo()

    assert Batch.objects.get(pk=batch.pk).held == 0
    assert check_books() == []


@pytest.mark.django_db
def test_a_refused_cancel_still_ends_the_job_charged_what_it_ran(
    runpod: FakeRunPod, user: Any
) -> None:
    runpod.outcome = lambda job_id, _: {"id": job_id, "status": "IN_PROGRESS"}
    batch = submit(user, ["refused cancel"])
    run = chunk_of(batch)
    run.run_pass()

    # RunPod refuses the cancel (the job is ending on its own); /status still says what it ran.
    runpod.cancel_refused_with = 400
    runpod.cancel_outcome = lambda job_id, _: {
        "id": job_id, "status": "FAILED", "executionTime": 700, "error": "stopped",
    }  # fmt: skip
    services.cancel_batch(batch)
    drive(run)

    image = ImageJob.objects.get(batch=batch)
    assert image.status == ImageStatus.CANCELLED
    assert charges(image) == [(1, "job-1", price(700), 700)]
    assert_books(batch)


@pytest.mark.django_db
def test_an_odd_output_found_by_a_poll_is_charged_what_the_job_ran(
    runpod: FakeRunPod, user: Any
) -> None:
    def outcome(job_id: str, _: dict[str, Any]) -> dict[str, Any]:
        if job_id == "job-1":
            return completed(job_id, output={"images": ["https://[bucket.runpod.io/p.png"]})
        return completed(job_id)

    runpod.outcome = outcome
    batch = submit(user, ["unparseable URL"])
    drive(chunk_of(batch))

    image = ImageJob.objects.get(batch=batch)
    assert image.status == ImageStatus.COMPLETED
    assert charges(image)[0] == (1, "job-1", price(1200), 1200)
    assert_books(batch)


@pytest.mark.django_db
def test_a_job_a_webhook_named_for_an_earlier_attempt_is_never_adopted_for_a_later_one(
    runpod: FakeRunPod, user: Any, settings: Any
) -> None:
    settings.COMICGEN_PUBLIC_URL = "https://comicgen.test"
    runpod.outcome = lambda job_id, _: {"id": job_id, "status": "FAILED", "executionTime": 80}
    batch = submit(user, ["unlucky"])
    run = chunk_of(batch)
    run.run_pass()
    # job-1's webhook came before its /run answer did: noted on the image.
    ImageJob.objects.filter(batch=batch).update(webhook_job_id="job-1")
    runpod.run_failures = [502]  # attempt 2 loses its /run answer
    run.last_checked.clear()
    run.run_pass()
    run.last_checked.clear()
    run.run_pass()
    run.run_pass()

    image = ImageJob.objects.get(batch=batch)
    assert (image.attempts, image.status, image.runpod_job_id) == (2, "submitted", "")
    assert charges(image) == [(1, "job-1", price(80), 80)]
