"""The blocking filesystem operations behind ``fs/*`` (PROTOCOL.md Part B §9).

Every function here may block on the disk, so the method layer runs them on worker threads.
They take normalised absolute paths, raise ``OSError`` exactly as the OS reports it (the
caller maps it with :func:`~exec_server.fs.errors.fs_error`) and raise
:class:`~exec_server.errors.RpcError` for the refusals the protocol defines itself.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Any

import msgspec

from ..errors import invalid_request

_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK | os.O_CLOEXEC
"""O_NONBLOCK: a FIFO or device at the path can never park a worker thread forever
(no effect on regular files, whose reads and writes always complete)."""

_READ_STEP = 1024 * 1024


def read_file(path: str, limit: int) -> bytes:
    """The whole file, or -32600 when it is larger than ``limit`` bytes or not a file.

    The size is checked before reading and the read itself is bounded too, so a file that
    grows meanwhile (or a ``/proc`` file that reports size 0) fails the same way.
    """
    return read_open_file(os.open(path, _READ_FLAGS), path, limit)


def read_open_file(fd: int, path: str, limit: int) -> bytes:
    """:func:`read_file` for a descriptor already open (and closed here, whatever happens)."""
    try:
        status = os.fstat(fd)
        if not (stat.S_ISREG(status.st_mode) or stat.S_ISDIR(status.st_mode)):
            # FIFOs, sockets, devices: refused as by the 0.169 reference (a directory still
            # fails below with EISDIR, -32603, as Part B §9 and the seed-era reference say).
            raise invalid_request(f"path `{path}` is not a file")
        size = status.st_size
        if size > limit:
            raise _too_large(limit)
        chunks: list[bytes] = []
        total = 0
        while True:
            want = min(max(size - total, _READ_STEP), limit + 1 - total)
            data = os.read(fd, want)
            if not data:
                break
            chunks.append(data)
            total += len(data)
            if total > limit:
                raise _too_large(limit)
    finally:
        os.close(fd)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(limit: int) -> Exception:
    return invalid_request(f"file is too large to read: limit is {limit} bytes")


def write_file(path: str, data: bytes) -> None:
    """Create or truncate ``path`` and write ``data``; the parent must exist."""
    fd = os.open(path, _WRITE_FLAGS, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def create_directory(path: str, recursive: bool) -> None:
    """``mkdir -p`` (an existing directory is fine) or a single ``mkdir``."""
    if recursive:
        make_dirs(path)
    else:
        os.mkdir(path)


def make_dirs(path: str) -> None:
    """``os.makedirs(path, exist_ok=True)`` without recursion, so a path thousands of missing
    levels deep cannot exhaust the stack (``os.makedirs`` recurses once per missing level)."""
    missing: list[str] = []
    while not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory)
        except FileExistsError:
            if not os.path.isdir(directory):  # a file took the name: as os.makedirs says
                raise


class Metadata(msgspec.Struct, frozen=True):
    """What ``fs/getMetadata`` reports; the flags and size follow symlinks."""

    is_directory: bool
    is_file: bool
    is_symlink: bool
    size: int
    created_at_ms: int
    modified_at_ms: int


def get_metadata(path: str) -> Metadata:
    """Metadata of ``path``; a broken symlink is not found (its target is what is described)."""
    target = os.stat(path)
    return metadata_of(target, stat.S_ISLNK(os.lstat(path).st_mode))


def metadata_of(target: os.stat_result, is_symlink: bool) -> Metadata:
    """:class:`Metadata` from the status of what a path leads to."""
    birth: Any = getattr(target, "st_birthtime", None)  # absent on Linux: 0, as the reference
    return Metadata(
        is_directory=stat.S_ISDIR(target.st_mode),
        is_file=stat.S_ISREG(target.st_mode),
        is_symlink=is_symlink,
        size=target.st_size,
        created_at_ms=int(birth * 1000) if birth else 0,
        modified_at_ms=target.st_mtime_ns // 1_000_000,
    )


class DirectoryEntry(msgspec.Struct, frozen=True):
    """One ``fs/readDirectory`` entry; flags follow symlinks."""

    file_name: str
    is_directory: bool
    is_file: bool


def read_directory(path: str | int) -> list[DirectoryEntry]:
    """The entries of ``path`` (or of the directory open as that descriptor) in the OS's
    order.

    Entries whose target cannot be stat'ed (broken symlinks, races with deletion) are
    skipped; names that are not UTF-8 are converted lossily (U+FFFD), as the reference does.
    """
    entries: list[DirectoryEntry] = []
    with os.scandir(path) as listing:
        for entry in listing:
            try:
                mode = entry.stat().st_mode
            except OSError:
                continue
            entries.append(
                DirectoryEntry(
                    file_name=_lossy_name(entry.name),
                    is_directory=stat.S_ISDIR(mode),
                    is_file=stat.S_ISREG(mode),
                )
            )
    return entries


def _lossy_name(name: str) -> str:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes arrive as surrogate escapes
        return os.fsencode(name).decode("utf-8", "replace")
    return name


def remove(path: str, recursive: bool, force: bool) -> None:
    """Remove ``path``: a directory (recursively or ``rmdir``), else unlink it.

    A symlink is removed itself, never its target, and ``rmtree`` does not follow symlinks
    inside the tree. A missing path is fine when ``force`` is set, and so are entries that
    vanish while a tree is being removed.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        if force:
            return
        raise
    if not stat.S_ISDIR(mode):
        os.unlink(path)
    elif not recursive:
        os.rmdir(path)
    else:
        remove_tree(path, None, force)


