"""The keeper: a small process that outlives a server killed without warning.

A SIGKILLed server cannot clean up. Its children die with it (each has a parent-death
signal), but what they started lives on: ``sh -c 'sleep 1000 & wait'`` leaves the sleep.
So the ``exec-server`` command forks a keeper before it starts serving. The server tells the
keeper each child it starts, over a pipe; when the pipe closes (the server is gone, however
it went), the keeper kills whatever is left of those children's sessions and groups, then
exits. After a normal shutdown there is nothing left to kill.

The keeper runs in a session of its own (a terminal's Ctrl-C meant for the server must not
take it first), ignores the usual termination signals, holds no descriptor of the server's
but its end of the pipe, and does nothing but read that pipe until it closes. Descendants
that left their child's session with ``setsid`` are beyond its reach once the child is dead
(their parent was the child); the server itself kills whole trees whenever it is alive.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import time

from .tree import Pid, kill_trees

NAME = b"exec-keeper"
"""The keeper's process name (what ``ps -o comm`` shows)."""


class Keeper:
    """The server's end of the keeper; see the module docstring."""

    def __init__(self, pid: int, pipe: int) -> None:
        self.pid = pid
        self._pipe = pipe

    @classmethod
    def start(cls) -> Keeper | None:
        """Fork the keeper (before any event loop or thread exists); None if that fails."""
        read_end, write_end = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(read_end)
            os.close(write_end)
            return None
        if pid == 0:  # pragma: no cover - the keeper's own life, observed from outside
            os.close(write_end)
            _keep(read_end)
        os.close(read_end)
        return cls(pid, write_end)

    def _tell(self, line: bytes) -> None:
        if self._pipe < 0:
            return
        try:
            os.write(self._pipe, line)
        except OSError:  # the keeper is gone: nothing more to tell it
            self.close()

    def started(self, process: Pid) -> None:
        """A child was started: kill its session's leftovers should the server die."""
        self._tell(b"+%d %d\n" % (process.pid, process.start))

    def finished(self, process: Pid) -> None:
        """The server has killed or reaped this child's tree itself."""
        self._tell(b"-%d %d\n" % (process.pid, process.start))

    def close(self, wait_s: float = 2.0) -> None:
        """The server is done: the keeper finds nothing left and exits, and is reaped here
        (waiting up to ``wait_s``), so no zombie outlives a server under an init that does
        not reap."""
        if self._pipe >= 0:
            with contextlib.suppress(OSError):
                os.close(self._pipe)
            self._pipe = -1
        deadline = time.monotonic() + wait_s
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(self.pid, os.WNOHANG) == (0, 0) and time.monotonic() < deadline:
                time.sleep(0.005)


def _keep(pipe: int) -> None:  # pragma: no cover - runs in the forked keeper
    """The keeper's whole life; never returns."""
    # A collection would write to every object the server made before the fork, and copy
    # their pages: the keeper allocates next to nothing, so it never collects.
    gc.disable()
    code = 0
    try:
        os.setsid()
        with open("/proc/self/comm", "wb") as comm:  # what ps shows
            comm.write(NAME)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(signum, signal.SIG_IGN)
        os.closerange(0, pipe)
        os.closerange(pipe + 1, 1 << 16)
        kill_trees(_read_until_closed(pipe))
    except BaseException:
        code = 1
    os._exit(code)


def _read_until_closed(pipe: int) -> set[Pid]:  # pragma: no cover - runs in the keeper
    """The children announced and not withdrawn by the time the pipe closes."""
    children: set[Pid] = set()
    pending = b""
    while chunk := os.read(pipe, 65536):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            pid, start = line[1:].split()
            process = Pid(int(pid), int(start))
            if line.startswith(b"+"):
                children.add(process)
            else:
                children.discard(process)
    return children
