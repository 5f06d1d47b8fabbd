"""A child's stdin queue on real pipes: order, dedupe, backpressure and its bounds."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Iterator

import pytest

from exec_server.process.stdin import ByteBudget, StdinFull, StdinQueue

from .support import Client, RpcFailure, os_pipe, read_exactly


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    with os_pipe(nonblocking="w") as fds:
        yield fds


def _queue(fd: int, budget: ByteBudget | None = None, **bounds: int) -> StdinQueue:
    return StdinQueue(
        "p",
        fd,
        owned=True,
        buffer_bytes=bounds.get("buffer_bytes", 1024),
        max_bytes=bounds.get("max_bytes", 4096),
        write_id_memory=2,
        budget=budget or ByteBudget(1 << 20),
    )


async def test_writes_past_the_buffer_wait_their_turn_and_arrive_in_order(
    pipe: tuple[int, int],
) -> None:
    r, w = pipe
    pipe_size = os.fstat(w).st_blksize * 16  # at least a full pipe
    queue = _queue(w, buffer_bytes=1024, max_bytes=1 << 22)
    first = b"a" * pipe_size * 2  # more than the pipe takes: the rest stays queued
    assert queue.write(first) is None
    waiting = queue.write(b"b" * 10)
    assert isinstance(waiting, asyncio.Future) and not waiting.done()
    received = await asyncio.to_thread(read_exactly, r, len(first) + 10)
    assert received == first + b"b" * 10
    assert waiting.done()
    assert queue.held_bytes == 0


async def test_past_its_bound_a_write_is_refused_and_nothing_is_lost(
    pipe: tuple[int, int],
) -> None:
    r, w = pipe
    budget = ByteBudget(1 << 30)
    queue = _queue(w, budget, buffer_bytes=16, max_bytes=64 * 1024 * 4)
    chunk = b"z" * 64 * 1024
    accepted = 0
    with pytest.raises(StdinFull, match="stdin of process p is full"):
        for _ in range(100):  # nobody reads the pipe: the bound must be reached
            queue.write(chunk)
            accepted += 1
    assert 0 < accepted < 100
    assert budget.held == queue.held_bytes <= 64 * 1024 * 5
    received = await asyncio.to_thread(read_exactly, r, accepted * len(chunk))
    assert received == chunk * accepted


async def test_the_session_budget_is_shared(pipe: tuple[int, int]) -> None:
    _, w = pipe
    r2, w2 = os.pipe()
    os.set_blocking(w2, False)
    try:
        budget = ByteBudget(300 * 1024)
        one = _queue(w, budget, buffer_bytes=1, max_bytes=1 << 30)
        two = _queue(w2, budget, buffer_bytes=1, max_bytes=1 << 30)
        with pytest.raises(StdinFull, match="this session"):
            for _ in range(100):
                one.write(b"1" * 32 * 1024)
                two.write(b"2" * 32 * 1024)
        assert budget.held <= budget.limit
        one.drop()
        two.drop()
        assert budget.held == 0
    finally:
        os.close(r2)
        with contextlib.suppress(OSError):
            os.close(w2)


async def test_write_ids_are_remembered_within_their_memory(pipe: tuple[int, int]) -> None:
    _, w = pipe
    queue = _queue(w)
    assert not queue.seen("a")
    assert queue.seen("a")
    queue.seen("b")
    queue.seen("c")  # memory of 2: "a" is forgotten
    assert not queue.seen("a")


async def test_a_dropped_stdin_releases_waiting_writes(pipe: tuple[int, int]) -> None:
    _, w = pipe
    queue = _queue(w, buffer_bytes=1, max_bytes=1 << 24)
    queue.write(b"x" * (1 << 20))
    waiting = queue.write(b"y")
    assert waiting is not None
    queue.drop()
    assert waiting.done() and not queue.open and queue.held_bytes == 0
    assert queue.write(b"lost") is None  # as the reference: accepted, and lost


async def test_a_client_flooding_a_child_that_never_reads_gets_an_error(client: Client) -> None:
    """Issue 11's finding: many large writes to a child that never reads grew the server
    without bound. Now the bytes held per process are bounded and the client is told."""
    await client.start(
        "sleepy", [sys.executable, "-c", "import time; time.sleep(60)"], pipeStdin=True
    )
    chunk = b"\0" * (4 * 1024 * 1024)
    writes = [asyncio.ensure_future(client.write("sleepy", chunk)) for _ in range(8)]
    done, _ = await asyncio.wait(writes, timeout=20, return_when=asyncio.FIRST_EXCEPTION)
    refused = [w.exception() for w in done if w.exception() is not None]
    assert refused
    assert all(isinstance(e, RpcFailure) and e.code == -32600 for e in refused)
    assert all("is full" in str(e) for e in refused)
    await client.call("process/terminate", {"processId": "sleepy"})
    outcomes = await asyncio.gather(*writes, return_exceptions=True)
    assert "accepted" in outcomes  # the writes that waited were let go when stdin dropped
    await client.wait_closed("sleepy")
