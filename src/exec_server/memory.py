"""Giving memory back to the system after a burst of processes or sessions has been let go.

A burst of processes leaves the heap at its high-water mark: the records are freed, but
the allocator keeps the pages (and objects in reference cycles wait for a full collection,
which the command makes rare: see ``cli.py``). A while after the last release, one full
collection and glibc's ``malloc_trim`` return what is free: most of what a burst of ten
thousand processes took comes back (not all: the interpreter's own arenas keep what they
hold; bench/README.md, "Soak", has the figures).
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

RETURN_DELAY_S = 5.0
"""How long after a release memory is given back (at most once per such delay)."""


class MemoryReturn:
    """Gives free memory back a while after :meth:`soon` is first called."""

    def __init__(self, delay_s: float = RETURN_DELAY_S) -> None:
        self._delay_s = delay_s
        self._timer: asyncio.TimerHandle | None = None
        self._libc: Any = None

    def soon(self) -> None:
        """Something sizeable was let go: give memory back shortly (once, however many)."""
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._delay_s, self.now)

    def now(self) -> None:
        self._timer = None
        gc.collect()
        trim = self._malloc_trim()
        if trim is not None:
            trim(0)

    def _malloc_trim(self) -> Any:
        """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
        if self._libc is None:
            import ctypes  # on first use: not needed at start-up

            self._libc = ctypes.CDLL(None)
        return getattr(self._libc, "malloc_trim", None)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def nothing() -> None:
    """The release callback of a server that leaves its memory to its host program."""
