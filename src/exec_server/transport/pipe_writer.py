"""Writing to a non-blocking pipe or socket: ``writev`` of the outbox's pieces as they are.

What the fd does not take at once is kept as views of the same bytes (nothing is joined or
copied), handed over as the fd drains, and reported to the outbox past its high-water mark,
as an OS transport's buffer would be. asyncio's own pipe transport joins every batch into
one bytes object and grows a buffer with the rest, which under a flood of notifications cost
the stdio server more memory and time than the writes themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from collections.abc import Callable

IOV_MAX = 1024
"""Pieces per ``writev`` (Linux's limit)."""


class PipeWriter:
    """The write side of one fd; see the module docstring. Used on the event loop only."""

    def __init__(
        self,
        fd: int,
        high_water: int,
        pause: Callable[[], None],
        resume: Callable[[], None],
        on_closed: Callable[[], None],
    ) -> None:
        """``pause``/``resume``: the outbox's flow control; ``on_closed``: the reader of the
        fd is gone (EPIPE): nothing more can be written."""
        self._loop = asyncio.get_running_loop()
        self._fd = fd
        self._high_water = high_water
        self._pause = pause
        self._resume = resume
        self._on_closed = on_closed
        self._pending: deque[memoryview] = deque()
        self._pending_bytes = 0
        self._paused = False
        self._closed = False
        self._drained = asyncio.Event()
        self._drained.set()

    @property
    def closed(self) -> bool:
        return self._closed

    def write(self, pieces: list[bytes]) -> None:
        if self._closed:
            return
        if not self._pending:
            written = self._writev(pieces)
            if written < 0:
                return
            self._keep(pieces, written)
        else:
            for piece in pieces:
                self._add(memoryview(piece))
        if self._pending:
            self._watch()

    def _writev(self, pieces: list[bytes] | list[memoryview]) -> int:
        """Bytes the fd took; -1 when it is gone (then everything is dropped)."""
        try:
            return os.writev(self._fd, pieces[:IOV_MAX])
        except BlockingIOError:
            return 0
        except OSError:  # EPIPE: the reader went away
            self._close_now()
            self._on_closed()
            return -1

    def _keep(self, pieces: list[bytes], written: int) -> None:
        """Keep what ``writev`` did not take of ``pieces``, as views."""
        for piece in pieces:
            if written >= len(piece):
                written -= len(piece)
                continue
            self._add(memoryview(piece)[written:])
            written = 0

    def _add(self, view: memoryview) -> None:
        self._pending.append(view)
        self._pending_bytes += len(view)
        if not self._paused and self._pending_bytes >= self._high_water:
            self._paused = True
            self._pause()

    def _watch(self) -> None:
        if self._drained.is_set():
            self._drained.clear()
            self._loop.add_writer(self._fd, self._on_writable)

    def _on_writable(self) -> None:
        pending = self._pending
        while pending:
            batch = [pending[i] for i in range(min(len(pending), IOV_MAX))]
            written = self._writev(batch)
            if written < 0:
                return
            if written == 0:
                return
            self._pending_bytes -= written
            while written and written >= len(pending[0]):
                written -= len(pending.popleft())
            if written:
                pending[0] = pending[0][written:]
                return
        self._loop.remove_writer(self._fd)
        self._drained.set()
        if self._paused:
            self._paused = False
            self._resume()

    async def drain(self, timeout: float) -> None:
        """Wait (up to ``timeout``) until everything written has reached the fd."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained.wait(), timeout)

    def _close_now(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._drained.is_set():
            self._loop.remove_writer(self._fd)
            self._drained.set()
        self._pending.clear()
        self._pending_bytes = 0
        with contextlib.suppress(OSError):
            os.close(self._fd)

    def close(self) -> None:
        """Close the fd now; what was not written is dropped (call :meth:`drain` first)."""
        self._close_now()
