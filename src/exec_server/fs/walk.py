"""``fs/walk``: a bounded, breadth-first listing of a directory tree (codex 0.169).

What the reference does, probed on its binary (``tests/data/fs_walk_reference.json``):

- Breadth-first; each directory's children in bytewise order of their names (``B`` < ``a``),
  each child's ``file://`` URI joined to its directory's as the request wrote the root.
- Only files and directories are listed. A symlink is left out unless
  ``followDirectorySymlinks`` is set and it leads to a directory; it is then listed as a
  directory and walked, each real directory at most once (a loop back up is listed, not
  walked again). FIFOs, sockets and devices are left out; so are dangling symlinks.
- ``maxDepth`` 0 lists the root's children only; ``pruneHiddenDirectories`` lists a
  directory whose name starts with ``.`` but does not walk it.
- ``maxEntries`` counts every child looked at (left-out ones too); ``maxDirectories``
  counts the root. Reaching either sets ``truncated`` and the walk stops (entries) or walks
  no more directories (directories). So does an answer reaching 4 MiB (as estimated below).
- A directory that cannot be read becomes an ``errors`` item ``{path, message}`` and the
  walk goes on. A root that is missing is an error of the request; a root that is not a
  directory (or is a symlink not to be followed) walks to nothing.

Memory is bounded by the limits, whatever the tree holds: a directory is read a batch of
names at a time, and of its names at most one batch more than twice what the entry budget
can still take are kept (cut back to the smallest each time they pass that); at most
``maxDirectories`` directories wait in the queue. Blocking: run on a worker thread.
"""

from __future__ import annotations

import errno
import itertools
import operator
import os
import posixpath
import stat
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from ..errors import invalid_request
from ..paths import quote_path_bytes, to_file_uri

if TYPE_CHECKING:
    from ..sandbox.policy import Policy

MAX_DEPTH = 64
MAX_DIRECTORIES = 10_000
MAX_ENTRIES = 50_000
"""The largest limits the reference accepts (a larger one is -32600, naming all three)."""

MAX_RESPONSE_BYTES = 4 * 1024 * 1024
ITEM_OVERHEAD_BYTES = 64
"""The reference's answer budget: each entry costs its URI's length plus 64, each error its
URI's and message's lengths plus 64; an item that would pass 4 MiB ends the walk,
``truncated``."""

_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK | os.O_CLOEXEC
_BATCH = 4096
"""Names read from a directory before the ones that cannot be among the smallest are dropped."""
_KEY = operator.itemgetter(0)
_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()

WalkKind = Literal["file", "directory"]


@dataclass(frozen=True, slots=True)
class WalkOptions:
    """The request's limits and switches."""

    max_depth: int
    max_directories: int
    max_entries: int
    follow_directory_symlinks: bool
    prune_hidden_directories: bool


@dataclass(slots=True)
class WalkOutcome:
    """Entries ``(uri, kind)`` and errors ``(uri, message)`` in the order found."""

    entries: list[tuple[str, WalkKind]] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    truncated: bool = False
    _budget: int = MAX_RESPONSE_BYTES

    def add_entry(self, uri: str, kind: WalkKind) -> bool:
        """Add an entry if the answer has room; False (and ``truncated``) when it has not."""
        if not self._spend(len(uri)):
            return False
        self.entries.append((uri, kind))
        return True

    def add_error(self, uri: str, message: str) -> bool:
        """Add an error if the answer has room; False (and ``truncated``) when it has not."""
        if not self._spend(len(uri) + len(message)):
            return False
        self.errors.append((uri, message))
        return True

    def _spend(self, size: int) -> bool:
        cost = size + ITEM_OVERHEAD_BYTES
        if cost > self._budget:
            self.truncated = True
            return False
        self._budget -= cost
        return True


def check_limits(options: WalkOptions) -> None:
    """-32600 with the reference's texts for a zero or too large limit."""
    if options.max_directories == 0 or options.max_entries == 0:
        raise invalid_request("filesystem walk limits must be greater than zero")
    if (
        options.max_depth > MAX_DEPTH
        or options.max_directories > MAX_DIRECTORIES
        or options.max_entries > MAX_ENTRIES
    ):
        raise invalid_request(
            "filesystem walk limits exceed maximums: "
            f"depth={MAX_DEPTH}, directories={MAX_DIRECTORIES}, entries={MAX_ENTRIES}"
        )


