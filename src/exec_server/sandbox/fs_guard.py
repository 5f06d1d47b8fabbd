"""``fs/*`` operations under a policy, safe against symlink, ``..``, magic-link and hard-link
escapes, including a symlink swapped in between the check and the use.

Each operation lets the kernel walk to the directory that holds the target (``openat2`` with
``RESOLVE_NO_MAGICLINKS``, so ``/proc/self/root/...`` and ``/proc/*/fd/*`` are refused), asks
the kernel where that directory really is (``/proc/self/fd``), checks the policy for that
canonical location, and then acts relative to the directory's descriptor on the last name
only, with ``O_NOFOLLOW``: a symlink put there after the check makes the act fail
(``ELOOP``), and the operation starts over from the new target. A final symlink is followed
the same way, one hop at a time, each hop checked. Trees (recursive copy, remove) are walked
through descriptors and re-opened by canonical path with ``RESOLVE_NO_SYMLINKS``.

Hard links: a regular file with more than one link is never written through (its other name
may be outside the writable roots); it is replaced by a new file with the same mode, written
and renamed over the name, so the other names keep their content.

Refusals are ``OSError`` values with the errno the reference reports: a path that may be
read but not written is ``EROFS`` ("Read-only file system", -32603 through ``fs_error``), a
hidden one ``EACCES`` ("Permission denied", -32600).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import posixpath
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import invalid_request
from ..fs import operations as ops
from .policy import Access, Policy, glob_static_prefix

_SYS_OPENAT2 = 437  # the same number on x86_64 and aarch64
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_AT_FDCWD = -100
_MAX_HOPS = 40  # symlinks followed for one path, as the kernel's own limit
_COPY_STEP = 1024 * 1024

_DIR_PATH = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_ANY_PATH = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC  # a symlink is opened itself
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def write_file(policy: Policy, path: str, data: bytes) -> None:
    """``fs/writeFile``: create or replace ``path`` with ``data``; the parent must exist."""
    os.close(_replace(policy, path, data))


def open_for_replace(policy: Policy, path: str) -> int:
    """``fs/open`` in ``replace`` mode: a descriptor of ``path``, created or emptied, open for
    writing (a hard-linked file is replaced by a new empty one first)."""
    return _replace(policy, path, None)


def open_for_read(policy: Policy, path: str) -> int:
    """A read-only descriptor of ``path`` (symlinks followed, each hop checked)."""
    for _ in range(_MAX_HOPS):
        spot = _locate(path, follow=True)
        try:
            _require(policy, spot.path, Access.READ)
            try:
                return os.open(spot.name, _READ_FLAGS, dir_fd=spot.dir_fd)
            except OSError as exc:
                if exc.errno != errno.ELOOP:
                    raise
        finally:
            spot.close()
    raise _error(errno.ELOOP)


def check_readable(policy: Policy, path: str) -> None:
    """Raise ``EACCES`` if ``path`` (symlinks followed) is hidden."""
    spot = _locate(path, follow=True)
    try:
        _require(policy, spot.path, Access.READ)
    finally:
        spot.close()


def check_place_readable(policy: Policy, path: str) -> None:
    """Raise ``EACCES`` if the place ``path`` names is hidden, whether or not anything is
    there (a last name that is a symlink is not followed)."""
    spot = _locate(path, follow=False)
    try:
        _require(policy, spot.path, Access.READ)
    finally:
        spot.close()


@dataclass(slots=True)
class Reached:
    """What :func:`open_readable` opened: an ``O_PATH`` descriptor (the caller closes it),
    where the kernel says it is, and whether ``path`` itself was a symlink."""

    fd: int
    path: str
    via_symlink: bool


def open_readable(policy: Policy, path: str) -> Reached:
    """``path`` opened as an ``O_PATH`` descriptor after each hop (each symlink followed,
    and the place it lands) was checked readable; what is then listed, stat'ed or
    canonicalised goes through that descriptor, so a symlink swapped in after the check
    changes nothing (``fs/readDirectory``, ``fs/getMetadata``, ``fs/canonicalize``)."""
    current, via_symlink = path, None
    for _ in range(_MAX_HOPS):
        spot = _locate(current, follow=False)
        try:
            _require(policy, spot.path, Access.READ)
            fd = _openat2(spot.dir_fd, spot.name, _ANY_PATH, _RESOLVE_NO_MAGICLINKS)
        finally:
            spot.close()
        try:
            status = os.fstat(fd)
            if via_symlink is None:
                via_symlink = stat.S_ISLNK(status.st_mode)
            if stat.S_ISLNK(status.st_mode):  # followed by the next hop, checked there
                current = posixpath.join(spot.directory, os.readlink("", dir_fd=fd))
                os.close(fd)
                continue
            real = _fd_path(fd)
            _require(policy, real, Access.READ)
        except BaseException:
            os.close(fd)
            raise
        return Reached(fd, real, via_symlink)
    raise _error(errno.ELOOP)


def create_directory(policy: Policy, path: str, recursive: bool) -> None:
    """``fs/createDirectory``: ``mkdir -p`` (an existing directory is fine) or one ``mkdir``."""
    if not recursive:
        spot = _locate(path, follow=False)
        try:
            _require(policy, spot.path, Access.WRITE)
            os.mkdir(spot.name, 0o777, dir_fd=spot.dir_fd)
        finally:
            spot.close()
        return
    parts = [part for part in path.split("/") if part]
    fd = _open_dir(_AT_FDCWD, "/")
    directory = "/"
    try:
        for index, part in enumerate(parts):
            child = _make_child_directory(policy, fd, directory, part, last=index == len(parts) - 1)
            os.close(fd)
            fd = child
            directory = _fd_path(fd)
    finally:
        os.close(fd)


def remove(policy: Policy, path: str, recursive: bool, force: bool) -> None:
    """``fs/remove``: a symlink or file is unlinked, a directory removed (with what it holds
    when ``recursive``, refused if anything inside may not be written). A missing path is
    fine when ``force`` is set."""
    spot = _locate(path, follow=False)
    try:
        try:
            status = os.stat(spot.name, dir_fd=spot.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            if force:
                return
            raise
        _require(policy, spot.directory, Access.WRITE)
        _require(policy, spot.path, Access.WRITE)
        if not stat.S_ISDIR(status.st_mode):
            os.unlink(spot.name, dir_fd=spot.dir_fd)
        elif not recursive:
            os.rmdir(spot.name, dir_fd=spot.dir_fd)
        else:
            _require_tree(policy, spot.path, Access.WRITE)
            ops.remove_tree(spot.name, spot.dir_fd, force)
    finally:
        spot.close()


def copy(policy: Policy, source: str, destination: str, recursive: bool) -> None:
    """``fs/copy``: files copied (mode kept), symlinks recreated (never followed), special
    files skipped; the source must be readable and what is written writable."""
    src = _locate(source, follow=False)
    try:
        status = os.stat(src.name, dir_fd=src.dir_fd, follow_symlinks=False)
        _require(policy, src.path, Access.READ)
        if stat.S_ISDIR(status.st_mode):
            if not recursive:
                raise invalid_request(
                    "fs/copy requires recursive: true when sourcePath is a directory"
                )
            if _same_or_inside(destination, src.path):
                raise invalid_request(
                    "fs/copy cannot copy a directory to itself or one of its descendants"
                )
            _require_tree(policy, src.path, Access.READ)
            _copy_tree(policy, src.path, destination)
        elif stat.S_ISLNK(status.st_mode):
            _make_symlink(policy, os.readlink(src.name, dir_fd=src.dir_fd), destination)
        elif stat.S_ISREG(status.st_mode):
            source_fd = os.open(src.name, _READ_FLAGS, dir_fd=src.dir_fd)
            try:
                _refuse_same_file(source_fd, destination)
                target_fd = _replace(policy, destination, None)
                try:
                    _copy_contents(source_fd, target_fd, stat.S_IMODE(status.st_mode))
                finally:
                    os.close(target_fd)
            finally:
                os.close(source_fd)
        else:
            raise invalid_request("fs/copy only supports regular files, directories, and symlinks")
    finally:
        src.close()


@dataclass(slots=True)
class _Spot:
    """A name in a directory held open: where an operation acts, and its canonical path."""

    dir_fd: int
    directory: str
    name: str

    @property
    def path(self) -> str:
        return self.directory if self.name == "." else posixpath.join(self.directory, self.name)

    def close(self) -> None:
        os.close(self.dir_fd)


class _SymlinkSwapped(OSError):
    """The last name turned into a symlink between the check and the act: start over."""

    def __init__(self) -> None:
        super().__init__(errno.ELOOP, os.strerror(errno.ELOOP))


def _locate(path: str, *, follow: bool) -> _Spot:
    """The directory holding ``path``'s last name, opened and canonicalised by the kernel;
    with ``follow``, a last name that is a symlink is followed (its target located anew)."""
    current = path
    for _ in range(_MAX_HOPS):
        head, name = posixpath.split(current)
        if name in ("", ".", ".."):
            fd = _open_dir(_AT_FDCWD, current)
            try:
                canonical = _fd_path(fd)
            finally:
                os.close(fd)
            if canonical == "/":
                return _Spot(_open_dir(_AT_FDCWD, "/"), "/", ".")
            current = canonical
            continue
        dir_fd = _open_dir(_AT_FDCWD, head or "/")
        try:
            directory = _fd_path(dir_fd)
            target = _symlink_target(dir_fd, name) if follow else None
        except BaseException:
            os.close(dir_fd)
            raise
        if target is None:
            return _Spot(dir_fd, directory, name)
        os.close(dir_fd)
        current = posixpath.join(directory, target)  # an absolute target replaces it all
    raise _error(errno.ELOOP)


def _replace(policy: Policy, path: str, data: bytes | None) -> int:
    for _ in range(_MAX_HOPS):
        spot = _locate(path, follow=True)
        try:
            _require(policy, spot.path, Access.WRITE)
            return _write_at(policy, spot, data)
        except _SymlinkSwapped:
            continue
        finally:
            spot.close()
    raise _error(errno.ELOOP)


def _write_at(policy: Policy, spot: _Spot, data: bytes | None) -> int:
    """Open ``spot`` for writing, emptied, with ``data`` written; never through a hard link."""
    try:
        fd = os.open(spot.name, _WRITE_FLAGS, 0o666, dir_fd=spot.dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _SymlinkSwapped from None
        raise
    try:
        status = os.fstat(fd)
        if stat.S_ISREG(status.st_mode) and status.st_nlink > 1:
            os.close(fd)
            fd = -1
            return _write_fresh(policy, spot, stat.S_IMODE(status.st_mode), data)
        if stat.S_ISREG(status.st_mode):
            os.ftruncate(fd, 0)
        if data is not None:
            _write_all(fd, data)
        return fd
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise


def _write_fresh(policy: Policy, spot: _Spot, mode: int, data: bytes | None) -> int:
    """A new file with ``data``, renamed over ``spot``: the old inode (and its other links)
    is left as it was."""
    temporary = f".{spot.name[:200]}.{secrets.token_hex(6)}.exec-server-tmp"
    _require(policy, posixpath.join(spot.directory, temporary), Access.WRITE)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temporary, flags, 0o600, dir_fd=spot.dir_fd)
    try:
        os.fchmod(fd, mode)
        if data is not None:
            _write_all(fd, data)
        os.rename(temporary, spot.name, src_dir_fd=spot.dir_fd, dst_dir_fd=spot.dir_fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=spot.dir_fd)
        raise
    return fd


def _make_child_directory(policy: Policy, fd: int, directory: str, part: str, last: bool) -> int:
    """Open (creating it if missing and allowed) the directory ``part`` inside ``fd``."""
    try:
        return _open_dir(fd, part)
    except FileNotFoundError:
        pass
    except NotADirectoryError:
        if last and os.path.lexists(posixpath.join(directory, part)):
            raise _error(errno.EEXIST) from None  # as mkdir -p: the name is taken by a file
        raise
    _require(policy, posixpath.join(directory, part), Access.WRITE)
    # Made meanwhile: opened below like any existing one, without following links.
    with contextlib.suppress(FileExistsError):
        os.mkdir(part, 0o777, dir_fd=fd)
    return _openat2(fd, part, _DIR_PATH, _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS)


def _make_symlink(policy: Policy, target: str, destination: str) -> None:
    spot = _locate(destination, follow=False)
    try:
        _require(policy, spot.path, Access.WRITE)
        os.symlink(target, spot.name, dir_fd=spot.dir_fd)
    finally:
        spot.close()


def _copy_tree(policy: Policy, source: str, destination: str) -> None:
    """Copy the directory at canonical ``source`` into ``destination`` without recursion."""
    create_directory(policy, destination, recursive=True)
    root_fd = _open_dir(_AT_FDCWD, destination)
    try:
        target_root = _fd_path(root_fd)
    finally:
        os.close(root_fd)
    pending = [(source, target_root)]
    while pending:
        from_dir, to_dir = pending.pop()
        from_fd = _open_canonical(from_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            to_fd = _open_canonical(to_dir, _DIR_PATH)
            try:
                pending += _copy_entries(policy, from_fd, from_dir, to_fd, to_dir)
            finally:
                os.close(to_fd)
        finally:
            os.close(from_fd)


def _copy_entries(
    policy: Policy, from_fd: int, from_dir: str, to_fd: int, to_dir: str
) -> list[tuple[str, str]]:
    """Copy one directory's entries; returns its subdirectories still to copy."""
    subdirectories: list[tuple[str, str]] = []
    with os.scandir(from_fd) as listing:
        for entry in listing:
            source = posixpath.join(from_dir, entry.name)
            target = posixpath.join(to_dir, entry.name)
            _require(policy, source, Access.READ)
            if entry.is_symlink():
                _require(policy, target, Access.WRITE)
                os.symlink(os.readlink(entry.name, dir_fd=from_fd), entry.name, dir_fd=to_fd)
            elif entry.is_dir(follow_symlinks=False):
                _require(policy, target, Access.WRITE)
                with contextlib.suppress(FileExistsError):
                    os.mkdir(entry.name, 0o777, dir_fd=to_fd)
                subdirectories.append((source, target))
            elif entry.is_file(follow_symlinks=False):
                _require(policy, target, Access.WRITE)
                source_fd = os.open(entry.name, _READ_FLAGS, dir_fd=from_fd)
                try:
                    mode = stat.S_IMODE(os.fstat(source_fd).st_mode)
                    target_fd = _write_at(policy, _Spot(to_fd, to_dir, entry.name), None)
                    try:
                        _copy_contents(source_fd, target_fd, mode)
                    finally:
                        os.close(target_fd)
                finally:
                    os.close(source_fd)
            # FIFOs, sockets and devices are skipped, as the reference does.
    return subdirectories


