"""Reading a child's output fd in whole chunks.

A pipe hands out up to 64 KiB per ``read``, a PTY master only about 4 KiB (its line
discipline's buffer), so a chunk of PTY output is many reads. :func:`gather` reads on while
more is already there, so bulk output costs far fewer notifications; chunk boundaries were
never part of the contract.

The loop is the optional C helper ``_gather`` when it was built: sixteen 4 KiB PTY reads
then cost one call, one bytes object and no join, instead of sixteen of each (about a tenth
less server CPU per GiB of PTY output here); else the same loop in Python.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable


def _gather_in_python(fd: int, limit: int) -> bytes | None:
    parts: list[bytes] = []
    size = 0
    while size < limit:
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