def walk(root: str, options: WalkOptions) -> WalkOutcome:
    """Walk ``root`` (a normalised absolute path) without a sandbox."""
    return _Walk(options, _open_directory, _root_status).run(root)


def walk_under_policy(policy: Policy, root: str, options: WalkOptions) -> WalkOutcome:
    """Walk ``root`` reading only directories the policy lets be read: each is opened by
    :func:`~exec_server.sandbox.fs_guard.open_for_read` (every symlink hop checked, the
    check made on where the kernel says the directory is), so a hidden directory is an
    ``errors`` item and no symlink leads the walk anywhere the policy hides. A hidden
    directory's name and kind still show in its readable parent's listing, as in the
    reference."""
    from ..sandbox import fs_guard

    def root_status(path: str) -> tuple[os.stat_result, bool] | None:
        try:
            fs_guard.check_place_readable(policy, path)
        except PermissionError:
            return None
        status = _root_status(path)
        if status[1] and options.follow_directory_symlinks:
            try:  # the target, reached hop by hop, each checked
                os.close(fs_guard.open_readable(policy, path).fd)
            except PermissionError:
                return None
        return status

    walker = _Walk(options, lambda path: fs_guard.open_for_read(policy, path), root_status)
    return walker.run(root)


def _open_directory(path: str) -> int:
    return os.open(path, _DIRECTORY_FLAGS)


def _root_status(path: str) -> tuple[os.stat_result, bool]:
    """What ``path`` leads to, and whether it is a symlink itself."""
    return os.stat(path), stat.S_ISLNK(os.lstat(path).st_mode)


_Child = tuple[str, os.DirEntry[str]]
"""One name of a directory: its sort key (see :func:`_child`) and its directory entry (what
it is, looked up already)."""


class _Walk:
    """One walk: the queue of directories still to read and the outcome so far."""

    def __init__(
        self,
        options: WalkOptions,
        open_directory: Callable[[str], int],
        root_status: Callable[[str], tuple[os.stat_result, bool] | None],
    ) -> None:
        """``root_status``: what the root leads to and whether it is a symlink, or None when
        it is hidden (an ``errors`` item for it, whether or not it exists)."""
        self.options = options
        self.open_directory = open_directory
        self.root_status = root_status
        self.outcome = WalkOutcome()
        self.entries_seen = 0
        self.directories_taken = 1  # the root
        self.visited: set[tuple[int, int]] = set()

    def run(self, root: str) -> WalkOutcome:
        try:
            status = self.root_status(root)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror) from None  # the reference names no path
        if status is None:
            self.outcome.add_error(to_file_uri(root), _reason(errno.EACCES))
            return self.outcome
        followed, linked = status
        if not stat.S_ISDIR(followed.st_mode) or (
            linked and not self.options.follow_directory_symlinks
        ):
            return self.outcome
        self.visited.add((followed.st_dev, followed.st_ino))
        queue: deque[tuple[str, int]] = deque([(root, 0)])
        while queue:
            directory, depth = queue.popleft()
            if not self._walk_directory(directory, depth, queue):
                break
        return self.outcome

    def _walk_directory(self, directory: str, depth: int, queue: deque[tuple[str, int]]) -> bool:
        """List one directory into the outcome; False when the walk must stop."""
        options = self.options
        try:
            children = self._children(directory)
        except OSError as exc:
            return self.outcome.add_error(to_file_uri(directory), _reason(exc.errno))
        prefix = to_file_uri(directory)
        if not prefix.endswith("/"):
            prefix += "/"
        for _, entry in children:
            if self.entries_seen == options.max_entries:
                self.outcome.truncated = True
                return False
            self.entries_seen += 1
            name = entry.name
            raw = name.encode(_FS_ENCODING, _FS_ERRORS)
            if not name.isascii():  # bytes that are not UTF-8 are surrogate escapes in it
                name = raw.decode("utf-8", "replace")
            encoded = name.encode()
            if encoded != raw:  # not UTF-8: the reference looks the lossy name up, not there
                uri = prefix + quote_path_bytes(encoded)
                if not self.outcome.add_error(uri, _reason(errno.ENOENT)):
                    return False
                continue
            is_symlink, mode, identity = _what(entry)
            kind = _kind(mode)
            if kind is None or (
                is_symlink and (not options.follow_directory_symlinks or kind == "file")
            ):
                continue
            if not self.outcome.add_entry(prefix + quote_path_bytes(raw), kind):
                return False
            if kind == "directory" and depth < options.max_depth:
                path = posixpath.join(directory, name)
                if not self._enqueue(name, identity, path, depth + 1, queue):
                    return False
        return True

    def _enqueue(
        self,
        name: str,
        identity: tuple[int, int] | None,
        path: str,
        depth: int,
        queue: deque[tuple[str, int]],
    ) -> bool:
        """Queue a directory to walk, unless pruned, seen (when following symlinks) or over
        the directory budget; False when the walk must stop (the answer is full)."""
        if self.options.prune_hidden_directories and name.startswith("."):
            return True
        if self.options.follow_directory_symlinks:
            if identity is None:
                try:
                    status = os.stat(path)
                except OSError as exc:
                    return self.outcome.add_error(to_file_uri(path), _reason(exc.errno))
                identity = (status.st_dev, status.st_ino)
            if identity in self.visited:
                return True
            self.visited.add(identity)
        if self.directories_taken == self.options.max_directories:
            self.outcome.truncated = True
            return True
        self.directories_taken += 1
        queue.append((path, depth))
        return True

    def _children(self, directory: str) -> list[_Child]:
        """The directory's children that can still be looked at, in bytewise order: at most
        one more than the entry budget has left (that one shows the walk was cut short)."""
        fd = self.open_directory(directory)
        try:
            return _smallest(fd, self.options.max_entries - self.entries_seen + 1)
        finally:
            os.close(fd)


