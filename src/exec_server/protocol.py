"""Wire types of the exec-server protocol: one msgspec Struct per params, result and notification.

Field names are snake_case in Python and camelCase on the wire; ``bytes`` fields travel as
standard base64 with padding. Unknown fields are ignored on input, so clients of both the
seed-era and the current reference decode here unchanged (PROTOCOL.md Part A §A1).

This module knows nothing of sockets, processes or asyncio.
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


# ---- filesystem (PROTOCOL.md Part B §4.5, §9, §14.2) --------------------------------------
#
# Paths arrive as strings (an absolute path or a file:// URI) and are parsed by the handler,
# so a bad one is -32602 naming its field. ``sandbox`` is kept as plain JSON: the handler only
# decides whether the profile asks for restrictions this server would have to enforce.

FsSandbox = dict[str, Any] | None
"""A permission profile (``{"permissions": {...}, "windowsSandboxLevel": ...}``) or null."""


class FsPathParams(_Params):
    """``fs/readFile``, ``fs/getMetadata``, ``fs/readDirectory``."""

    path: str
    sandbox: FsSandbox = None


class FsReadFileResult(_Wire):
    data_base64: bytes


class FsWriteFileParams(_Params):
    """``dataBase64`` stays a string: the reference decodes it in the handler (-32600, not -32602)."""

    path: str
    data_base64: str
    sandbox: FsSandbox = None


class FsCreateDirectoryParams(_Params):
    path: str
    recursive: bool | None = None
    sandbox: FsSandbox = None


class FsMetadataResult(_Wire):
    is_directory: bool
    is_file: bool
    is_symlink: bool
    size: int
    created_at_ms: int
    modified_at_ms: int


class FsDirectoryEntry(_Wire):
    file_name: str
    is_directory: bool
    is_file: bool


class FsReadDirectoryResult(_Wire):
    entries: list[FsDirectoryEntry]


class FsRemoveParams(_Params):
    path: str
    recursive: bool | None = None
    force: bool | None = None
    sandbox: FsSandbox = None


class FsCopyParams(_Params):
    """``recursive`` is required, as in the reference."""

    source_path: str
    destination_path: str
    recursive: bool
    sandbox: FsSandbox = None


FsOpenMode = Literal["read", "replace"]


class FsOpenParams(_Params):
    """``mode``: ``read`` (default) or ``replace`` (create or truncate, then write blocks)."""

    handle_id: str
    path: str
    mode: FsOpenMode = "read"
    sandbox: FsSandbox = None


class FsHandleParams(_Params):
    """``fs/close``."""

    handle_id: str


class FsOpenResult(_Wire):
    handle_id: str


class FsReadBlockParams(_Params):
    handle_id: str
    offset: U64
    length: U64 = msgspec.field(name="len")


class FsReadBlockResult(_Wire):
    chunk: bytes
    eof: bool


class FsWriteBlockParams(_Params):
    handle_id: str
    offset: U64
    chunk: bytes


# ---- executor-side HTTP (PROTOCOL.md Part B §4.6) -----------------------------------------


class HttpHeader(_Wire):
    name: str
    value: str


class HttpRequestHeader(_Wire):
    """A header to send: ``value``, followed by the executor's ``$valueEnvVar`` when named
    (0.169 ``httpHeaderEnvVars``; ``value`` stays required, as in the reference)."""

    name: str
    value: str
    value_env_var: str | None = None


class HttpRequestParams(_Params):
    """``redirectPolicy`` (0.169): ``follow`` (default) or ``stop``."""

    method: str
    url: str
    request_id: str
    headers: list[HttpRequestHeader] = msgspec.field(default_factory=list)
    body_base64: bytes | None = None
    timeout_ms: U64 | None = None
    stream_response: bool = False
    redirect_policy: Literal["follow", "stop"] | None = None


class HttpRequestResult(_Wire):
    status: int
    headers: list[HttpHeader]
    body_base64: bytes


class HttpBodyDelta(_Wire):
    """Params of the ``http/request/bodyDelta`` notification."""

    request_id: str
    seq: int
    delta_base64: bytes
    done: bool
    error: str | None


class HttpBodyDeltaNotification(_Wire):
    method: str
    params: HttpBodyDelta


# ---- codex 0.169 additions: paths, missing-path watches, executor config -------------------


class FsCanonicalizeResult(_Wire):
    """``fs/canonicalize``: the path with every symlink resolved, as a ``file://`` URI."""

    path: str


