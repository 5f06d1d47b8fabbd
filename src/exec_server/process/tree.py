"""Whole process trees: finding every descendant of a child, and killing them all.

A process group reaches a child and what stayed in its group, but a descendant that calls
``setsid`` (a daemon, ``setsid sleep &``, a terminal multiplexer) leaves it. So every child
is made a *child subreaper* before it execs: a descendant orphaned while the child lives is
adopted by the child rather than by init, and stays in its subtree. The subtree is read
from ``/proc`` (each process's parent), together with everything in the child's session
and group, and killed in rounds until a round finds nothing new (a process forking while it
is killed shows up in the next round).

A descendant that outlives the child itself is adopted by the server (a subreaper too, when
it runs as the ``exec-server`` command, or PID 1): at the child's exit the manager notes
which new orphans it now has and kills them with the child's tree later.

Processes are named by :class:`Pid`, a pid with the start time the kernel records for it,
so a pid that was reused by an unrelated process is never signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterable

import msgspec

_PR_SET_CHILD_SUBREAPER = 36


class Pid(msgspec.Struct, frozen=True):
    """A process: its pid and its start time (clock ticks since boot), which together are
    unique for as long as the machine runs."""

    pid: int
    start: int

    @classmethod
    def of(cls, pid: int) -> Pid | None:
        """The process with this pid now, or None when there is none."""
        stat = _stat(pid)
        return None if stat is None else cls(pid, stat.start)

    def alive(self) -> bool:
        """Whether this very process still exists and has not exited (not a zombie)."""
        stat = _stat(self.pid)
        return stat is not None and stat.start == self.start and stat.state != "Z"

    def signal(self, signum: int) -> None:
        """Signal it if it is still this process; a gone process is fine."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, signum)


class _Stat(msgspec.Struct, frozen=True):
    pid: int
    state: str
    ppid: int
    pgid: int
    sid: int
    start: int


def _stat(pid: int) -> _Stat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            raw = file.read()
    except OSError:
        return None
    return _parse_stat(pid, raw)


def _parse_stat(pid: int, raw: bytes) -> _Stat | None:
    # The command name is in parentheses and may itself hold spaces and parentheses.
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        return _Stat(
            pid,
            fields[0].decode(),
            int(fields[1]),
            int(fields[2]),
            int(fields[3]),
            int(fields[19]),
        )
    except (IndexError, ValueError):
        return None


def _all_stats() -> list[_Stat]:
    stats = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _stat(int(name))
            if stat is not None:
                stats.append(stat)
    return stats


def _subtree(root: Pid, stats: list[_Stat], children: dict[int, list[_Stat]]) -> list[Pid]:
    """Every living process of ``root``'s tree in one reading of ``/proc``: its descendants
    (by parent, through any session) while ``root`` is that very process, and whatever is in
    its session or its group (``root`` led both; the kernel does not reuse a pid that still
    names a session or a group, so those members are root's even after it is gone)."""
    found: dict[int, _Stat] = {}
    holder = next((s for s in stats if s.pid == root.pid), None)
    if holder is not None and holder.start != root.start:
        return []  # the pid is another process's now: so are any session and group by it
    if holder is not None:
        stack = [root.pid]
        while stack:
            for child in children.get(stack.pop(), ()):
                if child.pid not in found and child.start >= root.start:
                    found[child.pid] = child
                    stack.append(child.pid)
    for stat in stats:
        if (stat.sid == root.pid or stat.pgid == root.pid) and stat.start >= root.start:
            found.setdefault(stat.pid, stat)
    return [Pid(s.pid, s.start) for s in found.values() if s.state != "Z"]


class _Snapshot:
    """One reading of ``/proc``: every process, by parent, and the living ones."""

    def __init__(self) -> None:
        self.stats = _all_stats()
        self.children: dict[int, list[_Stat]] = {}
        for stat in self.stats:
            self.children.setdefault(stat.ppid, []).append(stat)
        self.living = {Pid(s.pid, s.start) for s in self.stats if s.state != "Z"}

    def tree(self, root: Pid) -> list[Pid]:
        found = _subtree(root, self.stats, self.children)
        return [root, *found] if root in self.living else found


def members(roots: Iterable[Pid]) -> set[Pid]:
    """The living processes of every root's tree, roots included (see :func:`_subtree`)."""
    snapshot = _Snapshot()
    found: set[Pid] = set()
    for root in roots:
        found.update(snapshot.tree(root))
    return found


def with_living_members(roots: Iterable[Pid]) -> list[Pid]:
    """The roots whose tree still has a living process. A tree with none can gain none (no
    one is left to fork into it, and a reused pid has another start time), so the others
    can be forgotten."""
    snapshot = _Snapshot()
    return [root for root in roots if snapshot.tree(root)]


def kill_trees(roots: Iterable[Pid], *, signum: int = signal.SIGKILL, rounds: int = 8) -> None:
    """Signal every root and its whole tree (SIGKILL unless told otherwise), in rounds until
    a round finds nothing left (each round also sees what forked during the last one)."""
    roots = list(roots)
    for _ in range(rounds):
        targets = members(roots)
        if not targets:
            return
        for process in targets:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(process.pid, signum)


def _children_of(pid: int) -> set[int] | None:
    """The child pids of ``pid`` from ``/proc/PID/task/*/children``, or None where the
    kernel has no such file (then the caller scans every process)."""
    found: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
        for task in tasks:
            with open(f"/proc/{pid}/task/{task}/children", "rb") as file:
                found.update(int(child) for child in file.read().split())
    except FileNotFoundError:
        return None
    except OSError:  # a thread gone between the listing and the read
        pass
    return found


def adopted_orphans(server_pid: int, known: set[int]) -> list[Pid]:
    """Processes whose parent is the server and that it did not start itself (``known``):
    orphans it adopted as a subreaper or as PID 1."""
    children = _children_of(server_pid)
    if children is None:
        stats = [s for s in _all_stats() if s.ppid == server_pid]
    else:
        stats = [s for s in map(_stat, children - known) if s is not None]
    return [Pid(s.pid, s.start) for s in stats if s.pid not in known and s.state != "Z"]


def become_subreaper() -> bool:
    """Make this process adopt its orphaned descendants (PR_SET_CHILD_SUBREAPER); False
    where the kernel refuses. Through the spawn helper when it is built (ctypes is a
    noticeable import for a server started per session), else through ctypes."""
    try:
        from ._spawn import become_subreaper as native
    except ImportError:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    return native()
