"""What both transports do the same way: batch outbound messages, and hold inbound ones back
while the connection cannot take more.

Outbound: messages are queued and leave together once per event-loop turn (one system call
for a burst of notifications). Past ``high_water`` bytes (queued here or in the OS
transport's buffer) the transport is not :attr:`writable`: producers pause.

Replies to what one read from the peer brought leave at once, after a nudge (see
:data:`NUDGE`) that keeps a client waiting for them on our CPU.

Inbound: received messages wait in a queue and are handed to the connection one by one while
it can take them: while replies have room and the connection's waiting requests are under
their bound. Otherwise reading from the peer stops, so the peer backs up instead of us.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from ..connection import Connection

Item = TypeVar("Item")


def _load_nudge() -> Callable[[], None] | None:
    if os.environ.get("EXEC_SERVER_NO_NUDGE"):  # an escape hatch, as for the PTY thread
        return None
    try:
        from ._nudge import nudge, start
    except ImportError:  # no C compiler at install time: replies go out without it
        return None
    try:
        start()
    except OSError:  # no thread or no eventfd to spare: likewise
        return None
    return nudge


NUDGE: Callable[[], None] | None = _load_nudge()
"""Wakes a thread that holds no GIL (see ``_nudge.c``) just before replies go out, or None.

Why: the client that sent the request sleeps until the reply comes. Woken by our write, the
kernel puts it on an idle CPU when there is one, which in a VM costs an inter-processor
interrupt and the host's wait to run that vCPU; with the other CPU busy for a moment it wakes
here instead, on the CPU we are about to leave. On the 2-vCPU bench VM sequential
``process/read`` calls went 1.3-2x as fast. A Python thread did it too, but needs the GIL back
on every wake-up; without the C helper replies simply go out without a nudge.
"""


class FlowControl(Generic[Item]):
    """Base of a transport; subclasses provide the hooks at the bottom."""

    def __init__(self, high_water: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._high_water = high_water
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._flush_handle: asyncio.Handle | None = None
        self._flush_at_end = False  # inside a batch whose end flushes anyway
        self._paused = False
        self._inbound: deque[Item] = deque()
        self._processing = False

    # ---- outbound ---------------------------------------------------------------------------

    def send(self, message: bytes) -> None:
        """Queue one message; it leaves with the rest of this loop turn's messages."""
        pieces = self._framed(message)
        if pieces is None:
            return
        self._out += pieces
        self._out_bytes += len(message)
        if self._out_bytes >= self._high_water:
            self._flush()  # hand it to the OS transport now; its buffer decides about pausing
        elif self._flush_handle is None and not self._flush_at_end:
            self._flush_handle = self._loop.call_soon(self._flush)

    @property
    def writable(self) -> bool:
        """False once outbound data is past its bound: producers should pause."""
        return not self._paused and self._out_bytes < self._high_water

    def _handle_batch(self) -> None:
        """Hand over what was received; replies leave together when it is done."""
        self._flush_at_end = True
        try:
            self._process_inbound()
        finally:
            self._flush_at_end = False
        self._flush_replies()

    def _receive_one(self, item: Item) -> None:
        """What :meth:`_receive` then :meth:`_handle_batch` do, for one item arriving while
        none is held back (a read that brought one request), without the queue."""
        if self._inbound or not self._may_take_more():
            self._receive(item)
            self._handle_batch()
            return
        self._flush_at_end = self._processing = True
        try:
            handled = self._handle(item)
        finally:
            self._flush_at_end = self._processing = False
        self._flush_replies()
        if handled:
            self._inbound_done()

    def _flush_replies(self) -> None:
        """Flush what handling a read from the peer queued; a nudge first, if there is any."""
        if self._out and NUDGE is not None:
            NUDGE()
        self._flush()

    def _flush(self) -> None:
        """Write what is queued now. Runs at the end of the loop turn, or earlier: after
        handling what one read from the peer brought (the replies leave without waiting
        for another turn of the loop)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._out:
            return
        out, self._out = self._out, []
        was_full = self._out_bytes >= self._high_water
        self._out_bytes = 0
        self._write(out)
        if was_full and not self._paused:
            self._drained()  # the OS took it all: nobody else will say so

    def pause_writing(self) -> None:
        """asyncio flow control: the OS transport's buffer is past ``high_water``."""
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._drained()

    # ---- inbound ----------------------------------------------------------------------------

    def _receive(self, item: Item) -> None:
        self._inbound.append(item)

    def _may_take_more(self) -> bool:
        if self._paused or self._out_bytes >= self._high_water:  # not writable
            return False
        connection = self._connection()
        return connection is None or connection.accepting

    def _process_inbound(self) -> None:
        """Hand received items over while the connection can take them; otherwise stop
        reading the peer until it can."""
        if self._processing:
            return  # re-entered through a flush: the outer loop goes on
        self._processing = True
        try:
            inbound = self._inbound
            while inbound:
                if not self._may_take_more():
                    self._flush()
                    if not self._may_take_more():
                        self._pause_reading()
                        return
                if not self._handle(inbound.popleft()):
                    return
        finally:
            self._processing = False
        self._inbound_done()

    def resume_inbound(self) -> None:
        """The connection can take requests again (one of its waiting requests finished)."""
        self._drained()

    def _drained(self) -> None:
        """Room again: take what was held back, read the peer again, wake producers."""
        self._process_inbound()
        if not self._inbound:
            self._resume_reading()
        connection = self._connection()
        if connection is not None and self.writable:
            connection.on_writable()

    # ---- hooks ------------------------------------------------------------------------------

    def _connection(self) -> Connection | None:
        raise NotImplementedError

    def _framed(self, message: bytes) -> list[bytes] | None:
        """The pieces that carry ``message`` on the wire; None drops it (nobody to send to)."""
        raise NotImplementedError

    def _write(self, pieces: list[bytes]) -> None:
        raise NotImplementedError

    def _handle(self, item: Item) -> bool:
        """Hand one inbound item over; False stops processing (the connection is gone)."""
        raise NotImplementedError

    def _inbound_done(self) -> None:
        """Every held item has been handled."""

    def _pause_reading(self) -> None:
        raise NotImplementedError

    def _resume_reading(self) -> None:
        raise NotImplementedError
