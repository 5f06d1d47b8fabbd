"""Watching children exit, and reaping every child the server has, adopted ones included.

A pidfd (Linux 5.3 and later) becomes readable when its process exits, so the loop notices
an exit like any other event. Where there is none (an older kernel, or ``pidfd_open``
failing for this child), a thread waits for that one child with ``waitid(WNOWAIT)`` and
hands the news to the loop, which reaps it. Either way the real status is reaped exactly
once, by the loop.

A server that adopts orphans (a child subreaper, or PID 1 in a container) also has children
it never started. With ``reap_orphans`` it reaps them: after every exit it watches and every
couple of seconds it takes every zombie child (a watched one is handed to its callback, so
each status is still reaped once). It cannot wait for SIGCHLD instead: uvloop keeps that
signal for itself. Orphans are attributed to the child they came from when that child exits
(:meth:`ExitWatcher.claim_orphans`), so they can be killed with its tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable

from .keeper import Keeper
from .tree import Pid, adopted_orphans

ExitCallback = Callable[[int], None]
"""Called on the loop with the raw wait status of the reaped child."""

ORPHAN_REAP_INTERVAL_S = 2.0
"""How often zombies of adopted orphans are looked for between exits of watched children."""


class ExitWatcher:
    """Watches and reaps the children of this process; see the module docstring."""

    def __init__(
        self, use_pidfd: bool = True, reap_orphans: bool = False, keeper: Keeper | None = None
    ) -> None:
        """``keeper``: told of every child, to clean up should the server die (keeper.py)."""
        self.keeper = keeper
        self._loop = asyncio.get_running_loop()
        self._use_pidfd = use_pidfd and hasattr(os, "pidfd_open")
        self._watched: dict[int, ExitCallback] = {}
        self._pidfds: dict[int, int] = {}
        self._claimed: set[Pid] = set()
        self._reap_orphans = reap_orphans
        self._timer: asyncio.TimerHandle | None = None
        if reap_orphans:
            self._timer = self._loop.call_later(ORPHAN_REAP_INTERVAL_S, self._tick)

    def watch(self, pid: int, on_exit: ExitCallback) -> None:
        """Reap ``pid`` once it exits and call ``on_exit(status)`` on the loop."""
        self._watched[pid] = on_exit
        pidfd = self._open_pidfd(pid)
        if pidfd >= 0:
            self._pidfds[pid] = pidfd
            self._loop.add_reader(pidfd, self._on_news, pid)
            return
        thread = threading.Thread(
            target=self._wait_in_thread, args=(pid,), name=f"wait-{pid}", daemon=True
        )
        thread.start()

    def _open_pidfd(self, pid: int) -> int:
        if not self._use_pidfd:
            return -1
        try:
            return os.pidfd_open(pid)
        except OSError:  # no pidfd to be had for this child: a thread waits for it instead
            return -1

    def _wait_in_thread(self, pid: int) -> None:
        with contextlib.suppress(ChildProcessError):
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
            self._loop.call_soon_threadsafe(self._on_news, pid)

    def _on_news(self, pid: int) -> None:
        """A watched child may have exited: reap it if it has (once: it may be gone)."""
        if pid not in self._watched:
            return  # reaped already, by :meth:`reap_zombies`
        try:
            reaped, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # pragma: no cover - someone else reaped it
            reaped, status = pid, 0
        if reaped:
            self._finish(pid, status)
        if self._reap_orphans:
            self.reap_zombies()

    def _finish(self, pid: int, status: int) -> None:
        on_exit = self._watched.pop(pid)
        pidfd = self._pidfds.pop(pid, -1)
        if pidfd >= 0:
            self._loop.remove_reader(pidfd)
            os.close(pidfd)
        on_exit(status)

    # ---- orphans ------------------------------------------------------------------------------

    def reap_zombies(self) -> None:
        """Reap every child that has exited: a watched one through its callback, an adopted
        orphan by itself."""
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return  # no children at all
            if info is None:
                return
            try:
                _, status = os.waitpid(info.si_pid, 0)
            except ChildProcessError:  # pragma: no cover - reaped in between
                continue
            if info.si_pid in self._watched:
                self._finish(info.si_pid, status)

    def _tick(self) -> None:
        self.reap_zombies()
        self._claimed = {p for p in self._claimed if p.alive()}
        self._timer = self._loop.call_later(ORPHAN_REAP_INTERVAL_S, self._tick)

    def claim_orphans(self) -> list[Pid]:
        """Orphans the server has adopted since the last claim (it started none of them):
        call it as the child they came from exits. Only a server that adopts orphans has
        any to claim."""
        if not self._reap_orphans:
            return []
        known = set(self._watched)
        if self.keeper is not None:
            known.add(self.keeper.pid)  # the server's own helper, never anyone's leftover
        found = adopted_orphans(os.getpid(), known)
        new = [p for p in found if p not in self._claimed]
        self._claimed.update(new)
        return new

    def close(self) -> None:
        """The server is done (every child was killed): stop, and let the keeper go."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.keeper is not None:
            self.keeper.close()
