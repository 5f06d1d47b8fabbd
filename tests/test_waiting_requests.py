"""A connection may have only so many requests waiting at once (long polls, full stdin
queues); past that its further requests are held back, not refused, until one finishes."""

from __future__ import annotations

import asyncio
import json

import pytest

from exec_server.config import Limits

from .support import Client


@pytest.fixture
def limits() -> Limits:
    return Limits(max_waiting_requests=2)


async def test_requests_past_the_waiting_limit_are_held_until_one_finishes(client: Client) -> None:
    await client.start("quiet", ["sleep", "100"])
    order: list[str] = []

    async def call(name: str, method: str, params: dict[str, object] | None) -> None:
        reply = await client.request(method, params)
        assert "result" in reply, reply
        order.append(name)

    short = {"processId": "quiet", "afterSeq": 0, "waitMs": 1000}
    long = {"processId": "quiet", "afterSeq": 0, "waitMs": 60000}
    calls = [
        asyncio.ensure_future(call("short", "process/read", short)),
        asyncio.ensure_future(call("long", "process/read", long)),
        asyncio.ensure_future(call("status", "environment/status", None)),
    ]
    # Two polls wait, so the status request is held back (not refused) until the short poll
    # ends by its own deadline; then it is taken and answered at once.
    await asyncio.wait_for(calls[2], 30)
    assert order == ["short", "status"]
    await client.call("process/terminate", {"processId": "quiet"})
    await asyncio.wait_for(calls[1], 30)
    assert order == ["short", "status", "long"]


async def test_under_the_limit_a_long_poll_delays_nothing(client: Client) -> None:
    await client.start("quiet", ["sleep", "100"])
    poll = asyncio.ensure_future(
        client.request("process/read", {"processId": "quiet", "afterSeq": 0, "waitMs": 60000})
    )
    assert await client.call("environment/status") == {"status": "ready"}
    assert not poll.done()
    await client.call("process/terminate", {"processId": "quiet"})
    reply = await asyncio.wait_for(poll, 30)
    assert json.dumps(reply["result"]["exited"]) == "true"
