"""Files on the server, with :mod:`pathlib`-like names: ``client.fs.read_text(path)``...

Remote paths are absolute POSIX paths (``str`` or :class:`~pathlib.PurePosixPath`); a relative
path is taken from the server's working directory when the server reports one. They travel
as plain paths to the 0.128 reference and as ``file://`` URIs to the others.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from types import TracebackType
from typing import Any, Literal, Protocol

import msgspec

from . import _wire
from .errors import METHOD_NOT_FOUND, RemoteFileNotFound, RpcError, rpc_error

RemotePath = str | os.PathLike[str]


class FsPort(Protocol):
    """What :class:`RemoteFS` and its files ask of the client whose session they use."""

    def remote_path(self, path: RemotePath) -> PurePosixPath:
        """``path`` as an absolute remote path (a relative one from the server's cwd)."""
        ...

    def wire_path(self, path: PurePosixPath) -> str:
        """``path`` as this server takes it (a ``file://`` URI, or a plain path)."""
        ...

    def new_id(self, kind: str) -> str:
        """An id for a handle no other client of the session will pick."""
        ...

    async def request(self, method: str, params: Any, *, subject: str | None = None) -> msgspec.Raw:
        """One call (kept across a reconnect); its raw result, or an :class:`RpcError`."""
        ...


BLOCK_BYTES = 256 * 1024
"""Bytes per ``fs/readBlock`` / ``fs/writeBlock`` (the servers take up to 1 MiB)."""


@dataclass(frozen=True, slots=True)
class FileStat:
    """What ``fs/getMetadata`` says of a path (following symlinks, except ``is_symlink``).
    ``size`` is None where the server does not report it (0.128)."""

    is_dir: bool
    is_file: bool
    is_symlink: bool
    size: int | None
    created_at_ms: int
    modified_at_ms: int


@dataclass(frozen=True, slots=True)
class DirEntry:
    """One entry of a remote directory."""

    name: str
    path: PurePosixPath
    is_dir: bool
    is_file: bool


class RemoteFS:
    """The server's file system; reached as ``client.fs``."""

    def __init__(self, port: FsPort) -> None:
        self._port = port

    def _path(self, path: RemotePath) -> PurePosixPath:
        return self._port.remote_path(path)

    async def _call(self, method: str, path: PurePosixPath, **params: object) -> msgspec.Raw:
        return await self._port.request(
            method, {"path": self._port.wire_path(path), **params}, subject=str(path)
        )

    async def read_bytes(self, path: RemotePath) -> bytes:
        """The whole file (the servers refuse files over 512 MiB; use :meth:`open`)."""
        raw = await self._call("fs/readFile", self._path(path))
        result: _wire.ReadFileResult = _wire.decode(raw, _wire.ReadFileResult)
        return result.data_base64

    async def read_text(
        self, path: RemotePath, encoding: str = "utf-8", errors: str = "strict"
    ) -> str:
        """The whole file, decoded."""
        return (await self.read_bytes(path)).decode(encoding, errors)

    async def write_bytes(self, path: RemotePath, data: bytes) -> None:
        """Create or replace the file with ``data`` (its directory must exist)."""
        encoded = _wire.encode(bytes(data))[1:-1].decode()  # base64, as msgspec writes bytes
        await self._call("fs/writeFile", self._path(path), dataBase64=encoded)

    async def write_text(
        self, path: RemotePath, text: str, encoding: str = "utf-8", errors: str = "strict"
    ) -> None:
        """Create or replace the file with ``text``, encoded."""
        await self.write_bytes(path, text.encode(encoding, errors))

    async def stat(self, path: RemotePath) -> FileStat:
        """Kind, size and times; :class:`RemoteFileNotFound` if it does not exist."""
        raw = await self._call("fs/getMetadata", self._path(path))
        meta: _wire.Metadata = _wire.decode(raw, _wire.Metadata)
        return FileStat(
            is_dir=meta.is_directory,
            is_file=meta.is_file,
            is_symlink=meta.is_symlink,
            size=meta.size,
            created_at_ms=meta.created_at_ms,
            modified_at_ms=meta.modified_at_ms,
        )

    async def exists(self, path: RemotePath) -> bool:
        """Whether the path exists (a broken symlink does not)."""
        try:
            await self.stat(path)
        except RemoteFileNotFound:
            return False
        return True

    async def is_dir(self, path: RemotePath) -> bool:
        """Whether the path is a directory (False if it does not exist)."""
        try:
            return (await self.stat(path)).is_dir
        except RemoteFileNotFound:
            return False

    async def iterdir(self, path: RemotePath) -> list[DirEntry]:
        """The directory's entries, sorted by name (broken symlinks are left out)."""
        base = self._path(path)
        raw = await self._call("fs/readDirectory", base)
        result: _wire.ReadDirectoryResult = _wire.decode(raw, _wire.ReadDirectoryResult)
        entries = [
            DirEntry(e.file_name, base / e.file_name, e.is_directory, e.is_file)
            for e in result.entries
        ]
        return sorted(entries, key=lambda e: e.name)

    async def mkdir(
        self, path: RemotePath, *, parents: bool = False, exist_ok: bool = False
    ) -> None:
        """Create a directory; ``parents`` creates missing parents too, as ``mkdir -p``.
        An existing directory is an error unless ``exist_ok``."""
        target = self._path(path)
        if parents and not exist_ok and await self.exists(target):
            raise rpc_error("fs/createDirectory", -32603, "File exists (os error 17)", str(target))
        if exist_ok and not parents and await self.is_dir(target):
            return
        await self._call("fs/createDirectory", target, recursive=parents)

    async def remove(
        self, path: RemotePath, *, recursive: bool = False, missing_ok: bool = False
    ) -> None:
        """Remove a file, a symlink (never its target) or an empty directory; a whole tree
        with ``recursive``. A missing path is an error unless ``missing_ok``."""
        await self._call("fs/remove", self._path(path), recursive=recursive, force=missing_ok)

    async def copy(
        self, source: RemotePath, destination: RemotePath, *, recursive: bool = False
    ) -> None:
        """Copy a file or symlink on the server; a directory tree with ``recursive``."""
        src, dst = self._path(source), self._path(destination)
        params = {
            "sourcePath": self._port.wire_path(src),
            "destinationPath": self._port.wire_path(dst),
            "recursive": recursive,
        }
        await self._port.request("fs/copy", params, subject=str(src))

    def open(self, path: RemotePath, mode: Literal["rb", "wb"] = "rb") -> RemoteFile:
        """A remote file for streaming in blocks, used with ``async with``:
        ``rb`` reads, ``wb`` creates or truncates and writes. Servers without file handles
        (0.128) get the whole file read at open, or written at close."""
        if mode not in ("rb", "wb"):
            raise ValueError(f"mode must be 'rb' or 'wb', not {mode!r}")
        return RemoteFile(self, self._port, self._path(path), mode)


class RemoteFile:
    """A file opened with :meth:`RemoteFS.open`; ``async with`` closes it."""

    def __init__(self, fs: RemoteFS, port: FsPort, path: PurePosixPath, mode: str) -> None:
        self._fs = fs
        self._port = port
        self.path = path
        self.mode = mode
        self._handle: str | None = None
        self._whole: bytearray | None = None  # the fallback without file handles
        self._position = 0
        self._pending = bytearray()  # written, not yet sent
        self._eof = False
        self.closed = True

    async def __aenter__(self) -> RemoteFile:
        await self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._blocks()

    async def _blocks(self) -> AsyncIterator[bytes]:
        while block := await self.read(BLOCK_BYTES):
            yield block

    async def _open(self) -> None:
        handle = self._port.new_id("h")
        params = {
            "handleId": handle,
            "path": self._port.wire_path(self.path),
            "mode": "read" if self.mode == "rb" else "replace",
        }
        try:
            await self._port.request("fs/open", params, subject=str(self.path))
        except RpcError as exc:
            if exc.code != METHOD_NOT_FOUND:
                raise
            self._whole = bytearray(
                await self._fs.read_bytes(self.path) if self.mode == "rb" else b""
            )
        else:
            self._handle = handle
        self.closed = False

    def _check(self, mode: str) -> None:
        if self.closed:
            raise ValueError(f"I/O on closed remote file {self.path}")
        if self.mode != mode:
            raise ValueError(
                f"remote file {self.path} is not open for {'reading' if mode == 'rb' else 'writing'}"
            )

    def tell(self) -> int:
        """The current position."""
        return self._position + len(self._pending)

    def seek(self, offset: int) -> int:
        """Move to an absolute position (reading only)."""
        self._check("rb")
        self._position, self._eof = offset, False
        return offset

    async def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all the rest if negative); ``b""`` at the end."""
        self._check("rb")
        if self._whole is not None:
            end = len(self._whole) if size < 0 else self._position + size
            data = bytes(self._whole[self._position : end])
            self._position += len(data)
            return data
        if size < 0:
            return b"".join([block async for block in self._blocks()])
        pieces: list[bytes] = []
        wanted = size
        while wanted > 0 and not self._eof:
            block = await self._read_block(min(wanted, BLOCK_BYTES))
            pieces.append(block)
            wanted -= len(block)
        return b"".join(pieces)

    async def _read_block(self, length: int) -> bytes:
        params = {"handleId": self._handle, "offset": self._position, "len": length}
        raw = await self._port.request("fs/readBlock", params, subject=str(self.path))
        result: _wire.ReadBlockResult = _wire.decode(raw, _wire.ReadBlockResult)
        self._position += len(result.chunk)
        self._eof = result.eof or not result.chunk
        return result.chunk

    async def write(self, data: bytes) -> int:
        """Write ``data`` (sent in blocks as they fill up); returns its length."""
        self._check("wb")
        if self._whole is not None:
            self._whole += data
            return len(data)
        self._pending += data
        while len(self._pending) >= BLOCK_BYTES:
            await self._send_block(BLOCK_BYTES)
        return len(data)

    async def _send_block(self, length: int) -> None:
        block = bytes(self._pending[:length])
        params = {"handleId": self._handle, "offset": self._position, "chunk": block}
        await self._port.request("fs/writeBlock", params, subject=str(self.path))
        del self._pending[:length]
        self._position += length

    async def flush(self) -> None:
        """Send what was written so far."""
        if self.mode == "wb" and self._whole is None and self._pending:
            await self._send_block(len(self._pending))

    async def close(self) -> None:
        """Send what is left and close the handle; safe to call twice."""
        if self.closed:
            return
        try:
            if self._whole is not None:
                if self.mode == "wb":
                    await self._fs.write_bytes(self.path, bytes(self._whole))
            else:
                await self.flush()
        finally:
            self.closed = True
            if self._handle is not None:
                await self._port.request("fs/close", {"handleId": self._handle})