def _smallest(fd: int, room: int) -> list[_Child]:
    """The ``room`` smallest children of the open directory ``fd``, sorted. Read in
    batches: once ``room`` are known, a name above the largest of them is dropped on sight
    (a name as listed never sorts after its lossy key, so none that belongs is dropped);
    the kept ones are cut back to ``room`` whenever they pass ``2 * room``."""
    kept: list[_Child] = []
    bound: str | None = None
    with os.scandir(fd) as listing:
        while batch := list(itertools.islice(listing, _BATCH)):
            if bound is not None:
                batch = [entry for entry in batch if entry.name <= bound]
            kept.extend(filter(None, map(_child, batch)))
            if len(kept) >= 2 * room:
                kept.sort(key=_KEY)
                del kept[room:]
                bound = kept[-1][0]
    kept.sort(key=_KEY)
    del kept[room:]
    return kept


def _child(entry: os.DirEntry[str]) -> _Child | None:
    """One name of a directory, or None for a symlink that leads nowhere (left out, as the
    reference leaves it out) or a name gone before it could be looked up. What the entry is
    comes from the directory itself where the file system records it; only a symlink is
    followed (relative to the directory's fd). Either answer is kept in ``entry``.

    The sort key is one string whose code point order is the reference's order: the UTF-8
    bytes of the name it sees (lossy for bytes that are not UTF-8), then, for two names with
    the same lossy form, their bytes. An ASCII name is its own key; any other is its lossy
    form, a NUL (no name holds one, so a name sorts before those it is a prefix of) and its
    bytes read as Latin-1. A name as listed (surrogate escapes for bytes that are not UTF-8)
    never sorts after its key."""
    try:
        if entry.is_symlink():
            entry.stat()
    except OSError:
        return None
    name = entry.name
    if name.isascii():
        return name, entry
    raw = name.encode(_FS_ENCODING, _FS_ERRORS)
    return f"{raw.decode('utf-8', 'replace')}\0{raw.decode('latin-1')}", entry


def _what(entry: os.DirEntry[str]) -> tuple[bool, int, tuple[int, int] | None]:
    """Whether the entry is a symlink, the type bits of what it leads to and, for a
    symlink, the identity ``(st_dev, st_ino)`` of its target: from what :func:`_child`
    looked up, so nothing here touches the disk again."""
    if entry.is_symlink():
        status = entry.stat()
        return True, status.st_mode, (status.st_dev, status.st_ino)
    if entry.is_dir(follow_symlinks=False):
        return False, stat.S_IFDIR, None
    if entry.is_file(follow_symlinks=False):
        return False, stat.S_IFREG, None
    return False, 0, None  # FIFOs, sockets, devices: counted, not listed


def _kind(mode: int) -> WalkKind | None:
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISREG(mode):
        return "file"
    return None


def _reason(code: int | None) -> str:
    """The reference's text of an OS error: ``Permission denied (os error 13)``."""
    return f"{os.strerror(code or 0)} (os error {code})"
