"""A consumer's channel-layer receive task ends at the first cancel, as a web server's closing
socket and asyncio.run's shutdown give it one. On Python 3.11, a socket timeout on the layer's
Redis connections made redis-py send each command through asyncio.wait_for, which drops a
cancel that arrives just as the send completes: the task then looped on BZPOPMIN for ever,
holding a Redis connection, once every few dozen refused sockets."""

from __future__ import annotations

import asyncio

import pytest
from channels.db import database_sync_to_async
from rest_framework.authtoken.models import Token

from tests.batches.test_batch_consumer import connect, setup
from tests.support.asgi import run_to_the_end

pytestmark = pytest.mark.django_db(transaction=True)

# The hang came once in 25 to 33 refused sockets in a row.
REPEATS = 60


def test_a_refused_socket_leaves_no_task_that_outlives_one_cancel() -> None:
    async def scenario() -> None:
        batch, other, _ = await setup()
        token = await database_sync_to_async(lambda: Token.objects.create(user=other).key)()
        me = asyncio.current_task()
        for attempt in range(REPEATS):
            _, connected, code = await connect(f"/ws/batches/{batch.pk}/?token={token}")
            assert (connected, code) == (False, 4403)
            left = [task for task in asyncio.all_tasks() if task is not me and not task.done()]
            for task in left:
                task.cancel()
            _, running = await asyncio.wait(left, timeout=2)
            assert running == set(), f"after socket {attempt + 1}, one cancel left {running}"

    run_to_the_end(scenario())
