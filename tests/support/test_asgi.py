"""tests/support/asgi.py: a scenario's leftover tasks end before its loop closes, even one that
drops a cancel (as redis-py's sends do on Python 3.11, see that module)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from tests.support.asgi import run_to_the_end


def test_a_leftover_task_that_drops_one_cancel_still_ends() -> None:
    ended: list[str] = []

    async def stubborn() -> None:
        with contextlib.suppress(asyncio.CancelledError):  # as 3.11's wait_for may drop it
            await asyncio.sleep(3600)
        try:
            await asyncio.sleep(3600)
        finally:
            ended.append("stubborn")

    async def scenario() -> str:
        asyncio.get_running_loop().create_task(stubborn())
        await asyncio.sleep(0)  # the task starts waiting
        return "answer"

    assert run_to_the_end(scenario()) == "answer"
    assert ended == ["stubborn"]


def test_the_scenarios_own_error_still_comes_out() -> None:
    async def failing() -> None:
        raise LookupError("from the scenario")

    with pytest.raises(LookupError, match="from the scenario"):
        run_to_the_end(failing())
