"""A pids cgroup per sandboxed command, so a fork bomb inside a sandbox stops at a limit
instead of taking the host's pid space.

Where the server may create cgroups with the pids controller (cgroup v1's ``pids``
hierarchy, or a cgroup v2 subtree whose ``cgroup.subtree_control`` has ``pids``, as a
systemd unit with ``Delegate=pids`` gets), :func:`pids_cgroups` finds the place once: a
directory ``exec-server-<pid>`` under the server's own cgroup. Each sandbox then gets a
child ``s<n>`` with ``pids.max`` set; the spawned launcher moves itself into it before it
executes (it writes ``0`` to the ``cgroup.procs`` descriptor it is handed), so bubblewrap and
everything below it are counted from their first fork. Where no such place exists, the
reason says what to configure, and ``environment/info`` reports the cgroup as off.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import itertools
import os
import threading
from dataclasses import dataclass

_CGROUP_ROOTS = "/sys/fs/cgroup"
HOW_TO_ENABLE = (
    "run the server where it may create cgroups with the pids controller: as root with "
    "cgroup v1's pids hierarchy, or in a cgroup v2 subtree delegated to it with pids enabled "
    "(systemd: Delegate=pids, the server in a sub-cgroup); otherwise bound the whole service "
    "instead (systemd TasksMax=, the container's --pids-limit)"
)


@dataclass(frozen=True, slots=True)
class PidsCgroups:
    """Where per-sandbox pids cgroups are made (``group``), or why they cannot be."""

    group: str | None
    version: int = 0
    reason: str | None = None

    @property
    def usable(self) -> bool:
        return self.group is not None


@dataclass(slots=True)
class SandboxCgroup:
    """One sandbox's pids cgroup: ``procs_fd`` (its ``cgroup.procs``, open for writing) is
    handed to the spawned launcher; :meth:`spawned` closes it, :meth:`remove` gives the
    cgroup back once the sandbox has exited."""

    path: str
    procs_fd: int | None

    def spawned(self) -> None:
        fd, self.procs_fd = self.procs_fd, None
        if fd is not None:
            os.close(fd)

    def remove(self) -> None:
        """Give the cgroup back for a later sandbox (made and removed cgroups cost the
        kernel more than reused ones). Its last processes may still be leaving (the PID
        namespace is torn down behind the reaped launcher): it is reused only once empty."""
        self.spawned()
        _pool.give_back(self.path)


@functools.cache
def pids_cgroups() -> PidsCgroups:
    """Find (once) where this server can make pids cgroups; see the module docstring."""
    try:
        return _find()
    except OSError as exc:
        return PidsCgroups(None, reason=f"cannot set up pids cgroups ({exc}): {HOW_TO_ENABLE}")


def create(limit: int) -> SandboxCgroup | None:
    """A pids cgroup allowing ``limit`` tasks and holding none, or None when there is no
    place for one (see :func:`pids_cgroups`) or ``limit`` is 0. OSError if making it failed."""
    found = pids_cgroups()
    if limit <= 0 or found.group is None:
        return None
    path = _pool.take() or _make(found.group)
    try:
        with open(os.path.join(path, "pids.max"), "w") as handle:
            handle.write(str(limit))
        fd = os.open(os.path.join(path, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)
    except BaseException:
        _pool.give_back(path)
        raise
    return SandboxCgroup(path, fd)


_serial = itertools.count(1)


def _make(group: str) -> str:
    path = os.path.join(group, f"s{next(_serial)}")
    os.mkdir(path)
    return path


def _empty(path: str) -> bool:
    try:
        with open(os.path.join(path, "cgroup.procs"), "rb") as handle:
            return not handle.read(1)
    except OSError:
        return False


class _Pool:
    """Cgroups made by this server and not in use: ``free`` (empty) and ``draining`` (the
    last processes of their sandbox still leaving), checked again on each :meth:`take`.
    All are removed when the server exits."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: list[str] = []
        self._draining: list[str] = []

    def take(self) -> str | None:
        with self._lock:
            still: list[str] = []
            for path in self._draining:
                (self._free if _empty(path) else still).append(path)
            self._draining = still
            return self._free.pop() if self._free else None

    def give_back(self, path: str) -> None:
        with self._lock:
            self._draining.append(path)

    def remove_all(self) -> None:
        with self._lock:
            paths, self._free, self._draining = self._free + self._draining, [], []
        for path in paths:
            with contextlib.suppress(OSError):
                os.rmdir(path)


