"""Watching children exit, and reaping them: through a pidfd on the event loop, or a thread.

A pidfd (Linux 5.3 and later) becomes readable when its process exits, so the loop notices
an exit like any other event. Where there is none (an older kernel, or ``pidfd_open``
failing for this child), a thread waits for that one child with ``waitid(WNOWAIT)`` and
hands the news to the loop, which reaps it. Either way the real status is reaped exactly
once, by the loop, and every watched child is reaped: no zombie is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable

ExitCallback = Callable[[int], None]
"""Called on the loop with the raw wait status of the reaped child."""


class ExitWatcher:
    """Watches children of this process; see the module docstring."""

    def __init__(self, use_pidfd: bool = True) -> None:
        self._loop = asyncio.get_running_loop()
        self._use_pidfd = use_pidfd and hasattr(os, "pidfd_open")
        self._pidfds: dict[int, int] = {}

    def watch(self, pid: int, on_exit: ExitCallback) -> None:
        """Reap ``pid`` once it exits and call ``on_exit(status)`` on the loop."""
        pidfd = self._open_pidfd(pid)
        if pidfd >= 0:
            self._pidfds[pid] = pidfd
            self._loop.add_reader(pidfd, self._on_pidfd, pid, on_exit)
            return
        thread = threading.Thread(
            target=self._wait_in_thread, args=(pid, on_exit), name=f"wait-{pid}", daemon=True
        )
        thread.start()

    def _open_pidfd(self, pid: int) -> int:
        if not self._use_pidfd:
            return -1
        try:
            return os.pidfd_open(pid)
        except OSError:  # no pidfd to be had for this child: a thread waits for it instead
            return -1

    def _on_pidfd(self, pid: int, on_exit: ExitCallback) -> None:
        status = _reap(pid)
        if status is None:
            return  # not yet (a stopped child can make the pidfd readable on some kernels)
        pidfd = self._pidfds.pop(pid)
        self._loop.remove_reader(pidfd)
        os.close(pidfd)
        on_exit(status)

    def _wait_in_thread(self, pid: int, on_exit: ExitCallback) -> None:
        with contextlib.suppress(ChildProcessError):
            while True:
                try:
                    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
                    break
                except InterruptedError:  # pragma: no cover - PEP 475 retries for us
                    continue
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
            self._loop.call_soon_threadsafe(self._reap_from_thread, pid, on_exit)

    def _reap_from_thread(self, pid: int, on_exit: ExitCallback) -> None:
        status = _reap(pid)
        on_exit(0 if status is None else status)


def _reap(pid: int) -> int | None:
    """The child's wait status, reaping it; None while it still runs."""
    try:
        reaped, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # pragma: no cover - someone else reaped it
        return 0
    return status if reaped else None
