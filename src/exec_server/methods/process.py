"""``process/*``: start, read, write, signal and terminate children of the session.

The process layer speaks the domain (states, write outcomes, :mod:`~..process.errors`);
this module maps it to wire values and JSON-RPC errors.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import msgspec

from .. import prepend_path
from ..errors import RpcError, internal_error, invalid_params, invalid_request, os_error_message
from ..paths import parse_path
from ..process import errors as process_errors
from ..process.env import child_environment, without_excluded
from ..process.manager import Deadlines, ProcessInfo, WriteStatus
from ..process.output import ReadSnapshot, is_ready
from ..process.signals import parse_signal, signal_name
from ..process.spawn import SpawnRequest
from ..process.stdin import StdinFull
from ..protocol import (
    EmptyResult,
    ProcessIdParams,
    ProcessListEntry,
    ProcessListResult,
    ProcessReadParams,
    ProcessReadResult,
    ProcessResizeParams,
    ProcessSignalParams,
    ProcessStartParams,
    ProcessStartResult,
    ProcessTerminateParams,
    ProcessTerminateResult,
    ProcessWriteParams,
    ProcessWriteResult,
    ReadChunk,
    WriteStatusName,
)
from . import method

if TYPE_CHECKING:
    from ..connection import Connection
    from ..network.managed import ManagedNetwork
    from ..process.manager import ProcessManager
    from ..sandbox.bwrap import Launch, NetworkEntry
    from ..sandbox.policy import Policy
    from ..sandbox.profile import SandboxRequest

SANDBOX_TYPE = "linuxSeccomp"
"""``sandboxType`` for a process under a Linux sandbox: the value codex 0.169 knows (the
reference's, though ours is bubblewrap without seccomp); ``none`` when nothing is restricted."""

EXEC = "exec"

P = ParamSpec("P")
T = TypeVar("T")


def wire_error(error: process_errors.ProcessError) -> RpcError:
    """The JSON-RPC error for a refusal of the process layer, worded as the reference's."""
    process_id = error.process_id
    if isinstance(error, process_errors.UnknownProcess):
        return invalid_request(f"unknown process id {process_id}")
    if isinstance(error, process_errors.ProcessStarting):
        return invalid_request(f"process id {process_id} is starting")
    if isinstance(error, process_errors.DuplicateProcess):
        return invalid_request(f"process {process_id} already exists")
    if isinstance(error, process_errors.InvalidSpawn):
        return invalid_params(f"cannot start process: {error.reason}")
    if isinstance(error, process_errors.SpawnFailed):
        return internal_error(error.reason)
    if isinstance(error, process_errors.TooManyProcesses):
        return invalid_request(
            f"cannot start process {process_id}: this session already has {error.reason} "
            "processes that have not closed (--max-processes-per-session)"
        )
    if isinstance(error, StdinFull):
        return invalid_request(error.reason)
    if isinstance(error, process_errors.NoTerminal):
        return invalid_request(f"process {process_id} has no terminal (it was started without tty)")
    if isinstance(error, process_errors.StdinBroken):
        return internal_error("failed to write to process stdin")
    return internal_error(str(error))  # pragma: no cover - every kind is named above


def _mapped(handler: Callable[P, T]) -> Callable[P, T]:
    """Run a handler with process errors mapped to the wire."""

    @functools.wraps(handler)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return handler(*args, **kwargs)
        except process_errors.ProcessError as error:
            raise wire_error(error) from None

    return run


def _mapped_async(handler: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """The same for the awaitable part of a handler (a long poll, a queued write)."""

    @functools.wraps(handler)
    async def run(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await handler(*args, **kwargs)
        except process_errors.ProcessError as error:
            raise wire_error(error) from None

    return run


_WRITE_STATUS: dict[WriteStatus, WriteStatusName] = {
    WriteStatus.ACCEPTED: "accepted",
    WriteStatus.UNKNOWN_PROCESS: "unknownProcess",
    WriteStatus.STDIN_CLOSED: "stdinClosed",
    WriteStatus.STARTING: "starting",
}


# ---- start ---------------------------------------------------------------------------------


def _no_nul(value: str, field: str) -> str:
    if "\0" in value:
        raise invalid_params(f"{field} must not contain a NUL byte")
    return value


def _check_strings(params: ProcessStartParams) -> None:
    """-32602 naming the field for a NUL byte anywhere a child would see it."""
    for index, arg in enumerate(params.argv):
        _no_nul(arg, f"argv[{index}]")
    if params.arg0 is not None:
        _no_nul(params.arg0, "arg0")
    for name, value in params.env.items():
        _no_nul(name, "env")
        _no_nul(value, f"env.{name}")
    policy = params.env_policy
    if policy is not None:
        for name, value in policy.set.items():
            _no_nul(name, "envPolicy.set")
            _no_nul(value, f"envPolicy.set.{name}")


@method("process/start", ProcessStartParams, EXEC)
@_mapped
def start(
    connection: Connection, params: ProcessStartParams
) -> ProcessStartResult | Awaitable[ProcessStartResult]:
    """Start a child; under a sandbox (the client's profile, the server's confinement, or
    both) the start is prepared on a worker thread, the id reserved meanwhile."""
    if not params.argv:
        raise invalid_params("argv must not be empty")
    _check_strings(params)
    cwd = _no_nul(parse_path(params.cwd, "cwd"), "cwd")
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
    env = without_excluded(env, connection.server.guards.env_exclude)
    network = None
    if params.network_proxy is not None or params.enforce_managed_network:
        from .network import requested_network  # managed-network starts only

        network = requested_network(connection, params)
    if network is not None:
        env = network.child_environment(env)
    size = params.size
    request = SpawnRequest(
        argv=params.argv,
        cwd=cwd,
        env=env,
        tty=params.tty,
        pipe_stdin=params.pipe_stdin,
        arg0=params.arg0,
        size=(size.rows, size.cols) if size is not None else None,
    )
    deadlines = Deadlines(
        timeout_s=_seconds(params.timeout_ms),
        idle_s=_seconds(params.idle_timeout_ms),
        drain_s=_seconds(params.drain_timeout_ms),
    )
    processes = connection.require_session().processes
    confinement = connection.server.guards.confinement
    if params.sandbox is None and confinement is None and network is None:
        processes.start(params.process_id, request, deadlines)
        return ProcessStartResult(params.process_id)
    from ..sandbox.profile import ProfileError, parse_sandbox  # sandboxed starts only

    try:
        profile = parse_sandbox(params.sandbox)
        processes.reserve(params.process_id, request, deadlines)
    except ProfileError as error:
        if network is not None:
            network.close()
        raise invalid_params(error.message) from None
    except BaseException:
        if network is not None:
            network.close()
        raise
    return _start_sandboxed(connection, params.process_id, request, profile, network)


@_mapped_async
async def _start_sandboxed(
    connection: Connection,
    process_id: str,
    request: SpawnRequest,
    profile: SandboxRequest | None,
    network: ManagedNetwork | None = None,
) -> ProcessStartResult:
    """Resolve the policy and build the sandbox off the loop, then spawn the reserved id.
    A restricted policy that cannot be enforced fails the start: it never runs unconfined.
    With a managed ``network`` the child always gets a network namespace of its own, where
    only its proxy is reachable (``network/managed.py``); the proxy ends with the launch."""
    from ..sandbox import enforce
    from ..sandbox.policy import PolicyError

    processes = connection.require_session().processes
    confinement = connection.server.guards.confinement

    def prepare() -> Launch | None:
        policy = enforce.process_policy(profile, confinement, request.cwd, request.env)
        if network is not None:
            policy = _without_network(policy)
        if policy is None or not policy.is_restricted:
            return None
        entry = None if network is None else _network_entry(network, policy, request.env)
        return enforce.launch(
            policy, request.argv, request.cwd, request.arg0, request.env, network=entry
        )

    try:
        launch = await asyncio.to_thread(prepare)
    except enforce.SandboxUnavailable as error:
        _give_up(processes, process_id, network)
        raise invalid_params(error.message) from None
    except PolicyError as error:
        _give_up(processes, process_id, network)
        raise invalid_params(f"failed to prepare process sandbox: {error}") from None
    except OSError as error:
        _give_up(processes, process_id, network)
        raise internal_error(os_error_message(error)) from None
    except BaseException:
        _give_up(processes, process_id, network)
        raise
    if launch is None:
        processes.spawn_reserved(process_id)
        return ProcessStartResult(process_id)
    if network is not None:
        launch.on_release.append(network.close)
    sandboxed = msgspec.structs.replace(request, argv=launch.argv, arg0=launch.arg0)
    try:
        processes.spawn_reserved(process_id, sandboxed, launch)
    except BaseException:
        launch.release()
        raise
    if network is not None:
        child = processes.get(process_id).child
        if child is not None:
            network.start(child.pid)
    return ProcessStartResult(process_id, SANDBOX_TYPE)


def _give_up(processes: ProcessManager, process_id: str, network: ManagedNetwork | None) -> None:
    processes.abandon(process_id)
    if network is not None:
        network.close()


def _without_network(policy: Policy | None) -> Policy:
    """The policy with direct network access taken away (the proxy is the only way out)."""
    from ..sandbox.policy import UNRESTRICTED

    return dataclasses.replace(policy or UNRESTRICTED, network=False)


def _network_entry(network: ManagedNetwork, policy: Policy, env: Mapping[str, str]) -> NetworkEntry:
    from ..sandbox.bwrap import NetworkEntry
    from ..sandbox.policy import Access

    mounts = network.mounts(lambda path: policy.access_at(path) == Access.NONE)
    return NetworkEntry(network.entry_argv(env), mounts)


def _seconds(milliseconds: int | None) -> float | None:
    return None if milliseconds is None else milliseconds / 1000


# ---- read ----------------------------------------------------------------------------------


def _read_result(snapshot: ReadSnapshot) -> ProcessReadResult:
    return ProcessReadResult(
        chunks=[ReadChunk(c.seq, c.stream, c.data) for c in snapshot.chunks],  # type: ignore[arg-type]
        next_seq=snapshot.next_seq,
        exited=snapshot.exited,
        exit_code=snapshot.exit_code,
        closed=snapshot.closed,
        sandbox_denied=snapshot.sandbox_denied,
    )


@method("process/read", ProcessReadParams, EXEC)
@_mapped
def read(
    connection: Connection, params: ProcessReadParams
) -> ProcessReadResult | Awaitable[ProcessReadResult]:
    processes = connection.require_session().processes
    after = params.after_seq or 0
    snapshot = processes.read(params.process_id, after, params.max_bytes)
    if not params.wait_ms or is_ready(snapshot, after):
        return _read_result(snapshot)
    return _long_poll(connection, params, after, params.wait_ms)


@_mapped_async
async def _long_poll(
    connection: Connection, params: ProcessReadParams, after: int, wait_ms: int
) -> ProcessReadResult:
    processes = connection.require_session().processes
    snapshot = await processes.wait_read(params.process_id, after, params.max_bytes, wait_ms)
    return _read_result(snapshot)


# ---- write, signal, terminate --------------------------------------------------------------


@method("process/write", ProcessWriteParams, EXEC)
@_mapped
def write(
    connection: Connection, params: ProcessWriteParams
) -> ProcessWriteResult | Awaitable[ProcessWriteResult]:
    if params.write_id is not None and not params.write_id:
        raise invalid_params("writeId must not be empty")
    outcome = connection.require_session().processes.write(
        params.process_id, params.chunk, params.write_id
    )
    if isinstance(outcome, WriteStatus):
        return ProcessWriteResult(_WRITE_STATUS[outcome])
    return _accepted_when(outcome)


async def _accepted_when(queued: Awaitable[None]) -> ProcessWriteResult:
    await queued
    return ProcessWriteResult("accepted")


@method("process/terminate", ProcessTerminateParams, EXEC)
@_mapped
def terminate(connection: Connection, params: ProcessTerminateParams) -> ProcessTerminateResult:
    """SIGKILL to the whole tree at once, or with ``graceMs`` SIGTERM first (ours)."""
    grace_s = None if params.grace_ms is None else params.grace_ms / 1000
    processes = connection.require_session().processes
    return ProcessTerminateResult(processes.terminate(params.process_id, grace_s))


@method("process/signal", ProcessSignalParams, EXEC)
@_mapped
def send_signal(connection: Connection, params: ProcessSignalParams) -> EmptyResult:
    value = params.signal
    if isinstance(value, dict):  # 0.169's map form, {"interrupt": null}
        value = next(iter(value), "") if len(value) == 1 else ""
    signum = parse_signal(value)
    if signum is None:
        raise invalid_params(
            f"unknown signal `{value}`: expected `interrupt`, a signal name such as `TERM` or "
            "`SIGTERM`, or a signal number"
        )
    connection.require_session().processes.signal(params.process_id, signum)
    return EmptyResult()


# ---- extensions (ours; announced in initialize's `extensions`) -----------------------------


@method("process/closeStdin", ProcessIdParams, EXEC)
@_mapped
def close_stdin(
    connection: Connection, params: ProcessIdParams
) -> ProcessWriteResult | Awaitable[ProcessWriteResult]:
    """End of input once what is queued is written: EOF for a pipe, the EOF character for a
    terminal."""
    outcome = connection.require_session().processes.close_stdin(params.process_id)
    if isinstance(outcome, WriteStatus):
        return ProcessWriteResult(_WRITE_STATUS[outcome])
    return _accepted_when(outcome)


@method("process/resize", ProcessResizeParams, EXEC)
@_mapped
def resize(connection: Connection, params: ProcessResizeParams) -> EmptyResult:
    connection.require_session().processes.resize(params.process_id, params.rows, params.cols)
    return EmptyResult()


@method("process/list", Any, EXEC)
def list_processes(connection: Connection, params: Any) -> ProcessListResult:
    rows = connection.require_session().processes.describe()
    return ProcessListResult([_list_entry(info) for info in rows])


def _list_entry(info: ProcessInfo) -> ProcessListEntry:
    return ProcessListEntry(
        process_id=info.process_id,
        pid=info.pid,
        argv=info.argv,
        cwd=info.cwd,
        tty=info.tty,
        state=info.state.value,
        exit_code=info.exit_code,
        terminated_by=info.terminated_by.value if info.terminated_by else None,
        signal=signal_name(info.signal),
        output_bytes=info.output_bytes,
        started_at_ms=info.started_at_ms,
        exited_at_ms=info.exited_at_ms,
    )
