"""The server object: configuration, the session registry, and orderly shutdown."""

from __future__ import annotations

import functools
import os
import pwd
import sys
from collections.abc import Sequence

from . import __version__
from .capabilities import capabilities
from .config import Guards, Limits, Runtime
from .fs.handles import HandleBudget
from .memory import MemoryReturn, nothing
from .paths import to_file_uri
from .process.exits import ExitWatcher
from .process.keeper import Keeper
from .process.spawn import spawn
from .protocol import (
    EnvironmentInfo,
    ProcessNotifications,
    SandboxInfo,
    ShellInfo,
    base64_encoder,
)
from .sessions import SessionRegistry


def describe_environment(prepend_path_dirs: Sequence[str] = ()) -> EnvironmentInfo:
    """What ``initialize`` and ``environment/info`` tell a client about this machine."""
    shell_path = os.environ.get("SHELL") or _login_shell() or "/bin/sh"
    home = os.path.expanduser("~")
    temp_dir = temp_directory()
    return EnvironmentInfo(
        shell=ShellInfo(name=os.path.basename(shell_path), path=shell_path),
        executor_version=__version__,
        provider_id="local",
        cwd=to_file_uri(os.getcwd()),
        user_home_dir=to_file_uri(home),
        platform_os=sys.platform,
        prepend_path_dirs=[to_file_uri(d) for d in prepend_path_dirs],
        # as the reference: $TMPDIR when it is set, else none (tempDir still names one)
        temporary_directories=[to_file_uri(temp_dir)] if os.environ.get("TMPDIR") else [],
        temp_dir=to_file_uri(temp_dir),
        capabilities=capabilities(),
        sandbox=SandboxInfo("bubblewrap", _bwrap_binary()),
    )


def _bwrap_binary() -> str | None:
    """Where bwrap is, as the sandbox will look for it (not whether it runs: the probe that
    tells runs bwrap, and waits for ``environment/info``)."""
    for directory in [*os.get_exec_path(), "/usr/bin"]:
        candidate = os.path.join(directory, "bwrap")
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    return None


def temp_directory() -> str:
    """Where temporary files go: ``$TMPDIR`` (or ``$TEMP``, ``$TMP``) when it names a
    directory, else ``/tmp``, as most programs decide (``tempfile`` would also probe each
    candidate by writing to it, which is not worth its import at start-up)."""
    for name in ("TMPDIR", "TEMP", "TMP"):
        candidate = os.environ.get(name)
        if candidate and os.path.isdir(candidate):
            return os.path.abspath(candidate)
    return "/tmp"


def _login_shell() -> str | None:
    try:
        return pwd.getpwuid(os.getuid()).pw_shell or None
    except KeyError:
        return None


def _handle_bound(configured: int) -> int:
    """The server-wide bound on fs/open handles: as configured, but never more than half
    the open-file limit, so handles alone cannot take the descriptors connections and
    children need."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return configured if soft == resource.RLIM_INFINITY else min(configured, soft // 2)


class Server:
    """Everything connections share: limits, runtime choices, the operator's guards,
    sessions, and facts about the machine. Built inside the running event loop; ``runtime``
    is resolved here, once."""

    def __init__(
        self,
        limits: Limits | None = None,
        runtime: Runtime | None = None,
        guards: Guards | None = None,
        keeper: Keeper | None = None,
        prepend_path_dirs: Sequence[str] = (),
    ) -> None:
        """``keeper``: the process that cleans up should this one die (``process/keeper.py``);
        the ``exec-server`` command forks it before the loop starts. ``prepend_path_dirs``:
        put at the front of every child's PATH (``--prepend-path``)."""
        self.limits = limits or Limits()
        self.runtime = (runtime or Runtime()).resolve()
        self.guards = guards or Guards()
        b64encode = base64_encoder(self.runtime.pybase64)
        self.exits = ExitWatcher(
            use_pidfd=self.runtime.pidfd, reap_orphans=self.runtime.subreaper, keeper=keeper
        )
        self.memory = MemoryReturn() if self.runtime.return_memory else None
        self.sessions = SessionRegistry(
            self.limits,
            functools.partial(spawn, native=self.runtime.native_spawn),
            self.exits,
            lambda: ProcessNotifications(b64encode),
            released=nothing if self.memory is None else self.memory.soon,
        )
        self.prepend_path_dirs = tuple(prepend_path_dirs)
        self.environment_info = describe_environment(self.prepend_path_dirs)
        self.server_env: dict[str, str] = dict(os.environ)
        self.handle_budget = HandleBudget(_handle_bound(self.limits.fs_max_open_handles_total))

    async def shutdown(self, timeout: float = 5.0) -> None:
        """End every session: every child and all it started is killed, then reaped."""
        for session in self.sessions.shutdown():
            await session.processes.wait_reaped(timeout)
        self.exits.close()
        if self.memory is not None:
            self.memory.close()
