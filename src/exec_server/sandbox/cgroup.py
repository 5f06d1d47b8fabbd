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
import time
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
    handed to the spawned launcher; :meth:`spawned` closes it, :meth:`remove` deletes the
    cgroup once the sandbox has exited."""

    path: str
    procs_fd: int | None

    def spawned(self) -> None:
        fd, self.procs_fd = self.procs_fd, None
        if fd is not None:
            os.close(fd)

    def remove(self) -> None:
        """Delete the cgroup. Its last processes may take a moment to leave after the
        launcher has been reaped (the PID namespace is torn down behind it): a cgroup still
        in use is retried by a worker thread, and swept when the server exits."""
        self.spawned()
        try:
            os.rmdir(self.path)
        except FileNotFoundError:
            pass
        except OSError:
            _remover.add(self.path)


@functools.cache
def pids_cgroups() -> PidsCgroups:
    """Find (once) where this server can make pids cgroups; see the module docstring."""
    try:
        return _find()
    except OSError as exc:
        return PidsCgroups(None, reason=f"cannot set up pids cgroups ({exc}): {HOW_TO_ENABLE}")


def create(limit: int) -> SandboxCgroup | None:
    """A new pids cgroup allowing ``limit`` tasks, or None when there is no place for one
    (see :func:`pids_cgroups`) or ``limit`` is 0. OSError if making it failed."""
    found = pids_cgroups()
    if limit <= 0 or found.group is None:
        return None
    path = os.path.join(found.group, f"s{next(_serial)}")
    os.mkdir(path)
    try:
        with open(os.path.join(path, "pids.max"), "w") as handle:
            handle.write(str(limit))
        fd = os.open(os.path.join(path, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)
    except BaseException:
        with contextlib.suppress(OSError):
            os.rmdir(path)
        raise
    return SandboxCgroup(path, fd)


_serial = itertools.count(1)


class _Remover:
    """Removes cgroups that were still populated when their sandbox ended: one daemon
    thread, started on first need, retrying every few milliseconds until each is empty
    (then at exit, by :meth:`sweep`)."""

    RETRY_S = 0.005
    GIVE_UP_S = 10.0

    def __init__(self) -> None:
        self._pending: dict[str, float] = {}
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, path: str) -> None:
        with self._wake:
            self._pending[path] = time.monotonic() + self.GIVE_UP_S
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="exec-server-cgroup-remover", daemon=True
                )
                self._thread.start()
            self._wake.notify()

    def sweep(self) -> None:
        """Try each pending cgroup once."""
        with self._wake:
            for path in list(self._pending):
                if _removed(path):
                    del self._pending[path]

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._pending:
                    self._wake.wait()
                now = time.monotonic()
                for path, deadline in list(self._pending.items()):
                    if _removed(path) or now > deadline:
                        del self._pending[path]
            time.sleep(self.RETRY_S)


def _removed(path: str) -> bool:
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


_remover = _Remover()


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
    _remover.sweep()
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
