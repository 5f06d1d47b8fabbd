"""``process/*``: start, read, write, signal and terminate children of the session.

The process layer speaks the domain (states, write outcomes, :mod:`~..process.errors`);
this module maps it to wire values and JSON-RPC errors.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import msgspec

from .. import prepend_path
from ..errors import RpcError, internal_error, invalid_params, invalid_request, os_error_message
from ..paths import parse_path
from ..process import errors as process_errors
from ..process import shell_snapshot
from ..process.env import child_environment, without_excluded
from ..process.manager import Deadlines, ProcessInfo, WriteStatus
from ..process.output import ReadSnapshot, is_ready
from ..process.signals import parse_signal, signal_name
from ..process.spawn import SpawnRequest
from ..process.stdin import StdinFull
from ..protocol import EmptyResult, WriteStatusName
from ..protocol.process import (
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


DRAINING = (
    "this exec-server is shutting down (draining after SIGTERM): it starts no new process; "
    "start it on another executor"
)
"""The refusal of a start during a drain; clients (``client/pool.py``) know it by its start."""

StartOutcome = ProcessStartResult | Awaitable[ProcessStartResult]


def _observed(
    handler: Callable[[Connection, ProcessStartParams], StartOutcome],
) -> Callable[[Connection, ProcessStartParams], StartOutcome]:
    """Refuse starts while the server drains; count every start, its spawn latency (from
    the request to the child running, sandbox set-up included) and every failure."""

    @functools.wraps(handler)
    def run(connection: Connection, params: ProcessStartParams) -> StartOutcome:
        metrics = connection.server.metrics
        if connection.server.draining:
            metrics.process_start_failed("draining")
            raise invalid_request(DRAINING)
        began = time.perf_counter()
        try:
            outcome = handler(connection, params)
        except process_errors.TooManyProcesses:
            metrics.limit_refused("max_processes_per_session")
            metrics.process_start_failed("limit")
            raise
        except (process_errors.ProcessError, RpcError) as error:
            metrics.process_start_failed(_failure_kind(error))
            raise
        if isinstance(outcome, ProcessStartResult):
            _started(connection, outcome, began)
            return outcome
        return _observed_async(connection, outcome, began)

    return run


async def _observed_async(
    connection: Connection, outcome: Awaitable[ProcessStartResult], began: float
) -> ProcessStartResult:
    try:
        result = await outcome
    except RpcError as error:
        connection.server.metrics.process_start_failed(_failure_kind(error))
        raise
    _started(connection, result, began)
    return result


def _started(connection: Connection, result: ProcessStartResult, began: float) -> None:
    session = connection.session
    connection.server.metrics.process_started(
        session.id if session is not None else "",
        result.process_id,
        sandboxed=result.sandbox_type != "none",
        spawn_s=time.perf_counter() - began,
    )


def _failure_kind(error: Exception) -> str:
    """A failure's kind as a label: a process error's class, or a JSON-RPC code."""
    if isinstance(error, RpcError):
        return {-32602: "invalid_params", -32600: "invalid_request"}.get(error.code, "internal")
    kinds: dict[type[Exception], str] = {
        process_errors.SpawnFailed: "spawn_failed",
        process_errors.InvalidSpawn: "invalid_params",
        process_errors.DuplicateProcess: "duplicate_id",
    }
    return kinds.get(type(error), "other")


@method("process/start", ProcessStartParams, EXEC)
@_mapped
@_observed
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
    snapshot = params.shell_snapshot
    if snapshot is not None:  # checked before the proxy exists: a refusal leaves nothing open
        shell_snapshot.check_request(snapshot.scope_id, snapshot.shell.name)
        if not shell_snapshot.applies(params.argv, snapshot.shell.path):
            snapshot = None
    network = None
    if params.network_proxy is not None or params.enforce_managed_network:
        from .network import requested_network  # managed-network starts only

        network = requested_network(connection, params)
    if network is not None:
        try:
            env = network.child_environment(env)
        except BaseException:
            network.close()
            raise
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
    plain = params.sandbox is None and confinement is None and snapshot is None
    if plain and network is None:
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
    if snapshot is not None:
        return _start_snapshotted(connection, params, request, profile, network)
    return _start_sandboxed(connection, params.process_id, request, profile, network)


# ---- shell snapshots (shellSnapshotV2) ---------------------------------------------------


@_mapped_async
async def _start_snapshotted(
    connection: Connection,
    params: ProcessStartParams,
    request: SpawnRequest,
    profile: SandboxRequest | None,
    network: ManagedNetwork | None,
) -> ProcessStartResult:
    """Start ``shell -lc SCRIPT`` with the scope's snapshot restored instead of the startup
    files (captured first, under the same sandbox, when the scope has none yet); when there
    is no snapshot, the command as sent."""
    snapshot = params.shell_snapshot
    assert snapshot is not None
    shell = (snapshot.shell.name, snapshot.shell.path)
    cache = connection.require_session().resources.get(
        shell_snapshot.SnapshotCache, shell_snapshot.SnapshotCache
    )
    key = shell_snapshot.cache_key(
        snapshot.scope_id,
        shell,
        request.cwd,
        msgspec.to_builtins(params.env_policy),
        params.sandbox,
    )
    try:
        output = await cache.get(
            key, lambda: _capture(connection, request, profile, shell, network is not None)
        )
    except BaseException:
        _give_up(connection.require_session().processes, params.process_id, network)
        raise
    restore = (
        None if output is None else shell_snapshot.restore_script(output, frozenset(params.env))
    )
    if restore is not None:
        replayed = shell_snapshot.replay(shell[0], shell[1], request.argv[2], restore)
        request = msgspec.structs.replace(
            request, argv=replayed.argv, env={**request.env, **replayed.env}
        )
    return await _start_sandboxed(connection, params.process_id, request, profile, network)


async def _capture(
    connection: Connection,
    request: SpawnRequest,
    profile: SandboxRequest | None,
    shell: tuple[str, str],
    managed_network: bool,
) -> bytes | None:
    """Run the capture as the command would run (same sandbox, env and cwd; with a
    ``managed_network``, in a network namespace of its own too); None when it cannot be
    captured (the command then runs as sent)."""
    argv = shell_snapshot.capture_argv(*shell)
    confinement = connection.server.guards.confinement

    def run() -> bytes | None:
        from ..sandbox import enforce

        policy = None
        if profile is not None or confinement is not None:
            policy = enforce.process_policy(profile, confinement, request.cwd, request.env)
        if managed_network:  # never more network than the command it prepares
            policy = _without_network(policy)
        if policy is None or not policy.is_restricted:
            return shell_snapshot.run_capture(argv, request.cwd, request.env, {})
        # Without the network: a capture only reads the shell's state, and it runs outside
        # the process manager, where the sandboxed-peer check (transport/peers.py) cannot
        # see it.
        capture = msgspec.structs.replace(request, argv=argv)
        launch = _launch(connection, _without_network(policy), capture)
        try:
            options = launch.subprocess_options()
            return shell_snapshot.run_capture(launch.argv, request.cwd, request.env, options)
        finally:
            launch.release()

    try:
        return await asyncio.get_running_loop().run_in_executor(
            shell_snapshot.capture_executor(), run
        )
    except Exception:  # a sandbox that cannot be built: the start itself will say so
        return None


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
        return _launch(connection, policy, request, entry)

    try:
        launch = await _prepared(prepare)
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
        processes.spawn_reserved(process_id, request)
        return ProcessStartResult(process_id)
    if network is not None:
        launch.on_release.append(network.close)
    try:
        if launch.cgroup is None:
            processes.spawn_reserved(process_id, launch.spawn_request(request), launch)
        else:  # the cgroup move may wait for the kernel: off the loop
            await processes.spawn_reserved_off_loop(
                process_id, launch.spawn_request(request), launch
            )
    except BaseException:
        processes.abandon(process_id)  # still reserved only if cancelled meanwhile
        launch.release()
        raise
    finally:
        launch.spawned()
    if network is not None:
        child = processes.get(process_id).child
        if child is not None:
            network.start(child.pid)
    return ProcessStartResult(process_id, SANDBOX_TYPE)


async def _prepared(prepare: Callable[[], Launch | None]) -> Launch | None:
    """``prepare()`` on a worker thread. A start cancelled meanwhile (its client went away)
    does not stop the thread: the launch it then makes is released as soon as it is made,
    or its descriptors, pids cgroup and placeholders would stay with the server."""
    work = asyncio.get_running_loop().run_in_executor(None, prepare)
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        work.add_done_callback(_release_unwanted)
        raise


def _release_unwanted(work: asyncio.Future[Launch | None]) -> None:
    if work.cancelled() or work.exception() is not None:
        return  # nothing was made (the error went with the start that gave up on it)
    launch = work.result()
    if launch is not None:
        launch.release()


def _launch(
    connection: Connection, policy: Policy, request: SpawnRequest, entry: NetworkEntry | None = None
) -> Launch:
    """The sandboxed launch of ``request`` under ``policy``, with what the operator set for
    every sandbox (the server's private files hidden, the pids limit): one place, so no
    launch (a command's, a shell snapshot's capture) can leave them out."""
    from ..sandbox import enforce

    guards = connection.server.guards
    return enforce.launch(
        policy,
        request.argv,
        request.cwd,
        request.arg0,
        request.env,
        guards.private_paths,
        guards.pids_limit,
        network=entry,
    )


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
    try:
        outcome = connection.require_session().processes.write(
            params.process_id, params.chunk, params.write_id
        )
    except StdinFull:
        connection.server.metrics.limit_refused("stdin_bytes")
        raise
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