_TREE_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

_TreeLevel = tuple[int, str, int | None, list[str]]
"""A directory of a tree being removed: its fd, its name, its parent's fd, and the names of
its subdirectories still to remove."""


def remove_tree(name: str, dir_fd: int | None, force: bool) -> None:
    """The directory ``name`` (relative to ``dir_fd``) and all it holds, as ``shutil.rmtree``
    does it but without recursion: Python 3.11's recurses once per level, so a tree a
    thousand levels deep failed with RecursionError. Each directory is opened relative to
    its parent with ``O_NOFOLLOW``, so a symlink is removed, never followed, even one
    swapped in meanwhile. Entries that vanish meanwhile are fine when ``force`` is set."""
    top = _open_tree_level(name, dir_fd, force)
    stack: list[_TreeLevel] = [] if top is None else [top]
    try:
        while stack:
            fd, level_name, parent, subdirectories = stack[-1]
            if subdirectories:
                level = _open_tree_level(subdirectories.pop(), fd, force)
                if level is not None:
                    stack.append(level)
                continue
            stack.pop()
            os.close(fd)
            try:
                os.rmdir(level_name, dir_fd=parent)
            except FileNotFoundError:
                if not force:
                    raise
    finally:
        for fd, *_ in stack:
            os.close(fd)


def _open_tree_level(name: str, dir_fd: int | None, force: bool) -> _TreeLevel | None:
    """Open a directory of a tree being removed and unlink what it holds but directories;
    None when it vanished meanwhile (and ``force`` is set)."""
    try:
        fd = os.open(name, _TREE_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        if force:
            return None
        raise
    subdirectories: list[str] = []
    try:
        with os.scandir(fd) as entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        subdirectories.append(entry.name)
                    else:
                        os.unlink(entry.name, dir_fd=fd)
                except FileNotFoundError:
                    if not force:
                        raise
    except BaseException:
        os.close(fd)
        raise
    return fd, name, dir_fd, subdirectories


def copy(source: str, destination: str, recursive: bool) -> None:
    """``fs/copy``: files copied, symlinks recreated (not followed), special files skipped.

    A directory needs ``recursive`` and may not be copied into itself or a descendant (both
    sides canonicalised: the source wholly, the destination as far as it exists).
    """
    mode = os.lstat(source).st_mode
    if stat.S_ISDIR(mode):
        if not recursive:
            raise invalid_request("fs/copy requires recursive: true when sourcePath is a directory")
        if _is_same_or_inside(destination, source):
            raise invalid_request(
                "fs/copy cannot copy a directory to itself or one of its descendants"
            )
        _copy_tree(source, destination)
    elif stat.S_ISLNK(mode):
        os.symlink(os.readlink(source), destination)
    elif stat.S_ISREG(mode):
        _copy_file(source, destination)
    else:
        raise invalid_request("fs/copy only supports regular files, directories, and symlinks")


def _is_same_or_inside(destination: str, source: str) -> bool:
    real_source = os.path.realpath(source)
    real_destination = os.path.realpath(destination)  # resolves the part that exists
    if real_destination == real_source:
        return True
    prefix = real_source if real_source.endswith("/") else real_source + "/"
    return real_destination.startswith(prefix)


def _copy_tree(source: str, destination: str) -> None:
    """Copy a directory tree without recursion (deep trees cannot exhaust the stack)."""
    make_dirs(destination)
    pending = [(source, destination)]
    while pending:
        from_dir, to_dir = pending.pop()
        with os.scandir(from_dir) as listing:
            for entry in listing:
                target = os.path.join(to_dir, entry.name)
                if entry.is_symlink():
                    os.symlink(os.readlink(entry.path), target)
                elif entry.is_dir(follow_symlinks=False):
                    os.makedirs(target, exist_ok=True)
                    pending.append((entry.path, target))
                elif entry.is_file(follow_symlinks=False):
                    _copy_file(entry.path, target)
                # FIFOs, sockets and devices are skipped, as the reference does.


def _copy_file(source: str, destination: str) -> None:
    """Copy contents (in the kernel where it can) and permission bits; overwrites.

    Copying a file onto itself is refused: the truncate-then-copy the reference does would
    leave it empty.
    """
    import shutil  # on first use: it is not needed at start-up

    try:
        shutil.copyfile(source, destination)
    except shutil.SameFileError:
        raise invalid_request(
            f"fs/copy source and destination are the same file: {destination}"
        ) from None
    try:
        shutil.copymode(source, destination)
    except OSError as exc:
        if exc.errno != errno.EPERM:  # e.g. a file system without permission bits
            raise
