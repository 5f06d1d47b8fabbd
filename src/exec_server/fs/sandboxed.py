"""The ``fs/*`` operations under a sandbox policy: the twins of :mod:`.operations` and the
handle opener, each taking the :class:`~exec_server.sandbox.policy.Policy` first.

Mutations go through :mod:`exec_server.sandbox.fs_guard`, which acts on the directory it
checked (no symlink, ``..``, ``/proc/self/root`` or hard-link escape). Reads of a file go
through a descriptor the guard opened; metadata, listings and canonical paths are checked
readable first (what a hidden path holds is never read; its existence may show through a
path swapped between the check and the call, as ``stat`` on a hidden path would). Blocking:
run on a worker thread.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from . import operations as ops
from .handles import HandleMode, regular_file

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
    _guard().check_readable(policy, path)
    return ops.get_metadata(path)


def read_directory(policy: Policy, path: str) -> list[ops.DirectoryEntry]:
    _guard().check_readable(policy, path)
    return ops.read_directory(path)


def remove(policy: Policy, path: str, recursive: bool, force: bool) -> None:
    _guard().remove(policy, path, recursive, force)


def copy(policy: Policy, source: str, destination: str, recursive: bool) -> None:
    _guard().copy(policy, source, destination, recursive)


def canonicalize(policy: Policy, path: str) -> str:
    _guard().check_readable(policy, path)
    return os.path.realpath(path, strict=True)


def open_regular_file(policy: Policy, path: str, mode: HandleMode) -> int:
    """A handle's descriptor: ``replace`` checked as a write, ``read`` as a read."""
    if mode == "replace":
        return regular_file(_guard().open_for_replace(policy, path), path)
    return regular_file(_guard().open_for_read(policy, path), path)
