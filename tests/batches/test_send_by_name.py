"""Sending a task from the web costs one message: each request runs in a thread of its own
under ASGI, and Celery's per-thread state (a result backend, a subscription to the task's
result) was built anew for every submit."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from batches import flow, services
from comicgen.celery import app as celery_app


def test_a_task_sent_by_name_ignores_its_result_and_shares_one_backend(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As in the web process: the task is not registered here (other tests may have imported
    # batches.tasks), so Celery sends it by name and cannot know it ignores its result.
    monkeypatch.delitem(celery_app.tasks, services.ENQUEUE_BATCH_TASK, raising=False)
    messages: list[Any] = []
    # The broker is the boundary: the message is kept instead of reaching a worker.
    monkeypatch.setattr(
        celery_app.amqp, "send_task_message",
        lambda producer, name, message, **options: messages.append(message),
    )  # fmt: skip
    backends: list[Any] = []

    def request() -> None:  # a thread of its own, as each ASGI request's sync code has
        flow.send_by_name(services.ENQUEUE_BATCH_TASK, (123,), services.ENQUEUE_QUEUE)
        backends.append(celery_app.backend)

    for _ in range(2):
        thread = threading.Thread(target=request)
        thread.start()
        thread.join()

    assert backends[0] is backends[1]
    assert [message.headers["task"] for message in messages] == [services.ENQUEUE_BATCH_TASK] * 2
    # Without it, the sending thread subscribes to the task's result channel in Redis.
    assert all(message.headers["ignore_result"] is True for message in messages)
