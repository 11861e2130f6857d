"""Tasks the web process sends by name (it does not import batches.tasks) leave no result
subscription behind: each request runs in a thread of its own under ASGI, and a subscription
there costs the request a new Redis connection and a SUBSCRIBE for a result nobody reads."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from batches import flow, services
from comicgen.celery import app as celery_app


def test_a_task_sent_by_name_is_sent_without_subscribing_to_its_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As in the web process: the task is not registered here (other tests may have imported
    # batches.tasks), so Celery sends it by name.
    monkeypatch.delitem(celery_app.tasks, services.ENQUEUE_BATCH_TASK, raising=False)
    messages: list[Any] = []
    # The broker is the boundary: the message is kept instead of reaching a worker.
    monkeypatch.setattr(
        celery_app.amqp, "send_task_message",
        lambda producer, name, message, **options: messages.append(message),
    )  # fmt: skip
    pubsubs: list[Any] = []

    def request() -> None:  # a thread of its own, as each ASGI request's sync code has
        flow.send_by_name(services.ENQUEUE_BATCH_TASK, (123,), services.ENQUEUE_QUEUE)
        # The subscription itself is undone as soon as the unused AsyncResult is collected;
        # the pub/sub connection opened for it is what stays (the thread's result consumer's).
        pubsubs.append(celery_app.backend.result_consumer._pubsub)

    thread = threading.Thread(target=request)
    thread.start()
    thread.join()

    assert pubsubs == [None]
    [message] = messages
    assert message.headers["task"] == services.ENQUEUE_BATCH_TASK
    assert message.headers["ignore_result"] is True
