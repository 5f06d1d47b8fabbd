"""``fs/*``: files and directories on the server's machine (PROTOCOL.md Part B §4.5, §9, §14.2).

Each handler checks its params at once (paths → -32602 naming the field, sandbox → -32600)
and returns an awaitable that does the disk work on a worker thread, so a slow disk never
stalls the connection. OS failures are mapped as the reference maps them.
"""

from __future__ import annotations

import asyncio
import binascii
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import invalid_params, invalid_request
from ..fs import FileHandle, HandleTable, fs_error, sandboxed
from ..fs import handles as handle_io
from ..fs import operations as ops
from ..fs.errors import invalid_path_error
from ..paths import parse_path
from ..protocol import (
    EmptyResult,
    FsSandbox,
)
from ..protocol.fs import (
    FsCopyParams,
    FsCreateDirectoryParams,
    FsDirectoryEntry,
    FsHandleParams,
    FsMetadataResult,
    FsOpenParams,
    FsOpenResult,
    FsPathParams,
    FsReadBlockParams,
    FsReadBlockResult,
    FsReadDirectoryResult,
    FsReadFileResult,
    FsRemoveParams,
    FsWalkEntry,
    FsWalkError,
    FsWalkParams,
    FsWalkResult,
    FsWriteBlockParams,
    FsWriteFileParams,
)
from . import method

if TYPE_CHECKING:
    from ..config import Guards
    from ..connection import Connection
    from ..fs.walk import WalkOutcome
    from ..sandbox.policy import Policy
    from ..sandbox.profile import SandboxRequest

FILESYSTEM = "filesystem"

_T = TypeVar("_T")
_R = TypeVar("_R")


def _submit(function: Callable[..., _T], *args: Any) -> asyncio.Future[_T]:
    """Hand blocking disk work to a worker thread now, in arrival order.

    The work is submitted before the handler returns, and the reply waits on it through a
    shield: once accepted, an operation always runs to its end even if the connection goes
    away, so bookkeeping done around it (handle use counts, reservations) never leaks.
    """
    future = asyncio.get_running_loop().run_in_executor(None, function, *args)
    future.add_done_callback(_consume_outcome)
    return future


