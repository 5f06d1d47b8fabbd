"""A child's stdin: ordered writes, ``writeId`` dedupe, and bounds on the bytes held for it.

Bytes the child has not read yet are held here. Up to ``buffer_bytes`` are queued at once and
the write is accepted; past that a write waits its turn (the request stays pending: that is
the backpressure), and past ``max_bytes`` held for this child, or the session's
:class:`ByteBudget`, a write is refused with :class:`StdinFull`. Writes reach the child in
the order they were made either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import OrderedDict, deque

from .errors import ProcessError


class StdinFull(ProcessError):
    """Too many bytes are already held for this child's stdin (or the session's)."""


class ByteBudget:
    """Bytes held for the stdin of every child of one session, within one bound."""

    __slots__ = ("held", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> bool:
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give_back(self, size: int) -> None:
        self.held -= size


class StdinQueue:
    """The stdin of one child; see the module docstring. Used on the event loop only."""

    def __init__(
        self,
        process_id: str,
        fd: int,
        *,
        owned: bool,
        buffer_bytes: int,
        max_bytes: int,
        write_id_memory: int,
        budget: ByteBudget,
    ) -> None:
        """``owned``: close ``fd`` when stdin is dropped (a pipe); a PTY master is shared
        with the output reader and closed by its owner."""
        self._loop = asyncio.get_running_loop()
        self._process_id = process_id
        self._fd: int | None = fd
        self._owned = owned
        self._buffer_bytes = buffer_bytes
        self._max_bytes = max_bytes
        self._write_id_memory = write_id_memory
        self._budget = budget
        self._pending: deque[memoryview] = deque()  # handed to the fd as it takes them
        self._pending_bytes = 0
        self._waiting: deque[tuple[bytes, asyncio.Future[None]]] = deque()
        self._held_bytes = 0  # pending + waiting: what counts against the bounds
        self._write_ids: OrderedDict[str, None] = OrderedDict()
        self._watching = False
        self._close_when_written = False

    @property
    def open(self) -> bool:
        return self._fd is not None

    @property
    def held_bytes(self) -> int:
        return self._held_bytes

    def seen(self, write_id: str) -> bool:
        """Whether a write with this id was made before (then it is not made again);
        remembers it otherwise, within ``write_id_memory`` ids."""
        ids = self._write_ids
        if write_id in ids:
            return True
        ids[write_id] = None
        if len(ids) > self._write_id_memory:
            ids.popitem(last=False)
        return False

    def write(self, data: bytes) -> asyncio.Future[None] | None:
        """Queue ``data``: None when it is queued now, else a future resolved when it is.

        Raises :class:`StdinFull` past the bounds. On a dropped stdin the bytes are lost
        (as with the reference) and the write still succeeds.
        """
        if self._fd is None or not data or self._close_when_written:
            return None
        size = len(data)
        if self._held_bytes and self._held_bytes + size > self._max_bytes:
            raise StdinFull(self._process_id, self._full("this process", self._max_bytes))
        if not self._budget.take(size):
            raise StdinFull(self._process_id, self._full("this session", self._budget.limit))
        self._held_bytes += size
        if self._waiting or (
            self._pending_bytes and self._pending_bytes + size > self._buffer_bytes
        ):
            future: asyncio.Future[None] = self._loop.create_future()
            self._waiting.append((data, future))
            return future
        self._enqueue(data)
        return None

    def _full(self, whose: str, limit: int) -> str:
        return (
            f"stdin of process {self._process_id} is full: the bytes held for {whose}'s "
            f"children to read would pass {limit}; retry once the child has read some"
        )

    def _enqueue(self, data: bytes) -> None:
        view = memoryview(data)
        if not self._pending:
            written = self._write_some(view)
            if written < 0:
                return
            self._consumed(written)
            if written == len(view):
                return
            view = view[written:]
        self._pending.append(view)
        self._pending_bytes += len(view)
        self._watch()

    def _watch(self) -> None:
        if not self._watching and self._fd is not None:
            self._loop.add_writer(self._fd, self._on_writable)
            self._watching = True

    def _write_some(self, view: memoryview) -> int:
        """Write what the fd takes now; -1 when stdin is gone (everything is dropped)."""
        assert self._fd is not None
        try:
            return os.write(self._fd, view)
        except BlockingIOError:
            return 0
        except OSError:  # EPIPE (the child closed stdin or died), EIO (PTY gone)
            self.drop()
            return -1

    def _consumed(self, size: int) -> None:
        self._held_bytes -= size
        self._budget.give_back(size)

    def _on_writable(self) -> None:
        pending = self._pending
        while pending:
            view = pending[0]
            written = self._write_some(view)
            if written < 0:
                return
            self._consumed(written)
            self._pending_bytes -= written
            if written < len(view):
                pending[0] = view[written:]
                return
            pending.popleft()
            self._admit_waiting()
        self._unwatch()
        self._admit_waiting()
        if self._close_when_written and not self._pending and not self._waiting:
            self.drop()

    def _admit_waiting(self) -> None:
        """Move waiting writes into the queue while it has room, in order."""
        waiting = self._waiting
        while waiting:
            data, future = waiting[0]
            if self._pending_bytes and self._pending_bytes + len(data) > self._buffer_bytes:
                return
            waiting.popleft()
            self._pending.append(memoryview(data))
            self._pending_bytes += len(data)
            self._watch()
            if not future.done():
                future.set_result(None)

    def _unwatch(self) -> None:
        if self._watching and self._fd is not None:
            with contextlib.suppress(OSError):
                self._loop.remove_writer(self._fd)
        self._watching = False

    def close_when_written(self) -> None:
        """End of input: close stdin once everything queued has reached the child."""
        self._close_when_written = True
        if not self._pending and not self._waiting:
            self.drop()

    def drop(self) -> None:
        """Stdin is unusable or the process is gone: forget held bytes, let waiting writes
        finish (their bytes are lost), and close the fd if it is ours. Idempotent."""
        self._unwatch()
        fd, self._fd = self._fd, None
        if fd is not None and self._owned:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._budget.give_back(self._held_bytes)
        self._held_bytes = self._pending_bytes = 0
        self._pending.clear()
        while self._waiting:
            _, future = self._waiting.popleft()
            if not future.done():
                future.set_result(None)