def _copy_contents(source_fd: int, target_fd: int, mode: int) -> None:
    while True:
        chunk = os.read(source_fd, _COPY_STEP)
        if not chunk:
            break
        _write_all(target_fd, chunk)
    try:
        os.fchmod(target_fd, mode)
    except OSError as exc:
        if exc.errno != errno.EPERM:  # a file system without permission bits
            raise


def _refuse_same_file(source_fd: int, destination: str) -> None:
    try:
        same = os.path.samestat(os.fstat(source_fd), os.stat(destination))
    except OSError:
        return
    if same:
        raise invalid_request(f"fs/copy source and destination are the same file: {destination}")


def _same_or_inside(destination: str, canonical_source: str) -> bool:
    target = os.path.realpath(destination)
    return target == canonical_source or target.startswith(canonical_source.rstrip("/") + "/")


def _require(policy: Policy, path: str, need: Access) -> None:
    have = policy.access_at(path)
    if have < need:
        raise _error(errno.EACCES if have == Access.NONE else errno.EROFS)


def _require_tree(policy: Policy, path: str, need: Access) -> None:
    """Refuse when something that exists below ``path`` has less than ``need``."""
    prefix = path.rstrip("/") + "/"
    for rule in policy.rules:
        if rule.path.startswith(prefix) and rule.access < need and os.path.lexists(rule.path):
            raise _error(errno.EACCES if rule.access == Access.NONE else errno.EROFS)
    if not any(_may_match_below(glob, path) for glob in policy.deny_globs):
        return
    for directory, subdirs, files in os.walk(path):
        for name in (*subdirs, *files):
            if policy.glob_denied(posixpath.join(directory, name)):
                raise _error(errno.EACCES)


