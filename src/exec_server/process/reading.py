"""Reading a child's output fd in whole chunks.

A pipe hands out up to 64 KiB per ``read``, a PTY master only about 4 KiB (its line
discipline's buffer), so a chunk of PTY output is many reads. :func:`gather` reads on while
more is *already there*, so bulk output costs fewer notifications; chunk boundaries were
never part of the contract.

"Already there" is asked of FIONREAD, not of another read: on Linux a read of a PTY master
whose buffer is empty first waits for the kernel worker that refills it
(``tty_buffer_flush_work`` in ``n_tty_read``), so reading on until EAGAIN made every 4 KiB of
a streaming PTY a synchronous round trip with that worker while the event loop stood still
(measured: 84% of the loop's time inside the gather). Stopping when nothing is buffered lets
the worker refill while the chunk is sent: PTY throughput went from a median of 29 to 42 MiB/s
on the 2-core VM. The first read of a gather still waits, so output a child wrote before it
died is still collected before its exit is reported.

The loop is the optional C helper ``_gather`` when it was built (one call per chunk instead
of several reads, bytes objects and a join), else the same loop in Python.

A PTY that keeps streaming is not read by the loop at all: :data:`PUMP` moves its reads to a
native thread, so even the first read's wait overlaps the sending (see below).
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import termios
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._pump import Pump


def _buffered(fd: int) -> int:
    """Bytes ready to read on ``fd`` right now (0 if it cannot say)."""
    count = array.array("i", [0])
    try:
        fcntl.ioctl(fd, termios.FIONREAD, count, True)
    except OSError:
        return 0
    return count[0]


def _gather_in_python(fd: int, limit: int) -> bytes | None:
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


gather: Callable[[int, int], bytes | None]
"""``gather(fd, limit)``: what is there, up to ``limit`` bytes (``b""`` is end of file, which
a PTY reports as EIO); None when nothing is there yet; OSError for any other error at the
first read. An error or end of file after some data ends the gather early and is seen by the
next one. Never waits: ``fd`` is non-blocking."""

try:
    from ._gather import gather
except ImportError:  # no C compiler at install time: same contract, slower
    gather = _gather_in_python


def _load_pump() -> type[Pump] | None:
    if os.environ.get("EXEC_SERVER_NO_PTY_THREAD"):  # an escape hatch, as for native spawn
        return None
    try:
        from ._pump import Pump
    except ImportError:  # no C compiler at install time: PTYs are read on the loop
        return None
    return Pump


PUMP: type[Pump] | None = _load_pump()
"""The native reader thread for streaming PTYs (see ``_pump.c``), or None when not built.

Why a thread: each ~4 KiB of a PTY needs a round trip with the kernel worker that refills the
line discipline. On the loop those waits and the sending of each chunk take turns; on a thread
that holds no GIL they overlap. A Python thread was tried and measured worse (every read needs
the GIL back, and the loop holds it while it sends)."""
