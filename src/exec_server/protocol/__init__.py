"""Wire types of the exec-server protocol: one msgspec Struct per params, result and notification.

Field names are snake_case in Python and camelCase on the wire; ``bytes`` fields travel as
standard base64 with padding. Unknown fields are ignored on input, so clients of both the
seed-era and the current reference decode here unchanged (PROTOCOL.md Part A §A1).

This package knows nothing of sockets, processes or asyncio. This module holds what every
server needs from its start: the base structs, the handshake, and the encoders (with the
``process/*`` notifications every session sends). Each family's requests and results live
in a module of their own, named after the family and imported with its method module
(methods/__init__.py), so a server answers ``initialize`` without having built them:
:mod:`.process` (``process/*`` and its managed network), :mod:`.fs` (``fs/*``),
:mod:`.http`, :mod:`.forward`, :mod:`.config` (``environmentConfig/read``) and
:mod:`.discovery` (``capabilityRoots/*``, ``capabilities/*``).
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


class EmptyResult(_Wire):
    """The result of a method that answers nothing but success (``{}``)."""


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
