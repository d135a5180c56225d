"""The drain deadline: work that ends in time passes through; work still running at the deadline is cut."""

from __future__ import annotations

import asyncio

import pytest

from api.drain import CUT_GRACE_S, Drain, StreamCutError, cut_error, uvicorn_timeout_s


async def test_work_that_ends_before_the_deadline_passes_through() -> None:
    """Before and during draining, a finished awaitable's value comes back unchanged."""
    drain = Drain()
    assert await drain.bounded(asyncio.sleep(0, result="before")) == "before"
    drain.begin(60)
    assert drain.draining
    assert not drain.expired
    assert await drain.bounded(asyncio.sleep(0, result="during")) == "during"


async def test_work_still_running_at_the_deadline_is_cancelled_and_cut() -> None:
    """The pending work is cancelled (the worker stream closes) and StreamCutError is raised."""
    drain = Drain()
    never = asyncio.get_running_loop().create_future()
    drain.begin(0)
    with pytest.raises(StreamCutError):
        await drain.bounded(never)
    assert never.cancelled()
    assert drain.expired
    with pytest.raises(StreamCutError):
        await drain.bounded(asyncio.sleep(0))


async def test_a_second_signal_does_not_move_the_deadline() -> None:
    """begin() arms the deadline once: a later Ctrl-C does not extend or shorten the drain."""
    drain = Drain()
    drain.begin(0)
    drain.begin(3600)
    await asyncio.sleep(0.01)
    assert drain.expired


def test_uvicorn_waits_longer_than_the_drain_and_the_cut_names_the_timeout() -> None:
    """uvicorn's own limit leaves room for the error events; the event says why the stream ended."""
    assert uvicorn_timeout_s(30) > 30 + CUT_GRACE_S - 1
    error = cut_error(30)
    assert error.status_code == 503
    assert "30 s drain timeout" in error.message
