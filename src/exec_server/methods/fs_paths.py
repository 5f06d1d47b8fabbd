"""``fs/canonicalize`` and ``fs/watchMissing`` (codex 0.169).

``fs/canonicalize`` resolves every symlink of an existing path, on a worker thread, with the
errors mapped as for the other ``fs/*`` methods (a missing path is -32004, a symlink loop
-32603). ``fs/watchMissing`` registers a one-shot watch (see :mod:`..fs.watch`) in the
session's table, which sends ``fs/missingChanged`` to whichever connection the session is
attached to when it fires.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from ..errors import invalid_params
from ..fs import sandboxed
from ..paths import parse_path, to_file_uri
from ..protocol.fs import (
    FsCanonicalizeResult,
    FsPathParams,
    FsWatchMissingParams,
    FsWatchMissingResult,
    missing_changed_notification,
)
from . import method
from .fs import FILESYSTEM, _reply, _submit_under_policy

if TYPE_CHECKING:
    from ..connection import Connection
    from ..fs.watch import MissingWatches, PathView


def _canonical(path: str) -> str:
    return os.path.realpath(path, strict=True)


@method("fs/canonicalize", FsPathParams, FILESYSTEM)
def canonicalize(connection: Connection, params: FsPathParams) -> Awaitable[FsCanonicalizeResult]:
    """The path with ``.``/``..`` and every symlink resolved; the path must exist."""
    path = parse_path(params.path, "path")
    work = _submit_under_policy(
        connection, params.sandbox, _canonical, sandboxed.canonicalize, path
    )
    return _reply(work, lambda real: FsCanonicalizeResult(to_file_uri(real)))


def _watches(connection: Connection) -> MissingWatches:
    """The session's watch table, created on first use and released with the session."""
    from ..fs.watch import MissingWatches  # inotify through ctypes, on first use

    session = connection.require_session()

    def notify(watch_id: int) -> None:
        attached = session.connection
        if attached is not None:  # a detached session's changes are not replayed
            attached.send_notification(missing_changed_notification(watch_id))

    limit = connection.server.limits.fs_max_watched_paths
    return session.resources.get(
        MissingWatches, lambda: MissingWatches(asyncio.get_running_loop(), notify, limit)
    )


@method("fs/watchMissing", FsWatchMissingParams, FILESYSTEM)
def watch_missing(connection: Connection, params: FsWatchMissingParams) -> FsWatchMissingResult:
    """Watch for any of ``missing`` to appear (or ``present`` to change); ``watching`` says
    whether the watch was taken."""
    if not 0 <= params.watch_id < 2**64:
        raise invalid_params(f"watchId must be an unsigned 64-bit integer, got {params.watch_id}")
    missing = [parse_path(path, "missing") for path in params.missing]
    present = None if params.present is None else parse_path(params.present, "present")
    watches = _watches(connection)
    view = _view_under_confinement(connection)
    return FsWatchMissingResult(watches.register(params.watch_id, missing, present, view))


def _view_under_confinement(connection: Connection) -> PathView:
    """The filesystem as the operator's confinement lets it be seen (the server's own files
    hidden with what it hides); as it is without a confinement (the client may then see
    everything)."""
    from ..fs.watch import PLAIN

    guards = connection.server.guards
    if guards.confinement is None:
        return PLAIN
    from ..sandbox.enforce import fs_policy
    from ..sandbox.policy import UNRESTRICTED, Access, Policy, PolicyError, for_fs_calls

    try:
        policy = fs_policy(None, guards.confinement, os.getcwd()) or UNRESTRICTED
    except PolicyError:
        policy = Policy(base=Access.NONE)  # nothing can be told apart: everything is hidden
    return sandboxed.PolicyView(for_fs_calls(policy, guards.private_paths))
