"""Wire types of ``fs/*`` (imported with :mod:`..methods.fs`, on the first ``fs/*`` request)."""

from __future__ import annotations

from typing import Literal

import msgspec

from . import U64, FsSandbox, _Params, _Wire, encode

# ---- filesystem (PROTOCOL.md Part B §4.5, §9, §14.2) --------------------------------------
#
# Paths arrive as strings (an absolute path or a file:// URI) and are parsed by the handler,
# so a bad one is -32602 naming its field. ``sandbox`` is kept as plain JSON: the handler only
# decides whether the profile asks for restrictions this server would have to enforce.


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


# ---- codex 0.169 additions: paths, missing-path watches -------------------------------------


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
