"""The server object: configuration, the session registry, and orderly shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import pwd
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .capabilities import EXECUTOR_VERSION, capabilities
from .config import Guards, Limits, Runtime
from .memory import MemoryReturn, nothing
from .observability import Heartbeat, Metrics
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

if TYPE_CHECKING:
    from .connection import Connection
    from .fs.handles import HandleBudget

SHUTDOWN_REASON = "exec-server is shutting down"
"""Begins the reason of the WebSocket close (1001) a client gets when the server exits."""


def describe_environment(prepend_path_dirs: Sequence[str] = ()) -> EnvironmentInfo:
    """What ``initialize`` and ``environment/info`` tell a client about this machine."""
    shell_path = os.environ.get("SHELL") or _login_shell() or "/bin/sh"
    home = os.path.expanduser("~")
    temp_dir = temp_directory()
    return EnvironmentInfo(
        shell=ShellInfo(name=os.path.basename(shell_path), path=shell_path),
        executor_version=EXECUTOR_VERSION,
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
        self.metrics = Metrics()
        """Every count and event of this server (``observability.py``)."""
        self.sessions = SessionRegistry(
            self.limits,
            functools.partial(spawn, native=self.runtime.native_spawn),
            self.exits,
            lambda: ProcessNotifications(b64encode),
            released=nothing if self.memory is None else self.memory.soon,
            metrics=self.metrics,
        )
        self.metrics.watch(
            lambda: len(self.sessions), self.sessions.process_states, lambda: self.draining
        )
        self.heartbeat = Heartbeat()
        """The event loop's proof of life, for ``/healthz`` (started by a listener)."""
        self.draining = False
        """Set on SIGTERM: no new session or process is taken (a detached session may still
        be resumed), ``/readyz`` answers 503."""
        self.connections: set[Connection] = set()
        """Every open client connection (see :meth:`connection_began`)."""
        self._no_connections = asyncio.Event()
        self._no_connections.set()
        self.prepend_path_dirs = tuple(prepend_path_dirs)
        self.environment_info = describe_environment(self.prepend_path_dirs)
        self.server_env: dict[str, str] = dict(os.environ)

    @functools.cached_property
    def handle_budget(self) -> HandleBudget:
        """The server-wide bound on open ``fs/open`` handles, made on first use (``fs/`` is
        imported with the ``fs/*`` methods, not at start-up)."""
        from .fs.handles import HandleBudget

        return HandleBudget(_handle_bound(self.limits.fs_max_open_handles_total))

    # ---- what the HTTP probes ask (transport/handshake.py) ------------------------------------

    def liveness_problem(self) -> str | None:
        """None while the event loop keeps its heartbeat, else what is wrong."""
        return self.heartbeat.problem()

    def metrics_exposition(self) -> tuple[bytes, str]:
        """``GET /metrics``: the Prometheus text, and its content type."""
        return self.metrics.exposition()

    # ---- the end ------------------------------------------------------------------------------

    async def drain(self, timeout_s: float, interrupted: asyncio.Event) -> bool:
        """Take no new session or process, and wait until every process has closed, for at
        most ``timeout_s`` or until ``interrupted`` is set. True when none was left running."""
        self.draining = True
        self.sessions.accepting = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.sessions.live_processes() and not interrupted.is_set():
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(interrupted.wait(), min(0.05, remaining))
        return not self.sessions.live_processes()

    def connection_began(self, connection: Connection) -> None:
        self.connections.add(connection)
        self._no_connections.clear()

    def connection_ended(self, connection: Connection) -> None:
        self.connections.discard(connection)
        if not self.connections:
            self._no_connections.set()

    async def goodbye(self, reason: str, timeout_s: float = 1.0) -> None:
        """Close every client connection, telling each why (WebSocket close 1001), and wait
        (at most ``timeout_s``) until they are closed, so the reason reaches them."""
        for connection in list(self.connections):
            connection.transport.shut_down(f"{SHUTDOWN_REASON}: {reason}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._no_connections.wait(), timeout_s)

    async def shutdown(self, timeout: float = 5.0) -> None:
        """End every session: every child and all it started is killed, then reaped."""
        self.heartbeat.stop()
        for session in self.sessions.shutdown():
            await session.processes.wait_reaped(timeout)
        self.exits.close()
        if self.memory is not None:
            self.memory.close()
