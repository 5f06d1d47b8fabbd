"""The retained-output log of one process: seq numbers, the retention bound, long-poll waiters.

One counter orders everything a process emits: each output chunk, the exit and the close
take the next seq (PROTOCOL.md Part B §7.2). Only chunks are retained; past the byte (or
chunk-count) bound the oldest chunks are dropped whole, and a reader sees the gap as a first
seq greater than ``after_seq + 1``.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_right
from collections import deque
from typing import NamedTuple


class Chunk(NamedTuple):
    seq: int
    stream: str
    data: bytes


class ReadSnapshot(NamedTuple):
    chunks: list[Chunk]
    next_seq: int
    exited: bool
    exit_code: int | None
    closed: bool


class OutputLog:
    """Retained chunks and lifecycle facts of one process, plus waiters for new events."""

    __slots__ = (
        "_chunks",
        "_max_bytes",
        "_max_chunks",
        "_waiters",
        "closed",
        "exit_code",
        "last_seq",
        "retained_bytes",
    )

    def __init__(self, max_bytes: int, max_chunks: int) -> None:
        self._chunks: deque[Chunk] = deque()
        self._max_bytes = max_bytes
        self._max_chunks = max_chunks
        self._waiters: list[asyncio.Future[None]] = []
        self.retained_bytes = 0
        self.last_seq = 0
        self.exit_code: int | None = None
        self.closed = False

    @property
    def exited(self) -> bool:
        return self.exit_code is not None

    @property
    def next_seq(self) -> int:
        return self.last_seq + 1

    def append(self, stream: str, data: bytes) -> int:
        """Retain one chunk, evicting the oldest past the bounds; returns its seq."""
        self.last_seq = seq = self.last_seq + 1
        chunks = self._chunks
        chunks.append(Chunk(seq, stream, data))
        self.retained_bytes += len(data)
        while self.retained_bytes > self._max_bytes or len(chunks) > self._max_chunks:
            self.retained_bytes -= len(chunks.popleft().data)
        self._wake()
        return seq

    def mark_exited(self, exit_code: int) -> int:
        self.last_seq = seq = self.last_seq + 1
        self.exit_code = exit_code
        self._wake()
        return seq

    def mark_closed(self) -> int:
        self.last_seq = seq = self.last_seq + 1
        self.closed = True
        self._wake()
        return seq

    def read(self, after_seq: int, max_bytes: int | None) -> ReadSnapshot:
        """Chunks after ``after_seq`` within ``max_bytes`` (PROTOCOL.md §7.4 step 1-3).

        The first chunk is always taken, however large; later chunks only while they fit.
        """
        chunks = self._chunks
        taken: list[Chunk] = []
        next_seq = self.last_seq + 1
        if chunks and chunks[-1].seq > after_seq:
            start = 0 if chunks[0].seq > after_seq else bisect_right(chunks, after_seq, key=_seq_of)
            total = 0
            for index in range(start, len(chunks)):
                chunk = chunks[index]
                size = len(chunk.data)
                if taken and max_bytes is not None and total + size > max_bytes:
                    break
                taken.append(chunk)
                total += size
                next_seq = chunk.seq + 1
                if max_bytes is not None and total >= max_bytes:
                    break
        return ReadSnapshot(
            taken, next_seq, self.exit_code is not None, self.exit_code, self.closed
        )

    def ready(self, after_seq: int, snapshot: ReadSnapshot) -> bool:
        """Whether a long-poll should return ``snapshot`` now rather than wait (§7.4 step 4)."""
        return bool(
            snapshot.chunks
            or snapshot.closed
            or (snapshot.exited and after_seq < snapshot.next_seq - 1)
        )

    def waiter(self) -> asyncio.Future[None]:
        """A future resolved at the next event (output, exit or close)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        return future

    def _wake(self) -> None:
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for future in waiters:
                if not future.done():
                    future.set_result(None)


def _seq_of(chunk: Chunk) -> int:
    return chunk.seq
