"""The sweeper enqueues a batch whose enqueue task never ran: the message could not be sent
(the broker was down at commit) or was lost in the broker (its queued marks expired)."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from batches import flow, services, tasks
from batches.models import Batch
from budgets.books import check_books

URL = "/api/v1/batches/"


def body(n: int) -> dict[str, Any]:
    return {"title": "Chapter 9", "images": [{"prompt": f"panel {i}"} for i in range(n)]}


@pytest.fixture
def chords(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, list[int]]]:
    """Chords the sweeper sends, as (batch, chunks), instead of messages to the broker."""
    sent: list[tuple[int, list[int]]] = []
    real_enqueue = services.enqueue_batch

    def enqueue(batch: Batch, chunks: list[int] | None = None) -> None:
        sent.append((batch.pk, services.chunk_numbers(batch) if chunks is None else chunks))
        real_enqueue(batch, chunks)  # marks the chunks queued, as a sent chord does

    monkeypatch.setattr(services, "enqueue_batch", enqueue)
    monkeypatch.setattr(services, "chord", lambda header: lambda callback: None)
    return sent


@pytest.mark.django_db(transaction=True)
def test_it_enqueues_a_batch_whose_task_could_not_be_sent(
    api: APIClient, monkeypatch: pytest.MonkeyPatch, chords: list[tuple[int, list[int]]]
) -> None:
    def broker_down(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("the broker is restarting")

    monkeypatch.setattr(tasks.enqueue_batch_task, "apply_async", broker_down)
    response = api.post(URL, body(25), format="json")

    assert response.status_code == 202  # accepted all the same
    batch_id = response.json()["id"]
    assert Batch.objects.get(pk=batch_id).status == "queued"
    # The marks went with the failed send, so the sweeper need not wait for them to expire.
    assert not any(flow.chunk_is_owned(batch_id, n) for n in range(3))

    result = services.sweep_batches()

    assert (batch_id, [0, 1, 2]) in chords
    assert result["resumed_chunks"] >= 3
    assert all(flow.chunk_is_owned(batch_id, n) for n in range(3))
    assert check_books() == []


@pytest.mark.django_db(transaction=True)
def test_it_leaves_a_waiting_task_alone_and_enqueues_it_once_its_marks_expire(
    api: APIClient, monkeypatch: pytest.MonkeyPatch, chords: list[tuple[int, list[int]]]
) -> None:
    lost: list[Any] = []
    monkeypatch.setattr(tasks.enqueue_batch_task, "apply_async", lambda *a, **kw: lost.append(a))
    batch_id = api.post(URL, body(15), format="json").json()["id"]
    assert len(lost) == 1  # sent, then lost inside the broker

    services.sweep_batches()
    assert not [sent for sent in chords if sent[0] == batch_id]  # the task may still come

    marks = [flow._chunk_key(batch_id, n, "queued") for n in (0, 1)]
    assert all(flow.get_redis().ttl(key) > 0 for key in marks)  # they do expire
    flow.get_redis().delete(*marks)  # as they do after the broker's visibility timeout

    services.sweep_batches()
    assert (batch_id, [0, 1]) in chords
    assert check_books() == []
