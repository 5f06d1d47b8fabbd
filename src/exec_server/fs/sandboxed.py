"""The ``fs/*`` operations under a sandbox policy: the twins of :mod:`.operations` and the
handle opener, each taking the :class:`~exec_server.sandbox.policy.Policy` first.

Every operation goes through :mod:`exec_server.sandbox.fs_guard`, which acts on what it
checked (no symlink, ``..``, ``/proc/self/root`` or hard-link escape): mutations on the
directory it opened, reads (contents, listings, metadata, canonical paths) through a
descriptor whose real location was checked readable, so a symlink swapped in between the
check and the read shows nothing of a hidden path. Blocking: run on a worker thread.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from . import operations as ops
from .handles import HandleMode, regular_file

_T = TypeVar("_T")

if TYPE_CHECKING:
    from types import ModuleType

    from ..sandbox.policy import Policy


def _guard() -> ModuleType:
    """The guard, imported on first use (sandboxed requests only)."""
    from ..sandbox import fs_guard

    return fs_guard


def read_file(policy: Policy, path: str, limit: int) -> bytes:
    return ops.read_open_file(_guard().open_for_read(policy, path), path, limit)


def write_file(policy: Policy, path: str, data: bytes) -> None:
    _guard().write_file(policy, path, data)


def create_directory(policy: Policy, path: str, recursive: bool) -> None:
    _guard().create_directory(policy, path, recursive)


def get_metadata(policy: Policy, path: str) -> ops.Metadata:
    reached = _guard().open_readable(policy, path)
    try:
        return ops.metadata_of(os.fstat(reached.fd), reached.via_symlink)
    finally:
        os.close(reached.fd)


def read_directory(policy: Policy, path: str) -> list[ops.DirectoryEntry]:
    reached = _guard().open_readable(policy, path)
    try:
        listing = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=reached.fd)
    except NotADirectoryError:  # named as the client named it, not as "."
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path) from None
    finally:
        os.close(reached.fd)
    try:
        return ops.read_directory(listing)
    finally:
        os.close(listing)


def remove(policy: Policy, path: str, recursive: bool, force: bool) -> None:
    _guard().remove(policy, path, recursive, force)


def copy(policy: Policy, source: str, destination: str, recursive: bool) -> None:
    _guard().copy(policy, source, destination, recursive)


def canonicalize(policy: Policy, path: str) -> str:
    reached = _guard().open_readable(policy, path)
    os.close(reached.fd)
    canonical: str = reached.path
    return canonical


class PolicyView:
    """The filesystem as ``policy`` lets it be seen, for ``fs/watchMissing``
    (:class:`~.watch.PathView`): a hidden path is absent whether or not it exists, and each
    path is looked at, and watched, through a descriptor whose real place was checked."""

    def __init__(self, policy: Policy) -> None:
        self._policy = policy

    def mode(self, path: str) -> int | None:
        try:
            reached = _guard().open_readable(self._policy, path)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.EACCES):
                return None
            raise
        try:
            return os.fstat(reached.fd).st_mode
        finally:
            os.close(reached.fd)

    def watch(self, path: str, add: Callable[[str], _T]) -> _T:
        reached = _guard().open_readable(self._policy, path)
        try:
            return add(f"/proc/self/fd/{reached.fd}")  # the checked inode, not the path
        finally:
            os.close(reached.fd)


def open_regular_file(policy: Policy, path: str, mode: HandleMode) -> int:
    """A handle's descriptor: ``replace`` checked as a write, ``read`` as a read."""
    if mode == "replace":
        return regular_file(_guard().open_for_replace(policy, path), path)
    return regular_file(_guard().open_for_read(policy, path), path)
