"""``process/*``: start, read, write, signal and terminate children of the session."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import prepend_path
from ..errors import invalid_params
from ..paths import parse_path
from ..process.env import child_environment
from ..process.manager import parse_signal
from ..process.output import ReadSnapshot
from ..process.spawn import SpawnRequest
from ..protocol import (
    EmptyResult,
    ProcessIdParams,
    ProcessReadParams,
    ProcessReadResult,
    ProcessSignalParams,
    ProcessStartParams,
    ProcessStartResult,
    ProcessTerminateResult,
    ProcessWriteParams,
    ProcessWriteResult,
    ReadChunk,
)
from . import method

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from ..connection import Connection

EXEC = "exec"


@method("process/start", ProcessStartParams, EXEC)
def start(connection: Connection, params: ProcessStartParams) -> ProcessStartResult:
    if not params.argv:
        raise invalid_params("argv must not be empty")
    cwd = parse_path(params.cwd, "cwd")
    policy = params.env_policy
    if policy is None:
        env = dict(params.env)
    else:
        env = child_environment(
            request_env=params.env,
            inherit=policy.inherit,
            ignore_default_excludes=policy.ignore_default_excludes,
            exclude=policy.exclude,
            set_vars=policy.set,
            include_only=policy.include_only,
            server_env=connection.server.server_env,
        )
    prepend_path.apply(env, connection.server.prepend_path_dirs)
    request = SpawnRequest(
        argv=params.argv,
        cwd=cwd,
        env=env,
        tty=params.tty,
        pipe_stdin=params.pipe_stdin,
        arg0=params.arg0,
    )
    connection.require_session().processes.start(params.process_id, request)
    return ProcessStartResult(params.process_id)


def _read_result(snapshot: ReadSnapshot) -> ProcessReadResult:
    return ProcessReadResult(
        chunks=[ReadChunk(c.seq, c.stream, c.data) for c in snapshot.chunks],  # type: ignore[arg-type]
        next_seq=snapshot.next_seq,
        exited=snapshot.exited,
        exit_code=snapshot.exit_code,
        closed=snapshot.closed,
    )


@method("process/read", ProcessReadParams, EXEC)
def read(
    connection: Connection, params: ProcessReadParams
) -> ProcessReadResult | Awaitable[ProcessReadResult]:
    processes = connection.require_session().processes
    after = params.after_seq or 0
    snapshot = processes.read(params.process_id, after, params.max_bytes)
    if not params.wait_ms or processes.get(params.process_id).log.ready(after, snapshot):
        return _read_result(snapshot)
    return _long_poll(connection, params, after)


async def _long_poll(
    connection: Connection, params: ProcessReadParams, after: int
) -> ProcessReadResult:
    processes = connection.require_session().processes
    assert params.wait_ms is not None
    snapshot = await processes.wait_read(params.process_id, after, params.max_bytes, params.wait_ms)
    return _read_result(snapshot)


@method("process/write", ProcessWriteParams, EXEC)
def write(
    connection: Connection, params: ProcessWriteParams
) -> ProcessWriteResult | Awaitable[ProcessWriteResult]:
    if params.write_id is not None and not params.write_id:
        raise invalid_params("writeId must not be empty")
    status = connection.require_session().processes.write(
        params.process_id, params.chunk, params.write_id
    )
    if isinstance(status, str):
        return ProcessWriteResult(status)  # type: ignore[arg-type]
    return _write_when_queued(status)


async def _write_when_queued(status: Awaitable[str]) -> ProcessWriteResult:
    return ProcessWriteResult(await status)  # type: ignore[arg-type]


@method("process/terminate", ProcessIdParams, EXEC)
def terminate(connection: Connection, params: ProcessIdParams) -> ProcessTerminateResult:
    return ProcessTerminateResult(
        connection.require_session().processes.terminate(params.process_id)
    )


@method("process/signal", ProcessSignalParams, EXEC)
def send_signal(connection: Connection, params: ProcessSignalParams) -> EmptyResult:
    signum = parse_signal(params.signal)
    connection.require_session().processes.signal(params.process_id, signum)
    return EmptyResult()
