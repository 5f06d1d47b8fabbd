"""Reading a child's output: one reader per process, on the event loop.

A pipe hands out up to 64 KiB per ``read``, a PTY master only a few KiB (its line
discipline's buffer), so a chunk of PTY output is many reads. :func:`gather` reads on while
more is *already there*, so bulk output costs fewer notifications; chunk boundaries were
never part of the contract. "Already there" is asked of FIONREAD, not of another read: on
Linux a read of a PTY master whose buffer is empty first waits for the kernel worker that
refills it, which would stall the event loop once per refill.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno
import fcntl
import os
import termios
from collections.abc import Callable

import msgspec


def _buffered(fd: int) -> int:
    """Bytes ready to read on ``fd`` right now (0 if it cannot say)."""
    count = array.array("i", [0])
    try:
        fcntl.ioctl(fd, termios.FIONREAD, count, True)
    except OSError:
        return 0
    return count[0]


def gather(fd: int, limit: int) -> bytes | None:
    """What is there on non-blocking ``fd``, up to ``limit`` bytes; never waits.

    ``b""`` is end of file (which a PTY reports as EIO); None means nothing is there yet;
    OSError is any other error at the first read. An error or end of file after some data
    ends the gather early and is seen by the next one.
    """
    parts: list[bytes] = []
    size = 0
    while size < limit:
        if parts and _buffered(fd) <= 0:
            break
        try:
            more = os.read(fd, limit - size)
        except BlockingIOError:
            if not parts:
                return None
            break
        except OSError as exc:
            if parts:
                break  # the next gather sees it
            if exc.errno == errno.EIO:  # a PTY whose last slave closed: end of file
                return b""
            raise
        if not more:
            break
        parts.append(more)
        size += len(more)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class Stream(msgspec.Struct, eq=False):
    """One output fd of a child and the name its chunks carry (``stdout``, ``stderr``, ``pty``).

    ``owned``: the reader closes the fd at its end (a pipe); a PTY master is not owned,
    since the child's stdin is written through it until the process is torn down.
    """

    fd: int
    name: str
    owned: bool


OutputCallback = Callable[[str, bytes], None]


def _no_output(stream: str, data: bytes) -> None:
    pass


def _no_end() -> None:
    pass


class OutputReader:
    """Reads the output streams of one child with event-loop callbacks (no task per stream).

    Each chunk goes to ``on_output(stream, data)``, which may :meth:`pause` the reader
    (backpressure); ``on_end()`` is called once every stream has ended.
    """

    __slots__ = ("_chunk_bytes", "_loop", "_on_end", "_on_output", "_streams", "paused")

    def __init__(
        self,
        streams: list[Stream],
        chunk_bytes: int,
        on_output: OutputCallback,
        on_end: Callable[[], None],
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._streams = streams
        self._chunk_bytes = chunk_bytes
        self._on_output = on_output
        self._on_end = on_end
        self.paused = False
        for stream in streams:
            self._loop.add_reader(stream.fd, self._on_readable, stream)

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def _on_readable(self, stream: Stream) -> bool:
        """Take what the child wrote; True when a chunk was taken (more may wait)."""
        try:
            data = gather(stream.fd, self._chunk_bytes)
        except OSError:  # an fd that fails to read will never give more: the stream ended
            data = b""
        if data is None:
            return False
        if not data:
            self._end(stream)
            return False
        self._on_output(stream.name, data)
        return True

    def pause(self) -> None:
        """Stop reading (the child blocks once its pipe or PTY buffer is full)."""
        if self.paused:
            return
        self.paused = True
        for stream in self._streams:
            self._loop.remove_reader(stream.fd)

    def resume(self) -> None:
        if not self.paused:
            return
        self.paused = False
        for stream in list(self._streams):
            self._loop.add_reader(stream.fd, self._on_readable, stream)

    def drain(self, max_reads: int = 64) -> None:
        """Take what is already buffered (at the child's exit: output it wrote before dying
        comes before its exit is reported). Bounded, since a grandchild may write forever."""
        for stream in list(self._streams):
            for _ in range(max_reads):
                if self.paused or stream not in self._streams:
                    break
                if not self._on_readable(stream):
                    break

    def _end(self, stream: Stream) -> None:
        self._forget(stream)
        if not self._streams:
            self._on_end()

    def _forget(self, stream: Stream) -> None:
        self._streams.remove(stream)
        self._loop.remove_reader(stream.fd)
        if stream.owned:
            os.close(stream.fd)

    def close(self) -> None:
        """Stop reading every stream now and close the fds it owns; ``on_end`` is not called.

        The callbacks are let go too: they hold the process whose reader this is, which holds
        the reader, and that cycle would outlive the process's eviction until a full run of
        the cyclic garbage collector (rare by design: see ``cli.py``)."""
        for stream in list(self._streams):
            with contextlib.suppress(OSError):
                self._forget(stream)
        self._streams.clear()
        self._on_output = _no_output
        self._on_end = _no_end