class FsWatchMissingParams(_Params):
    """``fs/watchMissing``: ``present`` is one path that exists (or null), not a list."""

    watch_id: int  # a u64 in the reference; msgspec bounds stop at i64, so the handler checks
    missing: list[str]
    present: str | None = None


class FsWatchMissingResult(_Wire):
    watching: bool


class FsMissingChanged(_Wire):
    """Params of the ``fs/missingChanged`` notification."""

    watch_id: int


def missing_changed_notification(watch_id: int) -> bytes:
    return encode({"method": "fs/missingChanged", "params": FsMissingChanged(watch_id)})


class EnvironmentConfigReadParams(_Params):
    """``environmentConfig/read``: both path lists are required (each a list of TOML keys)."""

    cwd: str
    config_paths: list[list[str]]
    requirements_paths: list[list[str]]


class EnvironmentConfigLayer(_Wire):
    source: str
    base_dir: str
    toml: str


class EnvironmentConfigLayerStack(_Wire):
    layers: list[EnvironmentConfigLayer]
    cloud_insertion_index: int


class EnvironmentConfigReadResult(_Wire):
    user_home_dir: str | None
    codex_home_dir: str
    hostname: str | None
    config: EnvironmentConfigLayerStack
    requirements: EnvironmentConfigLayerStack


# ---- port forwarding (ours; docs/forwarding.md) ---------------------------------------------

StreamId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
WindowBytes = Annotated[int, msgspec.Meta(ge=1, le=2**40)]

DEFAULT_FORWARD_WINDOW = 1024 * 1024
"""A client's receive window when ``forward/open`` names none."""


class ForwardOpenParams(_Params):
    """``forward/open``: the client names the stream (as it names processes), so data can
    never arrive for an id it does not know yet. ``window``: bytes of the destination's it
    can take before it sends ``forward/credit``."""

    stream_id: StreamId
    host: str
    port: Port
    window: WindowBytes = DEFAULT_FORWARD_WINDOW
    sandbox: FsSandbox = None
    """A permission profile, as on ``fs/*``: with its network restricted, refused."""


class ForwardOpenResult(_Wire):
    """``window``: bytes the client may write before the server grants more."""

    stream_id: str
    window: int


class ForwardWriteParams(_Params):
    """``data`` is base64, decoded by the handler: msgspec's decoder for ``bytes`` is
    several times slower than a SIMD one, and this is most of what an upload sends."""

    stream_id: StreamId
    data: str


class ForwardCreditParams(_Params):
    """``forward/credit`` (both ways): the sender of it can take ``bytes`` more."""

    stream_id: StreamId
    granted: U64 = msgspec.field(name="bytes")


class ForwardStreamParams(_Params):
    """``forward/shutdown`` and ``forward/close``."""

    stream_id: StreamId


def base64_decoder(prefer_pybase64: bool) -> Callable[[str | memoryview], bytes]:
    """Strict base64 decoding (ValueError for a character outside the alphabet, or bad
    padding): pybase64's SIMD decoder when asked for (and installed), else binascii's."""
    if prefer_pybase64:
        try:
            from pybase64 import b64decode
        except ImportError:
            pass
        else:
            return lambda text: b64decode(text, validate=True)
    import binascii

    return lambda text: binascii.a2b_base64(text, strict_mode=True)


