"""Open files of one session, for moving large files in bounded blocks (Part B §14.2).

A session holds at most ``limit`` handles, named by the client (at most 32 bytes, as in the
reference). ``read`` handles only read; ``replace`` handles truncate the file when opened and
only write. Reads and writes are positional (``pread``/``pwrite``) so concurrent requests on
one handle never race over a shared file offset. An I/O error on a transfer drops the handle,
as in the reference; closing an unknown handle succeeds, as in the reference.

Across sessions, a :class:`HandleBudget` bounds the handles of the whole server below its
descriptor limit, so a few sessions of one client cannot take every descriptor: past the
server's bound a session may still open its first :data:`GUARANTEED_PER_SESSION` handles
(so another client still gets some), but no more.

The table is a session resource (:mod:`exec_server.resources`): when the session ends every
descriptor is closed. A descriptor still in use by a block transfer on a worker thread is
closed when that transfer finishes, never under it (a reused descriptor number would
otherwise receive someone else's bytes); it counts against the :class:`HandleBudget` until
then, so the server-wide bound holds for descriptors, not only for names.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from typing import Literal

from ..errors import internal_error, invalid_request, not_found, os_error_message

HandleMode = Literal["read", "replace"]

MAX_HANDLE_ID_BYTES = 32
"""The reference refuses longer handle ids (``file handle ID must not exceed 32 bytes``)."""

_OPEN_FLAGS: dict[HandleMode, int] = {
    # O_NONBLOCK: opening a FIFO or device never parks a worker thread; no effect on files.
    "read": os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC,
    "replace": os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK | os.O_CLOEXEC,
}


def open_regular_file(path: str, mode: HandleMode) -> int:
    """Open ``path`` for a handle (blocking; call on a worker thread) and return the fd.

    Raises ``OSError`` as the OS reports it, or -32600 when the path is not a regular file.
    """
    return regular_file(os.open(path, _OPEN_FLAGS[mode], 0o666), path)


def regular_file(fd: int, path: str) -> int:
    """``fd`` if it is a regular file; otherwise it is closed and -32600 raised."""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise invalid_request(f"path `{path}` is not a file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_block(fd: int, offset: int, length: int) -> bytes:
    """Up to ``length`` bytes at ``offset`` (blocking)."""
    return os.pread(fd, length, offset)


def write_block(fd: int, offset: int, data: bytes) -> None:
    """All of ``data`` at ``offset`` (blocking); short writes are continued."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        offset += written
        view = view[written:]


GUARANTEED_PER_SESSION = 4
"""Handles every session may open even when the server-wide bound is reached (bounded in
turn by the number of sessions)."""