def _may_match_below(glob: str, path: str) -> bool:
    """Whether ``glob`` could match something below ``path`` (its fixed directory is inside
    ``path``, or ``path`` inside it): else the tree need not be walked for it."""
    fixed = glob_static_prefix(glob) or "/"
    return _same_or_below(fixed, path) or _same_or_below(path, fixed)


def _same_or_below(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def _error(code: int) -> OSError:
    """The OS error the reference reports, without a file name (its messages have none)."""
    return OSError(code, os.strerror(code))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fd_path(fd: int) -> str:
    """Where the kernel says an open directory is now."""
    if os.fstat(fd).st_nlink == 0:
        raise _error(errno.ENOENT)  # removed meanwhile
    return os.readlink(f"/proc/self/fd/{fd}")


def _symlink_target(dir_fd: int, name: str) -> str | None:
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOENT):  # not a symlink, or not there
            return None
        raise


def _open_dir(dir_fd: int, path: str) -> int:
    """An ``O_PATH`` descriptor of the directory ``path`` (symlinks followed, magic links not)."""
    return _openat2(dir_fd, path, _DIR_PATH, _RESOLVE_NO_MAGICLINKS)


def _open_canonical(path: str, flags: int) -> int:
    """Open ``path``, which must be canonical: any symlink on the way fails with ``ELOOP``."""
    return _openat2(
        _AT_FDCWD, path, flags | os.O_CLOEXEC, _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS
    )


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


