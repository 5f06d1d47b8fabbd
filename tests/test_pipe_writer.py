"""The stdio transport's pipe writer on a real pipe: order, nothing lost or copied wrong
across partial writes, flow control past the high-water mark, and a reader that goes away."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

from exec_server.transport.pipe_writer import IOV_MAX, PipeWriter

from .support import os_pipe, read_exactly


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    with os_pipe(nonblocking="w") as fds:
        yield fds


class Flow:
    def __init__(self) -> None:
        self.events: list[str] = []

    def pause(self) -> None:
        self.events.append("pause")

    def resume(self) -> None:
        self.events.append("resume")

    def closed(self) -> None:
        self.events.append("closed")


async def test_pieces_arrive_in_order_across_partial_writes_and_flow_is_told(
    pipe: tuple[int, int],
) -> None:
    r, w = pipe
    flow = Flow()
    writer = PipeWriter(w, 256 * 1024, flow.pause, flow.resume, flow.closed)
    pieces = [bytes([i % 251]) * (1000 + i) for i in range(IOV_MAX + 300)]  # > IOV_MAX pieces
    expected = b"".join(pieces)
    writer.write(pieces[:10])
    writer.write(pieces[10:])  # the pipe is full by now: kept, not lost
    assert flow.events == ["pause"]  # past the high-water mark while the pipe is full
    received = await asyncio.to_thread(read_exactly, r, len(expected))
    await writer.drain(10)
    assert received == expected
    assert flow.events == ["pause", "resume"]


async def test_a_reader_that_goes_away_closes_the_writer(pipe: tuple[int, int]) -> None:
    r, w = pipe
    flow = Flow()
    writer = PipeWriter(w, 1024, flow.pause, flow.resume, flow.closed)
    os.close(r)
    writer.write([b"nobody listens"])
    assert flow.events == ["closed"] and writer.closed
    writer.write([b"dropped"])  # nothing more happens
    assert flow.events == ["closed"]