_pool = _Pool()


def _find() -> PidsCgroups:
    own = _own_cgroups()
    mounts = _cgroup_mounts()
    v1 = mounts.get("pids")
    if v1 is not None and "pids" in own:
        return _make_group(_join(v1, own["pids"]), 1)
    v2 = mounts.get("")
    if v2 is None or "" not in own:
        return PidsCgroups(None, reason=f"no pids cgroup controller is mounted: {HOW_TO_ENABLE}")
    base = _join(v2, own[""])
    with open(os.path.join(base, "cgroup.subtree_control")) as handle:
        enabled = handle.read().split()
    if "pids" not in enabled:
        return PidsCgroups(
            None,
            reason=f"the pids controller is not enabled below the server's cgroup {base}: "
            + HOW_TO_ENABLE,
        )
    return _make_group(base, 2)


def _join(mount: tuple[str, str], path: str) -> str:
    """The directory of cgroup ``path`` under a mount (point, root inside the hierarchy)."""
    point, root = mount
    relative = path.removeprefix(root) if root != "/" else path
    return os.path.join(point, relative.lstrip("/"))


def _make_group(base: str, version: int) -> PidsCgroups:
    _clean_stale(base)
    group = os.path.join(base, f"exec-server-{os.getpid()}")
    with contextlib.suppress(FileExistsError):
        os.mkdir(group)
    if version == 2:
        with open(os.path.join(group, "cgroup.subtree_control"), "w") as handle:
            handle.write("+pids")
    atexit.register(_remove_group, group)
    return PidsCgroups(group, version)


def _remove_group(group: str) -> None:
    _pool.remove_all()
    with contextlib.suppress(OSError):
        os.rmdir(group)


def _clean_stale(base: str) -> None:
    """Remove the empty groups of servers that are gone (killed before they could)."""
    with contextlib.suppress(OSError):
        for name in os.listdir(base):
            pid = name.removeprefix("exec-server-")
            if pid == name or not pid.isdigit() or os.path.exists(f"/proc/{pid}"):
                continue
            group = os.path.join(base, name)
            with contextlib.suppress(OSError):
                for child in os.listdir(group):
                    if os.path.isdir(os.path.join(group, child)):
                        os.rmdir(os.path.join(group, child))
                os.rmdir(group)


def _own_cgroups() -> dict[str, str]:
    """Controller -> this process's cgroup path ("" for the v2 unified hierarchy)."""
    own: dict[str, str] = {}
    with open("/proc/self/cgroup") as handle:
        for line in handle:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                own[controller] = path
    return own


def _cgroup_mounts() -> dict[str, tuple[str, str]]:
    """Controller -> (mount point, its root in the hierarchy): ``pids`` for a v1 pids
    hierarchy, "" for cgroup2."""
    mounts: dict[str, tuple[str, str]] = {}
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            fields = line.split()
            separator = fields.index("-")
            root, point, fstype = fields[3], fields[4], fields[separator + 1]
            options = fields[separator + 3].split(",") if len(fields) > separator + 3 else []
            if not point.startswith(_CGROUP_ROOTS):
                continue
            if fstype == "cgroup2":
                mounts.setdefault("", (point, root))
            elif fstype == "cgroup" and "pids" in options:
                mounts.setdefault("pids", (point, root))
    return mounts
