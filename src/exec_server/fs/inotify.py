"""Linux inotify through libc (ctypes), read on the event loop: no thread, no polling.

One :class:`Inotify` is one kernel instance (one fd). Watches on the same inode share one
watch descriptor, so listeners are counted per descriptor and the kernel watch is removed
when the last one goes. Every watch uses the same event mask, so adding a listener never
narrows what an earlier one sees.

The kernel allows each user only a few instances (``fs.inotify.max_user_instances``, often
128), shared with every editor and build watcher of the account: the server takes one for
all its sessions (:func:`acquire`, :func:`release`), never one per session.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import functools
import logging
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

CHANGES = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
)
"""What every watch asks for: changes, never mere reads (opening or listing a directory)."""

_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len
_READ_SIZE = 64 * 1024

Listener = Callable[[int, str], None]
"""Called with the event mask and the name inside a watched directory ("" for the watched
path itself). ``IN_Q_OVERFLOW`` reaches every listener, as events may have been lost."""


@functools.cache
def _load_libc() -> ctypes.CDLL | None:
    """libc's inotify calls, loaded on first use. The process's own symbols include libc's
    (``ctypes.util.find_library`` would run ldconfig to find it by name)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    except (OSError, AttributeError):
        return None
    return libc


def available() -> bool:
    """Whether this platform's libc offers inotify."""
    return _load_libc() is not None


@dataclass(eq=False)
class Subscription:
    """One listener on one watch descriptor; :meth:`Inotify.unsubscribe` ends it."""

    wd: int
    listener: Listener


@dataclass(eq=False)
class _Watch:
    listeners: list[Subscription] = field(default_factory=list)


class Inotify:
    """An inotify instance whose events are dispatched to listeners on the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        _libc = _load_libc()
        if _libc is None:
            raise OSError(errno.ENOSYS, "inotify is not available")
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        self._fd = fd
        self._loop = loop
        self._watches: dict[int, _Watch] = {}
        loop.add_reader(fd, self._read)

    def subscribe(self, path: str, listener: Listener) -> Subscription:
        """Watch ``path`` (a file or a directory) for :data:`CHANGES`; OSError if the kernel
        refuses (missing path, no permission, out of watches)."""
        _libc = _load_libc()
        assert _libc is not None
        wd = _libc.inotify_add_watch(self._fd, os.fsencode(path), CHANGES)
        if wd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), path)
        subscription = Subscription(wd, listener)
        self._watches.setdefault(wd, _Watch()).listeners.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        watch = self._watches.get(subscription.wd)
        if watch is None or subscription not in watch.listeners:
            return
        watch.listeners.remove(subscription)
        if not watch.listeners:
            del self._watches[subscription.wd]
            _libc = _load_libc()
            assert _libc is not None
            _libc.inotify_rm_watch(self._fd, subscription.wd)  # EINVAL if the kernel dropped it

    def close(self) -> None:
        """Stop reading and release the instance (and with it every kernel watch)."""
        if self._fd < 0:
            return
        self._loop.remove_reader(self._fd)
        os.close(self._fd)
        self._fd = -1
        self._watches.clear()

    def _read(self) -> None:
        try:
            data = os.read(self._fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            log.exception("reading inotify events failed")
            return
        for wd, mask, name in _events(data):
            self._dispatch(wd, mask, name)

    def _dispatch(self, wd: int, mask: int, name: str) -> None:
        if mask & IN_Q_OVERFLOW:
            targets = [s for watch in self._watches.values() for s in watch.listeners]
        else:
            watch = self._watches.get(wd)
            targets = list(watch.listeners) if watch is not None else []
            if mask & IN_IGNORED:  # the kernel removed the watch (path deleted, unmounted)
                self._watches.pop(wd, None)
        for subscription in targets:
            subscription.listener(mask, name)


_shared: dict[asyncio.AbstractEventLoop, tuple[Inotify, int]] = {}


def acquire(loop: asyncio.AbstractEventLoop) -> Inotify:
    """The one instance every session on ``loop`` shares, made on first use; pair each call
    with :func:`release`. OSError if the kernel refuses one."""
    inotify, users = _shared.get(loop) or (None, 0)
    if inotify is None:
        inotify = Inotify(loop)
    _shared[loop] = (inotify, users + 1)
    return inotify


def release(inotify: Inotify) -> None:
    """One user of a shared instance is done (its subscriptions already ended); the last
    one closes it."""
    for loop, (held, users) in list(_shared.items()):
        if held is inotify:
            if users > 1:
                _shared[loop] = (held, users - 1)
            else:
                del _shared[loop]
                held.close()
            return


def _events(data: bytes) -> list[tuple[int, int, str]]:
    """Split a read into (wd, mask, name) events."""
    events = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        wd, mask, _cookie, length = _HEADER.unpack_from(data, offset)
        offset += _HEADER.size
        raw = data[offset : offset + length].split(b"\0", 1)[0]
        offset += length
        events.append((wd, mask, os.fsdecode(raw)))
    return events