def _consume_outcome(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # an unanswered failure is not worth a "never retrieved" log


async def _reply(future: asyncio.Future[_T], convert: Callable[[_T], _R]) -> _R:
    """The reply for submitted work; OS errors become the §9 replies."""
    from ..sandbox.policy import PolicyError

    try:
        value = await asyncio.shield(future)
    except OSError as exc:
        raise fs_error(exc) from None
    except PolicyError as exc:
        raise invalid_params(f"failed to prepare fs sandbox: {exc}") from None
    except ValueError as exc:  # an embedded NUL byte, an unencodable name
        raise invalid_path_error(exc) from None
    return convert(value)


def _submit_under_policy(
    connection: Connection,
    sandbox: FsSandbox,
    plain: Callable[..., _T],
    sandboxed: Callable[..., _T],
    *args: Any,
) -> asyncio.Future[_T]:
    """Submit ``plain(*args)``, or ``sandboxed(policy, *args)`` when the request's profile
    (narrowed by the server's confinement) restricts the filesystem. The profile is
    checked now (-32602 with the reference's texts); it is resolved on the worker thread."""
    guards = connection.server.guards
    confinement = guards.confinement
    if sandbox is None and confinement is None:
        return _submit(plain, *args)
    from ..sandbox.profile import ProfileError, parse_sandbox

    try:
        profile = parse_sandbox(sandbox)
    except ProfileError as error:
        raise invalid_params(error.message) from None

    def work() -> _T:
        policy = fs_call_policy(profile, guards)
        return plain(*args) if policy is None else sandboxed(policy, *args)

    return _submit(work)


def fs_call_policy(profile: SandboxRequest | None, guards: Guards) -> Policy | None:
    """The policy a read or write done in the server's process (``fs/*``, capability
    discovery) runs under: the request's ``profile`` narrowed by the confinement, with the
    server's own files and ``/proc`` directories hidden (``for_fs_calls``). None when neither
    restricts the filesystem: as trusted as no profile at all, it may read anything. Blocking
    (it resolves paths): call it on a worker thread."""
    if profile is None and guards.confinement is None:
        return None
    from ..sandbox.enforce import fs_policy
    from ..sandbox.policy import for_fs_calls

    policy = fs_policy(profile, guards.confinement, os.getcwd())
    if policy is None or not policy.restricts_filesystem:
        return None
    return for_fs_calls(policy, guards.private_paths)


def _empty(_: object) -> EmptyResult:
    return EmptyResult()


# ---- whole-file and directory methods ------------------------------------------------------


@method("fs/readFile", FsPathParams, FILESYSTEM)
def read_file(connection: Connection, params: FsPathParams) -> Awaitable[FsReadFileResult]:
    """The file's bytes; above ``Limits.fs_read_file_max_bytes`` -32600 (use handles)."""
    path = parse_path(params.path, "path")
    limit = connection.server.limits.fs_read_file_max_bytes
    work = _submit_under_policy(
        connection, params.sandbox, ops.read_file, sandboxed.read_file, path, limit
    )
    return _reply(work, FsReadFileResult)


@method("fs/writeFile", FsWriteFileParams, FILESYSTEM)
def write_file(connection: Connection, params: FsWriteFileParams) -> Awaitable[EmptyResult]:
    """Create or truncate the file with the given bytes; bad base64 is -32600 (§9)."""
    path = parse_path(params.path, "path")
    try:
        data = binascii.a2b_base64(params.data_base64, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise invalid_request(f"fs/writeFile requires valid base64 dataBase64: {exc}") from None
    work = _submit_under_policy(
        connection, params.sandbox, ops.write_file, sandboxed.write_file, path, data
    )
    return _reply(work, _empty)


@method("fs/createDirectory", FsCreateDirectoryParams, FILESYSTEM)
def create_directory(
    connection: Connection, params: FsCreateDirectoryParams
) -> Awaitable[EmptyResult]:
    """``mkdir -p`` unless ``recursive`` is false."""
    path = parse_path(params.path, "path")
    recursive = params.recursive is not False
    work = _submit_under_policy(
        connection,
        params.sandbox,
        ops.create_directory,
        sandboxed.create_directory,
        path,
        recursive,
    )
    return _reply(work, _empty)


@method("fs/getMetadata", FsPathParams, FILESYSTEM)
def get_metadata(connection: Connection, params: FsPathParams) -> Awaitable[FsMetadataResult]:
    """Kind, size and times of a path (following symlinks, plus ``isSymlink``)."""
    path = parse_path(params.path, "path")
    work = _submit_under_policy(
        connection, params.sandbox, ops.get_metadata, sandboxed.get_metadata, path
    )
    return _reply(work, _metadata_result)


def _metadata_result(meta: ops.Metadata) -> FsMetadataResult:
    return FsMetadataResult(
        is_directory=meta.is_directory,
        is_file=meta.is_file,
        is_symlink=meta.is_symlink,
        size=meta.size,
        created_at_ms=meta.created_at_ms,
        modified_at_ms=meta.modified_at_ms,
    )


@method("fs/readDirectory", FsPathParams, FILESYSTEM)
def read_directory(
    connection: Connection, params: FsPathParams
) -> Awaitable[FsReadDirectoryResult]:
    """The directory's entries in OS order; broken symlinks are left out."""
    path = parse_path(params.path, "path")
    work = _submit_under_policy(
        connection, params.sandbox, ops.read_directory, sandboxed.read_directory, path
    )
    return _reply(work, _directory_result)


def _directory_result(entries: list[ops.DirectoryEntry]) -> FsReadDirectoryResult:
    return FsReadDirectoryResult(
        [FsDirectoryEntry(e.file_name, e.is_directory, e.is_file) for e in entries]
    )


@method("fs/remove", FsRemoveParams, FILESYSTEM)
def remove(connection: Connection, params: FsRemoveParams) -> Awaitable[EmptyResult]:
    """Remove a file, symlink or directory; ``recursive`` and ``force`` default to true."""
    path = parse_path(params.path, "path")
    recursive = params.recursive is not False
    force = params.force is not False
    work = _submit_under_policy(
        connection, params.sandbox, ops.remove, sandboxed.remove, path, recursive, force
    )
    return _reply(work, _empty)


@method("fs/copy", FsCopyParams, FILESYSTEM)
def copy(connection: Connection, params: FsCopyParams) -> Awaitable[EmptyResult]:
    """Copy a file, a symlink (recreated) or, with ``recursive``, a directory tree."""
    source = parse_path(params.source_path, "sourcePath")
    destination = parse_path(params.destination_path, "destinationPath")
    work = _submit_under_policy(
        connection,
        params.sandbox,
        ops.copy,
        sandboxed.copy,
        source,
        destination,
        params.recursive,
    )
    return _reply(work, _empty)


# ---- file handles --------------------------------------------------------------------------


def _table(connection: Connection) -> HandleTable:
    """The session's handle table, created on first use and released with the session."""
    server = connection.server
    limit = server.limits.fs_max_open_handles
    return connection.require_session().resources.get(
        HandleTable, lambda: HandleTable(limit, server.handle_budget)
    )


@method("fs/open", FsOpenParams, FILESYSTEM)
def open_handle(connection: Connection, params: FsOpenParams) -> Awaitable[FsOpenResult]:
    """Open a regular file for block reads (``read``) or writes (``replace``: truncates)."""
    path = parse_path(params.path, "path")
    table = _table(connection)
    handle_id, mode = params.handle_id, params.mode
    table.reserve(handle_id)  # now, so a second open of the same id is refused
    try:
        opened = _submit_under_policy(
            connection,
            params.sandbox,
            handle_io.open_regular_file,
            sandboxed.open_regular_file,
            path,
            mode,
        )
    except BaseException:
        table.unreserve(handle_id)
        raise

    def settle(future: asyncio.Future[int]) -> None:
        if future.cancelled() or future.exception() is not None:
            table.unreserve(handle_id)
        else:
            table.install(handle_id, future.result(), mode)

    opened.add_done_callback(settle)
    return _reply(opened, lambda _: FsOpenResult(handle_id))


def _check_block_length(length: int, limit: int, action: str) -> None:
    if not 1 <= length <= limit:
        raise invalid_request(f"file {action} block length must be between 1 and {limit}")


@method("fs/readBlock", FsReadBlockParams, FILESYSTEM)
def read_block(connection: Connection, params: FsReadBlockParams) -> Awaitable[FsReadBlockResult]:
    """Up to ``len`` bytes at ``offset``; ``eof`` when fewer came back than asked for."""
    length = params.length
    _check_block_length(length, connection.server.limits.fs_block_max_bytes, "read")
    table = _table(connection)
    handle = table.begin_use(params.handle_id)
    work = _submit(_through_handle, table, handle, handle_io.read_block, params.offset, length)
    return _reply(work, lambda data: FsReadBlockResult(data, len(data) < length))


def _through_handle(
    table: HandleTable,
    handle: FileHandle,
    operation: Callable[[int, int, Any], _T],
    offset: int,
    argument: Any,
) -> _T:
    """Run one block operation on a handle's fd (in a worker thread). An OS error drops the
    handle, as the reference does; the use ends either way."""
    try:
        return operation(handle.fd, offset, argument)
    except OSError:
        table.discard(handle)
        raise
    finally:
        table.finish_use(handle)


@method("fs/writeBlock", FsWriteBlockParams, FILESYSTEM)
def write_block(connection: Connection, params: FsWriteBlockParams) -> Awaitable[EmptyResult]:
    """Write ``chunk`` at ``offset`` through a ``replace`` handle."""
    _check_block_length(len(params.chunk), connection.server.limits.fs_block_max_bytes, "write")
    table = _table(connection)
    handle = table.begin_use(params.handle_id)
    work = _submit(
        _through_handle, table, handle, handle_io.write_block, params.offset, params.chunk
    )
    return _reply(work, _empty)


@method("fs/close", FsHandleParams, FILESYSTEM)
def close_handle(connection: Connection, params: FsHandleParams) -> EmptyResult:
    """Close a handle; closing an unknown or already closed one succeeds (as the reference)."""
    _table(connection).close(params.handle_id)
    return EmptyResult()


# ---- fs/walk -------------------------------------------------------------------------------


@method("fs/walk", FsWalkParams, FILESYSTEM)
def walk(connection: Connection, params: FsWalkParams) -> Awaitable[FsWalkResult]:
    """A bounded breadth-first listing (:mod:`..fs.walk`); limits checked first (-32600)."""
    from ..fs import walk as walking

    path = parse_path(params.path, "path")
    raw = params.options
    options = walking.WalkOptions(
        max_depth=raw.max_depth,
        max_directories=raw.max_directories,
        max_entries=raw.max_entries,
        follow_directory_symlinks=raw.follow_directory_symlinks,
        prune_hidden_directories=raw.prune_hidden_directories,
    )
    walking.check_limits(options)
    work = _submit_under_policy(
        connection, params.sandbox, walking.walk, walking.walk_under_policy, path, options
    )
    return _reply(work, _walk_result)


def _walk_result(outcome: WalkOutcome) -> FsWalkResult:
    return FsWalkResult(
        entries=[FsWalkEntry(path, kind) for path, kind in outcome.entries],
        errors=[FsWalkError(path, message) for path, message in outcome.errors],
        truncated=outcome.truncated,
    )
