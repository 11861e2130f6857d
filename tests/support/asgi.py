"""Drive an async test scenario (WebSocket consumers through `WebsocketCommunicator`) on
asgiref's event loop, and end everything the scenario left running before that loop closes.

Why not plain `async_to_sync(scenario)()`: a consumer lives on after its test is done with it (a
refused socket's consumer still waits for `websocket.disconnect`, and every consumer has a task
receiving from the channel layer). asgiref runs the scenario with `asyncio.run`, whose shutdown
cancels each leftover task once and then waits for all of them with no time limit. On Python
3.11 one cancel is not always enough: redis-py sends each command inside `asyncio.wait_for`
when a socket timeout is set (settings.CHANNEL_LAYERS sets one), and 3.11's `wait_for` drops a
cancel that arrives just as the send completes (fixed in 3.12; see redis/redis-py#2028). The
channels-redis receive task then goes on looping on BZPOPMIN, and the test hangs until
pytest's timeout. Cancelling again, until every task has ended, always ends them: the next
cancel lands while the task waits for Redis's answer, where it is not dropped."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from asgiref.sync import async_to_sync

T = TypeVar("T")

# How long leftover tasks may take to end once cancelled (they end in milliseconds; a task still
# running after this is a real bug, reported by name).
LEFTOVER_TIMEOUT = 10.0


async def end_leftover_tasks(timeout: float = LEFTOVER_TIMEOUT) -> None:
    """Cancel every other task of this loop, again and again, until all have ended."""
    me = asyncio.current_task()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        left = [task for task in asyncio.all_tasks() if task is not me and not task.done()]
        if not left:
            return
        if loop.time() > deadline:
            raise AssertionError(f"tasks still running {timeout}s after being cancelled: {left}")
        for task in left:
            task.cancel()
        await asyncio.wait(left, timeout=0.05)


async def _then_end_leftovers(scenario: Awaitable[T]) -> T:
    try:
        return await scenario
    finally:
        await end_leftover_tasks()


def run_to_the_end(scenario: Coroutine[Any, Any, T]) -> T:
    """Run `scenario` on asgiref's loop (database_sync_to_async works inside it, as in the web
    process) and end what it left running before the loop closes."""
    return async_to_sync(_then_end_leftovers)(scenario)


def async_test(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Decorator: an async test function run with run_to_the_end (the project needs no asyncio
    pytest plugin)."""

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        run_to_the_end(test(*args, **kwargs))

    return wrapper
