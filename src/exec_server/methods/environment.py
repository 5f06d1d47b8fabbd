"""The handshake (``initialize``) and what the server says about its machine."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import msgspec

from ..protocol import (
    EnvironmentInfo,
    EnvironmentStatusResult,
    InitializeParams,
    InitializeResult,
    SandboxInfo,
)
from . import method

if TYPE_CHECKING:
    from ..connection import Connection


EXTENSIONS: dict[str, bool] = {
    "signal": True,  # process/signal: any name or number; a terminal's foreground group
    "closeStdin": True,  # process/closeStdin
    "resize": True,  # process/resize, and `size` on process/start
    "list": True,  # process/list
    "timeouts": True,  # `timeoutMs` and `idleTimeoutMs` on process/start
    "terminateGrace": True,  # `graceMs` on process/terminate
    "drainTimeout": True,  # `drainTimeoutMs` on process/start; `drained` on process/closed
    "treeKill": True,  # terminate, timeouts and session ends reach setsid descendants
    "terminatedBy": True,  # `terminatedBy` and `signal` on process/exited
    "forward": True,  # forward/*: TCP streams to a host:port reached from the server
}
"""Ours, beyond the reference: one flag per protocol extension, in ``initialize``'s answer
where reference clients ignore it (docs/protocol.md describes each)."""


@method("initialize", InitializeParams, None)
def initialize(connection: Connection, params: InitializeParams) -> InitializeResult:
    """Create a session, or resume a detached one; a failed resume may be retried."""
    connection.begin_initialize()
    sessions = connection.server.sessions
    if params.resume_session_id is not None:
        session = sessions.resume(params.resume_session_id, connection, params.client_name)
    else:
        session = sessions.create(connection, params.client_name)
    connection.attach(session)
    return InitializeResult(session.id, connection.server.environment_info, EXTENSIONS)


@method("environment/info", Any, None)
async def environment_info(connection: Connection, params: Any) -> EnvironmentInfo:
    """The machine, and whether the sandbox mechanism runs here (tried once, off the loop)."""
    from ..sandbox.bwrap import SHARED_PROC_REASON, support
    from ..sandbox.cgroup import pids_cgroups

    found = await asyncio.to_thread(support)
    cgroups = await asyncio.to_thread(pids_cgroups)
    limit = connection.server.guards.pids_limit
    info = connection.server.environment_info
    # Whether /proc is fresh is known once a sandbox ran (with or without one).
    ran = found.bwrap is not None and found.reason in (None, SHARED_PROC_REASON)
    sandbox = SandboxInfo(
        "bubblewrap",
        found.bwrap,
        found.usable,
        found.reason,
        seccomp=found.usable and found.seccomp,
        pids_cgroup=found.usable and cgroups.usable and limit > 0,
        pids_limit=limit if cgroups.usable and limit > 0 else None,
        pids_cgroup_reason=cgroups.reason if limit > 0 else "--sandbox-pids-limit is 0",
        fresh_proc=found.fresh_proc if ran else None,
    )
    return msgspec.structs.replace(info, sandbox=sandbox)


@method("environment/status", Any, None)
def environment_status(connection: Connection, params: Any) -> EnvironmentStatusResult:
    return EnvironmentStatusResult()