class ForwardNotifications:
    """Encodes ``forward/data``, ``forward/credit``, ``forward/eof`` and ``forward/closed``
    straight to bytes (data is most of what a busy forward sends)."""

    __slots__ = ("_b64encode",)

    def __init__(self, b64encode: Base64Encoder) -> None:
        self._b64encode = b64encode

    def data(self, stream_id: str, data: bytes | memoryview) -> bytes:
        prefix = b'{"method":"forward/data","params":{"streamId":%s,"data":"' % encode(stream_id)
        # Both encoders take any buffer: a read is encoded where it landed, without a copy.
        return b"".join((prefix, self._b64encode(data), b'"}}'))  # type: ignore[arg-type]

    def credit(self, stream_id: str, granted: int) -> bytes:
        return b'{"method":"forward/credit","params":{"streamId":%s,"bytes":%d}}' % (
            encode(stream_id),
            granted,
        )

    def eof(self, stream_id: str) -> bytes:
        return b'{"method":"forward/eof","params":{"streamId":%s}}' % encode(stream_id)

    def closed(self, stream_id: str, error: str | None) -> bytes:
        return b'{"method":"forward/closed","params":{"streamId":%s,"error":%s}}' % (
            encode(stream_id),
            encode(error),
        )


# ---- fs/walk (codex 0.169; called by codex for a repository's .agents/skills) -------------


class FsWalkOptions(_Wire, kw_only=True):
    """The limits are required, as in the reference; ``pruneHiddenDirectories`` is not."""

    max_depth: U64
    max_directories: U64
    max_entries: U64
    follow_directory_symlinks: bool
    prune_hidden_directories: bool = False


class FsWalkParams(_Params):
    path: str
    options: FsWalkOptions
    sandbox: FsSandbox = None


class FsWalkEntry(_Wire):
    path: str
    kind: Literal["file", "directory"]


class FsWalkError(_Wire):
    path: str
    message: str


class FsWalkResult(_Wire):
    entries: list[FsWalkEntry]
    errors: list[FsWalkError]
    truncated: bool


# ---- capabilityRoots/discoverV1 (codex 0.169; gated by capabilityDiscoverySandbox) ---------


class CapabilityRootRequest(_Wire, kw_only=True):
    id: str
    path: str
    sandbox: FsSandbox = None


class CapabilityRootsDiscoverParams(_Params):
    roots: list[CapabilityRootRequest]


class CapabilityTextFile(_Wire):
    path: str
    contents: str


class DiscoveredPluginFiles(_Wire):
    manifest: CapabilityTextFile
    mcp_config: CapabilityTextFile | None
    apps_config: CapabilityTextFile | None


class DiscoveredSkillFiles(_Wire):
    instructions: CapabilityTextFile
    metadata: CapabilityTextFile | None


class CapabilityRootDiscovery(_Wire):
    id: str
    path: str
    plugin: DiscoveredPluginFiles | None
    skills: list[DiscoveredSkillFiles]
    namespace_manifests: list[CapabilityTextFile]
    warnings: list[str]
    error: str | None


class CapabilityRootsDiscoverResult(_Wire):
    roots: list[CapabilityRootDiscovery]


# ---- capabilities/discoverV2 (codex 0.169; gated by capabilityDiscoveryV2) ------------------


class DiscoverV2Params(_Params):
    cwd: str
    sandbox: FsSandbox = None


class SkillDiscoveryRoot(_Wire):
    id: str
    path: str


class ExecutorPluginSkill(_Wire):
    name: str
    description: str
    short_description: str | None
    path: str
    dependencies: dict[str, Any] | None
    policy: dict[str, Any] | None


class ExecutorSkill(_Wire):
    name: str
    description: str
    short_description: str | None
    path: str
    discovery_root: SkillDiscoveryRoot
    dependencies: dict[str, Any] | None
    policy: dict[str, Any] | None


class ExecutorPlugin(_Wire):
    id: str
    display_name: str
    remote_plugin_id: str | None
    version: str
    root: str
    files: DiscoveredPluginFiles
    skills: list[ExecutorPluginSkill]


class DiscoverV2Result(_Wire):
    plugins: list[ExecutorPlugin]
    skills: list[ExecutorSkill]
    warnings: list[str]
