"""What a transport owns for sending: batching, a high-water mark, and whether there is room.

Messages put in one turn of the event loop leave together at its end, in one system call; a
transport may also hold a batch open while it handles what one read from the peer brought,
so the replies leave as soon as that is done. Past ``high_water`` bytes (queued here, or in
the OS transport's buffer once it says so) the outbox is not :attr:`writable`: producers
should pause, and ``on_room`` is called once it has drained.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable


class Outbox:
    """The outbound queue of one connection; see the module docstring."""

    __slots__ = (
        "_batching",
        "_flush_handle",
        "_high_water",
        "_loop",
        "_on_room",
        "_os_paused",
        "_pieces",
        "_queued_bytes",
        "_write",
    )

    def __init__(
        self,
        write: Callable[[list[bytes]], None],
        high_water: int,
        on_room: Callable[[], None],
    ) -> None:
        """``write`` hands pieces to the OS transport (never blocks); ``on_room`` is called
        when the outbox becomes writable again after it was not."""
        self._loop = asyncio.get_running_loop()
        self._write = write
        self._high_water = high_water
        self._on_room = on_room
        self._pieces: list[bytes] = []
        self._queued_bytes = 0
        self._flush_handle: asyncio.Handle | None = None
        self._batching = False
        self._os_paused = False

    @property
    def high_water(self) -> int:
        return self._high_water

    @property
    def writable(self) -> bool:
        """False once outbound data is past its bound: producers should pause."""
        return not self._os_paused and self._queued_bytes < self._high_water

    @property
    def queued_bytes(self) -> int:
        """Payload bytes queued here, not yet handed to the OS transport."""
        return self._queued_bytes

    def put(self, pieces: Iterable[bytes], size: int) -> None:
        """Queue the pieces of one message (``size`` bytes of payload) to leave with the
        rest of this loop turn's, or of the open batch's."""
        self._pieces += pieces
        self._queued_bytes += size
        if self._queued_bytes >= self._high_water:
            self.flush()  # hand it to the OS transport now; its buffer decides about pausing
        elif self._flush_handle is None and not self._batching:
            self._flush_handle = self._loop.call_soon(self.flush)

    def begin_batch(self) -> None:
        """Hold what is put until :meth:`end_batch` (which flushes)."""
        self._batching = True

    def end_batch(self) -> None:
        self._batching = False
        self.flush()

    def flush(self) -> None:
        """Write what is queued, now."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._pieces:
            return
        pieces, self._pieces = self._pieces, []
        was_full = self._queued_bytes >= self._high_water
        self._queued_bytes = 0
        self._write(pieces)
        if was_full and not self._os_paused:
            self._on_room()  # the OS took it all: nobody else will say so

    def clear(self) -> None:
        """Forget what is queued (the peer is gone)."""
        self._pieces.clear()
        self._queued_bytes = 0

    # asyncio's flow control of the OS transport, forwarded by the transport's protocol.

    def pause_writing(self) -> None:
        self._os_paused = True

    def resume_writing(self) -> None:
        self._os_paused = False
        self._on_room()
