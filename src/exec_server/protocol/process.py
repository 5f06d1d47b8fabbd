"""Wire types of ``process/*``, with its managed network (``networkProxy`` on
``process/start``, the ``network/policyDecision`` notification and the ``network/policyRequest``
server request); imported with :mod:`..methods.process`. Its notifications are encoded by
:class:`~.ProcessNotifications`, which every session needs from the start."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from . import U64, StreamName, WriteStatusName, _Params, _Wire, encode

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


CredentialAuthMethod = Literal["bearer", "token", "basic", "header"]


class CredentialProviderConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, gc=False):
    """One ``networkProxy.proxy.credentialProviders`` entry: snake_case on the wire and no
    unknown fields, as the 0.169 reference (its rules are checked in
    ``network/providers.py``)."""

    env: list[str] = msgspec.field(default_factory=list)
    patterns: list[str] = msgspec.field(default_factory=list)
    url_prefixes: list[str] = msgspec.field(default_factory=list)
    url_prefix_from_env: str | None = None
    auth: list[CredentialAuthMethod] = msgspec.field(default_factory=list)
    header: str | None = None
    prefix: str | None = None


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
    credential_providers: dict[str, CredentialProviderConfig] | None = None


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
    """The child's network must go through the managed proxy (``networkProxy``)."""
    shell_snapshot: ShellSnapshotRequest | None = None
    """Run a ``shell -lc`` command with its scope's captured login state (``shellSnapshotV2``)."""
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
