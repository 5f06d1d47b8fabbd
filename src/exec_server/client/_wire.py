"""What the client reads off the wire: the envelope, notifications and results.

Decoding is lenient where the two reference releases differ (0.128 answers ``initialize`` with
``{sessionId}`` only and has no ``size`` in metadata; 0.169 and ours add fields): every field
a release may omit has a default, and unknown fields are ignored. Params going out are plain
dicts, so nothing is sent that the caller did not mean to send.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

StreamName = Literal["stdout", "stderr", "pty"]


class _Wire(msgspec.Struct, rename="camel"):
    pass


class ErrorObject(_Wire):
    code: int
    message: str = ""


class Envelope(_Wire):
    """Any message from the server: a reply (``id`` + ``result`` or ``error``) or a
    notification (``method`` + ``params``)."""

    id: int | str | None = None
    method: str | None = None
    params: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"null"))
    result: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    error: ErrorObject | None = None


class InitializeResult(_Wire):
    session_id: str
    environment_info: dict[str, Any] | None = None
    extensions: dict[str, Any] = msgspec.field(default_factory=dict)


class OutputParams(_Wire):
    process_id: str
    seq: int
    stream: StreamName
    chunk: bytes


class ExitedParams(_Wire):
    process_id: str
    seq: int
    exit_code: int


class ClosedParams(_Wire):
    process_id: str
    seq: int


class ReadChunk(_Wire):
    seq: int
    stream: StreamName
    chunk: bytes


class ReadResult(_Wire):
    chunks: list[ReadChunk]
    next_seq: int
    exited: bool
    exit_code: int | None = None
    closed: bool = False
    failure: str | None = None


class WriteResult(_Wire):
    status: str


class TerminateResult(_Wire):
    running: bool


class ReadFileResult(_Wire):
    data_base64: bytes


class Metadata(_Wire):
    is_directory: bool
    is_file: bool
    is_symlink: bool = False
    size: int | None = None
    created_at_ms: int = 0
    modified_at_ms: int = 0


class DirectoryEntry(_Wire):
    file_name: str
    is_directory: bool
    is_file: bool


class ReadDirectoryResult(_Wire):
    entries: list[DirectoryEntry]


class ReadBlockResult(_Wire):
    chunk: bytes
    eof: bool


ENVELOPE = msgspec.json.Decoder(Envelope)
NOTIFICATION_TYPES: dict[str, type[_Wire]] = {
    "process/output": OutputParams,
    "process/exited": ExitedParams,
    "process/closed": ClosedParams,
}
encode = msgspec.json.Encoder().encode


def decode(raw: msgspec.Raw | bytes, kind: type[Any]) -> Any:
    """Decode a result or params of a known shape (raises :class:`msgspec.ValidationError`)."""
    return msgspec.json.decode(raw, type=kind)
