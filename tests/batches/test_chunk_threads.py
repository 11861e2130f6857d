"""How a chunk task uses its worker thread: a pass sends its /run calls at once and acts on each
answer for its own image, and a chunk with nothing at RunPod and no slot hands its thread over
to a better task waiting in the broker (another batch's first chunk). RunPod is faked at the
HTTP boundary; PostgreSQL, Redis and the broker's lists are real."""

from __future__ import annotations

import base64
import json
import threading
from typing import Any

import pytest

from batches import capacity, chunks, flow, limiter
from batches.models import Batch, ImageJob, ImageStatus
from budgets.books import check_books
from tests.batches.test_chunk_money import FakeRunPod, chunk_of, runpod, submit

__all__ = ["runpod"]  # the fixture, used by name

# A queue no worker of the test session consumes: the messages sent to it stay for the test to
# read (Batch.priority is the queue a batch's tasks go to).
QUEUE = "handover"


@pytest.fixture(autouse=True)
def _no_health(monkeypatch: pytest.MonkeyPatch) -> None:
    """The limiter's target is set by each test: no /health is read."""
    monkeypatch.setattr(capacity, "follow", lambda endpoint: None)


@pytest.fixture(autouse=True)
def _empty_queue() -> Any:
    yield
    client = flow.get_redis()
    client.delete(QUEUE, *(f"{QUEUE}{flow.BROKER_PRIORITY_SEPARATOR}{n}" for n in (3, 6, 9)))


@pytest.mark.django_db
def test_a_pass_sends_its_run_calls_at_once(runpod: FakeRunPod, user: Any) -> None:
    # Each /run answers only once all three are in: one after another, they would time out.
    arrived = threading.Barrier(3, timeout=5)
    on_run = runpod.on_run

    def together(request: Any) -> tuple[int, dict[str, str], str]:
        try:
            arrived.wait()
        except threading.BrokenBarrierError:
            return 503, {}, "the calls came one by one"
        return on_run(request)

    runpod.on_run = together  # type: ignore[method-assign]
    batch = submit(user, ["one", "two", "three"])
    run = chunk_of(batch)
    run.run_pass()

    images = ImageJob.objects.filter(batch=batch)
    assert {image.status for image in images} == {ImageStatus.SUBMITTED}
    assert sorted(image.runpod_job_id for image in images) == ["job-1", "job-2", "job-3"]


@pytest.mark.django_db
def test_each_run_answer_is_acted_on_for_its_own_image(runpod: FakeRunPod, user: Any) -> None:
    on_run = runpod.on_run

    def by_prompt(request: Any) -> tuple[int, dict[str, str], str]:
        prompt = json.loads(request.body)["input"]["prompt"]
        if "refused" in prompt:
            return 400, {}, "bad input"
        if "busy" in prompt:
            return 429, {}, "too many requests"
        return on_run(request)

    runpod.on_run = by_prompt  # type: ignore[method-assign]
    batch = submit(user, ["a refused panel", "a busy panel", "a good panel"])
    run = chunk_of(batch)
    run.run_pass()

    refused, busy, good = ImageJob.objects.filter(batch=batch).order_by("index")
    assert refused.status == ImageStatus.FAILED
    assert "RunPod refused the job" in refused.error
    # A 429 never reached a GPU: the attempt is given back and tried again later.
    assert busy.status == ImageStatus.PENDING
    assert busy.next_attempt_at is not None
    assert busy.hold == 0
    assert good.status == ImageStatus.SUBMITTED
    assert good.runpod_job_id == "job-1"
    assert check_books() == []


def fill_every_slot(endpoint: str) -> None:
    limiter.publish_target(endpoint, 1)
    assert limiter.acquire_slots(endpoint, [10**9], "normal", 0, "another chunk's waiter")


def a_task_waits_first() -> None:
    """A message in the queue's best-priority list, as another batch's first chunk is sent."""
    flow.get_redis().lpush(QUEUE, json.dumps({"a": "task waiting for a thread"}))


def sent_chunks(step: int) -> list[list[Any]]:
    """The chunk tasks waiting in the queue's list of this priority step, as their args (a
    message's body is base64 of [args, kwargs, options])."""
    name = f"{QUEUE}{flow.BROKER_PRIORITY_SEPARATOR}{step}"
    messages = [json.loads(raw) for raw in flow.get_redis().lrange(name, 0, -1)]
    return [json.loads(base64.b64decode(message["body"]))[0] for message in messages]


def later_chunk(user: Any) -> tuple[Batch, int]:
    """A batch of 60 panels on QUEUE and its chunk 5 (a later chunk, broker priority 9)."""
    batch = submit(user, [f"panel {n}" for n in range(60)])
    Batch.objects.filter(pk=batch.pk).update(priority=QUEUE)
    return batch, 5


def test_only_a_better_waiting_task_asks_for_a_thread(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A turn that outlasts the test: a slow machine must not see it end between two calls.
    monkeypatch.setattr(flow, "HANDOVER_TURN_MS", 60_000)
    assert not flow.thread_wanted(QUEUE, 5)  # nothing waits
    flow.get_redis().lpush(f"{QUEUE}{flow.BROKER_PRIORITY_SEPARATOR}9", "a later chunk")
    assert not flow.thread_wanted(QUEUE, 5)  # as late as this one: it waits its turn
    a_task_waits_first()
    assert not flow.thread_wanted(QUEUE, 0)  # a first chunk hands over to no one
    assert flow.thread_wanted(QUEUE, 5)
    # One chunk hands its thread over at a time: the next may only after a short turn.
    assert not flow.thread_wanted(QUEUE, 6)


@pytest.mark.django_db
@pytest.mark.timeout(30)  # a chunk that kept its thread would wait for a slot for ever
def test_an_idle_chunk_refused_a_slot_hands_its_thread_over(runpod: FakeRunPod, user: Any) -> None:
    batch, chunk_no = later_chunk(user)
    fill_every_slot("ep")
    a_task_waits_first()

    summary = chunks.process_chunk(batch.pk, chunk_no)

    assert summary == {"chunk": chunk_no, "handed_over": True}
    # Out of the slot line too: its need no longer holds freed slots back for it.
    assert sum(limiter.snapshot("ep")["waiting"].values()) == 0
    # Queued again at its own priority, its lease free for the task that will run it, and
    # marked queued so the sweeper does not send it a second time.
    assert sent_chunks(9) == [[batch.pk, chunk_no]]
    assert flow.ChunkLease(batch.pk, chunk_no, owner="the next task").acquire()
    images = ImageJob.objects.filter(batch=batch, index__gte=50)
    assert {image.status for image in images} == {ImageStatus.PENDING}
    assert runpod.jobs == {}
    assert check_books() == []


@pytest.mark.django_db
def test_a_chunk_with_a_job_at_runpod_keeps_its_thread(runpod: FakeRunPod, user: Any) -> None:
    runpod.outcome = lambda job_id, _: {"id": job_id, "status": "IN_PROGRESS"}
    batch = submit(user, ["one", "two"])
    limiter.publish_target("ep", 1)
    run = chunk_of(batch)

    run.run_pass()  # one job started, the other image refused a slot

    assert run.waiting_for_slot
    assert not run.idle  # its job's result comes back to this thread
