"""Wire types of the exec-server protocol: one msgspec Struct per params, result and notification.

Field names are snake_case in Python and camelCase on the wire; ``bytes`` fields travel as
standard base64 with padding. Unknown fields are ignored on input, so clients of both the
seed-era and the current reference decode here unchanged (PROTOCOL.md Part A §A1).

This package knows nothing of sockets, processes or asyncio. This module holds what every
server needs from its start: the base structs, the handshake, ``process/*`` (with its
managed network) and the encoders. The other families' types live in a module each, named
after the family and imported with its method module (methods/__init__.py), so a server
answers ``initialize`` without having built them: :mod:`.fs` (``fs/*``), :mod:`.http`,
:mod:`.forward`, :mod:`.config` (``environmentConfig/read``) and :mod:`.discovery`
(``capabilityRoots/*``, ``capabilities/*``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

import msgspec

U64 = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
"""The reference's ``u64`` fields: non-negative; we cap at 2**63-1 (msgspec's bound), which
no seq, byte count or wait in milliseconds can reach."""

StreamName = Literal["stdout", "stderr", "pty"]
WriteStatusName = Literal["accepted", "unknownProcess", "stdinClosed", "starting"]

FsSandbox = dict[str, Any] | None
"""A permission profile (``{"permissions": {...}, "windowsSandboxLevel": ...}``) or null:
``sandbox`` on ``fs/*``, ``forward/open`` and the capability discovery requests."""


class _Wire(msgspec.Struct, rename="camel", gc=False):
    """Base of every wire struct: camelCase names, unknown fields ignored. Not tracked by
    the garbage collector (several are made per request): values decoded from JSON or
    built for a reply cannot form reference cycles."""


class _Params(_Wire, kw_only=True):
    """Base of request params."""


# ---- handshake and environment ----------------------------------------------------------


class InitializeParams(_Params):
    client_name: str
    resume_session_id: str | None = None


class ShellInfo(_Wire):
    name: str
    path: str


class SandboxInfo(_Wire):
    """Ours: how this server enforces sandbox profiles. ``available`` and ``reason`` are
    known once the mechanism was tried (``environment/info`` tries it; ``initialize`` does
    not wait for that)."""

    mechanism: str
    binary: str | None
    available: bool | None = None
    reason: str | None = None
    seccomp: bool | None = None
    """Whether sandboxed commands run under the seccomp filter (no socket leaving a
    restricted sandbox, no io_uring, no terminal injection)."""
    pids_cgroup: bool | None = None
    """Whether each sandbox gets a pids cgroup bounding its tasks to ``pidsLimit``."""
    pids_limit: int | None = None
    pids_cgroup_reason: str | None = None
    """Why there is no pids cgroup, and what to configure for one."""
    fresh_proc: bool | None = None
    """Whether sandboxed processes get their own /proc (False in a container that masks
    /proc: then sandboxes are refused unless the operator passed --sandbox-shared-proc)."""


class EnvironmentInfo(_Wire):
    """What ``initialize`` and ``environment/info`` report about the machine (0.169 shape,
    and ``sandbox``, ours)."""

    shell: ShellInfo
    executor_version: str
    provider_id: str
    cwd: str
    user_home_dir: str
    platform_os: str
    prepend_path_dirs: list[str]
    temporary_directories: list[str]
    temp_dir: str
    capabilities: dict[str, Any]
    sandbox: SandboxInfo | None = None


class InitializeResult(_Wire):
    session_id: str
    environment_info: EnvironmentInfo
    extensions: dict[str, bool] = msgspec.field(default_factory=dict)
    """Ours: one flag per protocol extension this server serves (reference clients ignore
    it; see docs/protocol.md)."""


class EnvironmentStatusResult(_Wire):
    status: str = "ready"


# ---- processes ----------------------------------------------------------------------------


class EnvPolicy(_Wire, kw_only=True):
    """PROTOCOL.md §8: all five fields are required when the object is present."""

    inherit: Literal["all", "core", "none"]
    ignore_default_excludes: bool
    exclude: list[str]
    set: dict[str, str]
    include_only: list[str]


TerminalDimension = Annotated[int, msgspec.Meta(ge=1, le=65535)]


class TerminalSize(_Wire):
    rows: TerminalDimension
    cols: TerminalDimension


class SnapshotShell(_Wire):
    name: str
    path: str


class ShellSnapshotRequest(_Wire):
    """``process/start.shellSnapshot`` (0.169 ``shellSnapshotV2``)."""

    scope_id: str
    shell: SnapshotShell


# ---- managed network (networkProxyLaunch) -------------------------------------------------

DomainVerdict = Literal["allow", "deny", "none"]


class NetworkProxyConfig(_Wire, kw_only=True):
    """``networkProxy.proxy``: the 0.169 field names; the seven first are required."""

    enabled: bool
    enable_socks5: bool
    enable_socks5_udp: bool
    allow_upstream_proxy: bool
    dangerously_allow_all_unix_sockets: bool
    allow_local_binding: bool
    mode: Literal["full", "limited"]
    domains: dict[str, DomainVerdict] | None = None
    unix_sockets: dict[str, Any] | None = None
    review_domains: list[str] | None = None
    credential_masking: bool = False
    credential_providers: dict[str, Any] | None = None


class NetworkProxyLaunch(_Wire, kw_only=True):
    """``process/start.networkProxy``: start a proxy for this process."""

    proxy: NetworkProxyConfig
    audit_metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    environment_id: str | None = None
    execution_id: str | None = None
    policy_decision_timeout_ms: U64 | None = None


class NetworkPolicyDecision(_Wire, kw_only=True, omit_defaults=True):
    """Params of the ``network/policyDecision`` notification (audit of one verdict);
    ``method`` and ``client`` are left out when unknown (SOCKS5 has no method)."""

    process_id: str
    timestamp: str
    scope: str
    decision: str
    source: str
    reason: str
    protocol: str
    host: str
    port: int
    method: str | None = None
    client: str | None = None
    policy_override: bool


def policy_decision_notification(params: NetworkPolicyDecision) -> bytes:
    return encode({"method": "network/policyDecision", "params": params})


class PolicyRequestTarget(_Wire):
    protocol: str
    host: str
    port: int


class PolicyRequestParams(_Wire):
    """Params of the server's ``network/policyRequest`` (a request to the client)."""

    process_id: str
    request: PolicyRequestTarget


class PolicyRequestDecision(_Wire):
    type: Literal["allow", "deny", "ask"]
    reason: str | None = None


class PolicyRequestResult(_Wire):
    """The client's answer to ``network/policyRequest``."""

    decision: PolicyRequestDecision


class ProcessStartParams(_Params):
    """``size``, ``timeoutMs``, ``idleTimeoutMs`` and ``drainTimeoutMs`` are ours."""

    process_id: str
    argv: list[str]
    cwd: str
    env: dict[str, str]
    tty: bool
    env_policy: EnvPolicy | None = None
    pipe_stdin: bool = False
    arg0: str | None = None
    size: TerminalSize | None = None
    timeout_ms: U64 | None = None
    idle_timeout_ms: U64 | None = None
    drain_timeout_ms: U64 | None = None
    sandbox: dict[str, Any] | None = None
    """codex's permission profile, decoded by ``sandbox/profile.py`` (its -32602 texts)."""
    enforce_managed_network: bool = False
    """A managed network proxy is required (we announce no ``networkProxyLaunch``)."""
    shell_snapshot: ShellSnapshotRequest | None = None
    """The child's network must go through the managed proxy (``networkProxy``)."""
    network_proxy: NetworkProxyLaunch | None = None
    """Launch a managed network proxy for this process (``network/``)."""
    managed_network: dict[str, Any] | None = None
    """Facts about a proxy the client runs itself; refused together with ``networkProxy``."""


class ProcessStartResult(_Wire):
    process_id: str
    sandbox_type: str = "none"


class ProcessReadParams(_Params):
    process_id: str
    after_seq: U64 | None = None
    max_bytes: U64 | None = None
    wait_ms: U64 | None = None


class ReadChunk(_Wire):
    seq: int
    stream: StreamName
    chunk: bytes


class ProcessReadResult(_Wire):
    chunks: list[ReadChunk]
    next_seq: int
    exited: bool
    exit_code: int | None
    closed: bool
    failure: str | None = None
    sandbox_denied: bool = False


class ProcessWriteParams(_Params):
    process_id: str
    chunk: bytes
    write_id: str | None = None


class ProcessWriteResult(_Wire):
    status: WriteStatusName


class ProcessIdParams(_Params):
    process_id: str


class ProcessTerminateParams(_Params):
    """``graceMs`` (ours): SIGTERM first, SIGKILL after the grace to whatever is left."""

    process_id: str
    grace_ms: U64 | None = None


class ProcessTerminateResult(_Wire):
    running: bool


class ProcessSignalParams(_Params):
    """``signal``: ``interrupt``, a name (``TERM``, ``SIGTERM``), a number, or the map form
    ``{"interrupt": null}`` that 0.169 also accepts."""

    process_id: str
    signal: str | int | dict[str, Any]


class ProcessResizeParams(_Params):
    process_id: str
    rows: TerminalDimension
    cols: TerminalDimension


class ProcessListEntry(_Wire):
    process_id: str
    pid: int | None
    argv: list[str]
    cwd: str
    tty: bool
    state: Literal["starting", "running", "exited", "closed"]
    exit_code: int | None
    terminated_by: str | None
    signal: str | None
    output_bytes: int
    started_at_ms: int
    exited_at_ms: int | None


class ProcessListResult(_Wire):
    processes: list[ProcessListEntry]


class EmptyResult(_Wire):
    pass


# ---- encoding -------------------------------------------------------------------------------

_encoder = msgspec.json.Encoder()
encode = _encoder.encode
"""Encode any wire value (struct, dict, list, scalar) to JSON bytes."""

Base64Encoder = Callable[[bytes], bytes]
"""Standard base64 with padding, as bytes."""


def msgspec_base64(data: bytes) -> bytes:
    """Base64 by msgspec's encoder (it comes quoted, as a JSON string)."""
    return encode(data)[1:-1]


def base64_encoder(prefer_pybase64: bool) -> Base64Encoder:
    """pybase64's SIMD encoder when asked for (and installed), else msgspec's."""
    if prefer_pybase64:
        try:
            from pybase64 import b64encode
        except ImportError:
            return msgspec_base64
        return b64encode
    return msgspec_base64


_STREAM_NAMES = {"stdout": b"stdout", "stderr": b"stderr", "pty": b"pty"}


class ProcessNotifications:
    """Encodes ``process/output``, ``process/exited`` and ``process/closed`` straight to
    bytes: they are most of what a busy server sends, and need no intermediate object."""

    __slots__ = ("_b64encode", "_ids")

    def __init__(self, b64encode: Base64Encoder) -> None:
        self._b64encode = b64encode
        self._ids: dict[str, bytes] = {}

    def _id_json(self, process_id: str) -> bytes:
        encoded = self._ids.get(process_id)
        if encoded is None:
            if len(self._ids) > 4096:  # ids of long-gone processes: start over
                self._ids.clear()
            encoded = self._ids[process_id] = encode(process_id)
        return encoded

    def output(self, process_id: str, seq: int, stream: str, data: bytes) -> bytes:
        prefix = (
            b'{"method":"process/output","params":{"processId":%s,"seq":%d,"stream":"%s","chunk":"'
            % (self._id_json(process_id), seq, _STREAM_NAMES[stream])
        )
        return b"".join((prefix, self._b64encode(data), b'"}}'))

    def exited(
        self,
        process_id: str,
        seq: int,
        exit_code: int,
        *,
        terminated_by: str,
        signal: str | None,
        sandbox_denied: bool,
    ) -> bytes:
        """``terminatedBy`` and ``signal`` are ours (reference clients ignore them)."""
        return (
            b'{"method":"process/exited","params":{"processId":%s,"seq":%d,"exitCode":%d,'
            b'"sandboxDenied":%s,"terminatedBy":"%s","signal":%s}}'
            % (
                self._id_json(process_id),
                seq,
                exit_code,
                b"true" if sandbox_denied else b"false",
                terminated_by.encode(),
                encode(signal),
            )
        )

    def closed(self, process_id: str, seq: int, drained: bool = False) -> bytes:
        """``drained`` (ours): the streams were closed by the drain timeout, not by EOF."""
        tail = b',"drained":true}}' if drained else b"}}"
        # A process's last notification: its id leaves the cache, which so holds the ids of
        # live processes, not those of the last few thousand closed ones (kept, they pinned
        # the allocator's arenas where the freed records of a burst of processes had been:
        # 10,000 `true` left the server ~17 MiB above where it started).
        encoded = self._ids.pop(process_id, None) or encode(process_id)
        return b'{"method":"process/closed","params":{"processId":%s,"seq":%d%s' % (
            encoded,
            seq,
            tail,
        )
