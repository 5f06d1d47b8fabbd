"""The local terminal, for ``exec-server shell`` and ``exec-server run --tty``: raw mode
that is always undone, the window size, and reading stdin without blocking the loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import termios
import tty
from collections.abc import Callable, Iterator

READ_BYTES = 64 * 1024


@contextlib.contextmanager
def raw_mode(fd: int) -> Iterator[None]:
    """Keystrokes go to the program unchanged (Ctrl-C, Ctrl-D, arrows...) until the block
    ends, however it ends; then the terminal's modes are exactly as they were."""
    saved = termios.tcgetattr(fd)
    tty.setraw(fd, termios.TCSANOW)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def window_size(fd: int) -> tuple[int, int] | None:
    """``(rows, cols)`` of the terminal on ``fd``, or None if it is not one."""
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return None
    return size.lines, size.columns


def is_null_device(fd: int) -> bool:
    """Whether ``fd`` is /dev/null or closed: no input will ever come from it."""
    try:
        mode = os.fstat(fd)
    except OSError:
        return True
    null = os.stat(os.devnull)
    return stat.S_ISCHR(mode.st_mode) and mode.st_rdev == null.st_rdev


class LocalInput:
    """Reads a local fd as data comes: through the event loop for terminals, pipes and
    sockets, on a worker thread for regular files (which epoll cannot watch)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._loop = asyncio.get_running_loop()
        self._pollable = not stat.S_ISREG(os.fstat(fd).st_mode)

    async def read(self) -> bytes:
        """The next bytes; ``b""`` at end of file."""
        if not self._pollable:
            return await self._loop.run_in_executor(None, os.read, self._fd, READ_BYTES)
        while True:
            ready: asyncio.Future[None] = self._loop.create_future()
            self._loop.add_reader(self._fd, _settle, ready)
            try:
                await ready
            finally:
                self._loop.remove_reader(self._fd)
            try:
                return os.read(self._fd, READ_BYTES)
            except BlockingIOError:
                continue
            except OSError:  # EIO: the terminal went away
                return b""


ESCAPE_CHAR = ord("~")
LEAVE_CHAR = ord(".")
HELP_CHAR = ord("?")
_LINE_ENDS = (ord("\r"), ord("\n"))
ESCAPE_HELP = "escapes, after Enter: ~. leave; ~? this help; ~~ type one ~"


class EscapeScanner:
    """Finds ssh's escapes in typed input: ``~.`` right after a line end (or as the first
    thing typed) means leave; ``~?`` there calls ``on_help``; ``~~`` sends one ``~``; ``~``
    before anything else is sent as typed. A ``~`` that ends one read waits for the next."""

    def __init__(self, on_help: Callable[[], None] = lambda: None) -> None:
        self._line_start = True
        self._held = False  # a `~` at a line start, not yet sent
        self._on_help = on_help

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """The bytes to send on, and whether ``~.`` was typed (the bytes before it only)."""
        out = bytearray()
        for byte in data:
            if self._held:
                self._held = False
                if byte == LEAVE_CHAR:
                    return bytes(out), True
                if byte == HELP_CHAR:
                    self._on_help()
                    continue  # still at a line start
                out.append(ESCAPE_CHAR)
                if byte == ESCAPE_CHAR:
                    self._line_start = False
                    continue
            elif self._line_start and byte == ESCAPE_CHAR:
                self._held = True
                continue
            out.append(byte)
            self._line_start = byte in _LINE_ENDS
        return bytes(out), False


def discard_typed(fd: int) -> None:
    """Drop input typed at the terminal but not yet read, so that it does not reach the
    local shell once we exit."""
    with contextlib.suppress(OSError):
        termios.tcflush(fd, termios.TCIFLUSH)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