@functools.cache
def _syscall() -> Callable[..., int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return None
    function.restype = ctypes.c_long
    return function


_openat2_missing = False


def _openat2(dir_fd: int, path: str, flags: int, resolve: int) -> int:
    """``openat2(2)``; where the kernel lacks it, ``openat`` plus a check of where the
    descriptor landed (a symlink resolved on the way must not change the canonical path)."""
    global _openat2_missing
    syscall = _syscall()
    if syscall is not None and not _openat2_missing:
        how = _OpenHow(flags, 0, resolve)
        fd = syscall(
            _SYS_OPENAT2,
            ctypes.c_long(dir_fd),
            ctypes.c_char_p(os.fsencode(path)),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
        if fd >= 0:
            return fd
        code = ctypes.get_errno()
        if code not in (errno.ENOSYS, errno.EPERM):
            raise OSError(code, os.strerror(code))
        _openat2_missing = True  # an old kernel, or a seccomp filter that refuses it
    if resolve & _RESOLVE_NO_SYMLINKS and not path.startswith("/"):
        flags |= os.O_NOFOLLOW  # callers pass one name here: the last is the only one
    fd = os.open(path, flags, dir_fd=None if dir_fd == _AT_FDCWD else dir_fd)
    if resolve & _RESOLVE_NO_SYMLINKS and path.startswith("/") and _fd_path(fd) != path:
        os.close(fd)
        raise _error(errno.ELOOP)
    return fd