class HandleBudget:
    """The handles of every session of one server, counted against ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self, held_by_session: int) -> None:
        """Count one more handle, or -32600 when the server is at its bound and the session
        already holds its guaranteed few."""
        with self._lock:
            if self.used >= self.limit and held_by_session >= GUARANTEED_PER_SESSION:
                raise invalid_request(
                    f"the server holds {self.used} file handles, its bound; "
                    "close some with fs/close first"
                )
            self.used += 1

    def give_back(self, count: int = 1) -> None:
        """``count`` descriptors counted by :meth:`take` are closed."""
        with self._lock:
            self.used -= count


class FileHandle:
    """One open descriptor and the transfers currently using it."""

    __slots__ = ("_closing", "_users", "fd", "handle_id", "mode")

    def __init__(self, handle_id: str, fd: int, mode: HandleMode) -> None:
        self.handle_id = handle_id
        self.fd = fd
        self.mode = mode
        self._users = 0
        self._closing = False


class HandleTable:
    """The handles of one session; see the module docstring.

    Methods are called on the event loop, except :meth:`finish_use`, which block transfers
    call from their worker thread; a lock keeps the use counts honest across both.
    """

    def __init__(self, limit: int, budget: HandleBudget | None = None) -> None:
        """``limit``: handles of this session; ``budget``: the server's, shared."""
        self.limit = limit
        self._budget = budget or HandleBudget(limit)
        self._handles: dict[str, FileHandle | None] = {}  # None: being opened
        self._lock = threading.Lock()
        self._ended = False

    def __len__(self) -> int:
        return len(self._handles)

    def reserve(self, handle_id: str) -> None:
        """Claim ``handle_id`` before the file is opened, or -32600 saying why not."""
        if len(handle_id.encode()) > MAX_HANDLE_ID_BYTES:
            raise invalid_request(f"file handle ID must not exceed {MAX_HANDLE_ID_BYTES} bytes")
        with self._lock:
            if self._ended:
                raise invalid_request("the session has ended")
            if handle_id in self._handles:
                raise invalid_request(f"file handle `{handle_id}` already exists")
            if len(self._handles) >= self.limit:
                raise invalid_request(
                    f"at most {self.limit} file handles may be open per session; "
                    "close one with fs/close first"
                )
            self._budget.take(len(self._handles))
            self._handles[handle_id] = None

    def install(self, handle_id: str, fd: int, mode: HandleMode) -> None:
        """The reserved id now names ``fd`` (closed at once if the session ended meanwhile)."""
        with self._lock:
            reserved = self._handles.get(handle_id, False) is None
            if reserved and not self._ended:
                self._handles[handle_id] = FileHandle(handle_id, fd, mode)
                return
            if reserved:  # kept by release() so its count lasts until this close
                del self._handles[handle_id]
        os.close(fd)
        if reserved:
            self._budget.give_back()

    def unreserve(self, handle_id: str) -> None:
        """Opening failed: forget the reservation."""
        with self._lock:
            if self._handles.get(handle_id, False) is None:
                del self._handles[handle_id]
                self._budget.give_back()

    def begin_use(self, handle_id: str) -> FileHandle:
        """The handle for one block transfer (pair with :meth:`finish_use`), or -32004."""
        with self._lock:
            handle = self._handles.get(handle_id)
            if handle is None:
                raise not_found(f"unknown file handle `{handle_id}`")
            handle._users += 1
            return handle

    def finish_use(self, handle: FileHandle) -> None:
        """One transfer is over; close the descriptor if the handle was closed meanwhile."""
        with self._lock:
            handle._users -= 1
            close_now = handle._closing and handle._users == 0
        if close_now:
            self._close_counted(handle.fd)

    def discard(self, handle: FileHandle) -> None:
        """A transfer on ``handle`` failed: drop it, as the reference does after an I/O error
        (later calls get -32004). Its descriptor closes when the last transfer finishes."""
        with self._lock:
            if self._handles.get(handle.handle_id) is handle:
                del self._handles[handle.handle_id]
            handle._closing = True

    def close(self, handle_id: str) -> None:
        """Forget ``handle_id`` and close its descriptor (now, or after transfers in flight).

        Closing an unknown or already closed handle succeeds, as in the reference.
        """
        with self._lock:
            handle = self._handles.get(handle_id)
            if handle is None:
                return  # unknown, or still being opened: that open's install closes nothing
            del self._handles[handle_id]
            handle._closing = True
            close_now = handle._users == 0
        if close_now:
            try:
                os.close(handle.fd)
            except OSError as exc:  # e.g. EIO: a write the kernel could not complete
                raise internal_error(os_error_message(exc)) from None
            finally:  # closed either way (Linux frees the descriptor even on EIO)
                self._budget.give_back()

    def release(self) -> None:
        """The session ended: close every handle (in-flight transfers close theirs after;
        opens in flight close theirs in :meth:`install` or :meth:`unreserve`)."""
        with self._lock:
            self._ended = True
            handles = [h for h in self._handles.values() if h is not None]
            self._handles = {key: h for key, h in self._handles.items() if h is None}
            idle = []
            for handle in handles:
                handle._closing = True
                if handle._users == 0:
                    idle.append(handle)
        for handle in idle:
            self._close_counted(handle.fd)

    def _close_counted(self, fd: int) -> None:
        """Close ``fd``, which nobody is left to hear about an error of, and uncount it."""
        with contextlib.suppress(OSError):
            os.close(fd)
        self._budget.give_back()
