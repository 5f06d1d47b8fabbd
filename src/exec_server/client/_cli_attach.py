"""``exec-server run`` and ``shell``: one remote process attached to this terminal.

Output streams out as it comes; input goes in as typed (or as the pipe gives it); Ctrl-C,
the window size, SIGTERM and SIGHUP go along. When the connection drops, a one-line notice
counts down the time left to resume it; typed input is kept and sent once it resumes;
``~.`` after a line end (as in ssh) or, while the connection is down, Ctrl-C leaves at
once. Whatever the ending, the terminal's modes are restored, input typed but not sent is
dropped (it never reaches the local shell), and exactly one final message is printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import stat
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ._cli_common import TRANSPORT_FAILED, Leave, complain
from .client import Client, State
from .errors import (
    ConnectionLost,
    ExecServerError,
    NotSupported,
    OutputGap,
    ProcessLost,
    StdinClosed,
)
from .process import Output, Process
from .terminal import ESCAPE_HELP, EscapeScanner, LocalInput, discard_typed, raw_mode, window_size

CTRL_C = 0x03
INPUT_QUEUE_CHUNKS = 16
"""Reads of stdin held while the process (or the connection) is slow to take them."""


@dataclass(frozen=True)
class Attachment:
    """How a process is attached: in a PTY or not, and whether our stdin goes to it."""

    tty: bool
    forward_stdin: bool

    @property
    def interactive(self) -> bool:
        """Keystrokes go to it one by one: a PTY fed from our terminal (raw mode)."""
        return self.tty and self.forward_stdin and os.isatty(0)


def default_shell(client: Client) -> list[str]:
    """The server's login shell as it reports it, else ``$SHELL`` there, else /bin/sh."""
    shell = (client.environment_info or {}).get("shell")
    if isinstance(shell, dict) and isinstance(shell.get("path"), str):
        return [shell["path"]]
    return ["/bin/sh", "-c", 'exec "${SHELL:-/bin/sh}"']


def exit_code(code: int) -> int:
    """A remote code as ours: 0..255 as is; the 0.128 reference's -1 (signal death) as 255."""
    return code if 0 <= code <= 255 else 255


async def attach(
    client: Client,
    argv: list[str],
    how: Attachment,
    *,
    command: str,
    cwd: str | None,
    env: dict[str, str],
    timeout: float | None = None,
    network_proxy: dict[str, Any] | None = None,
) -> int:
    """Start ``argv`` and connect our stdin, stdout and stderr to it until it closes;
    returns its exit code. Raises :class:`Leave` when it ends otherwise (124: ``timeout``
    seconds passed and it was killed; 255: ``~.``, or Ctrl-C while reconnecting)."""
    env = dict(env)
    if how.tty and "TERM" in os.environ:
        env.setdefault("TERM", os.environ["TERM"])
    stdin = _LocalStdin(how.forward_stdin)
    piped = how.forward_stdin and not how.tty and not os.isatty(0)
    if piped and not client.supports("closeStdin"):
        await stdin.measure()  # this server cannot close stdin: announce its size instead
    size = window_size(1) or window_size(0) if how.tty else None
    process = await client.start(
        argv,
        cwd=cwd,
        env=env,
        tty=how.tty,
        stdin=how.forward_stdin,
        stdin_size=stdin.size,
        size=size,
        network_proxy=network_proxy,
    )
    session = _Session(client, process, command, how)
    try:
        with raw_mode(0) if how.interactive else contextlib.nullcontext():
            return await session.follow(stdin, timeout)
    finally:
        if how.interactive:
            discard_typed(0)


class _LocalStdin:
    """Our stdin as the remote process gets it: streamed as it comes, or, for a server that
    cannot close stdin, with its size known before the start (a file's remaining size, or
    a pipe read to its end first)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.size: int | None = None
        self._preloaded: bytes | None = None

    async def measure(self) -> None:
        self.size = _remaining_file_bytes(0)
        if self.size is None:
            local, pieces = LocalInput(0), []
            while piece := await local.read():
                pieces.append(piece)
            self._preloaded = b"".join(pieces)
            self.size = len(self._preloaded)

    async def chunks(self) -> AsyncIterator[bytes]:
        if self._preloaded is not None:
            yield self._preloaded
            return
        local, left = LocalInput(0), self.size
        while (left is None or left > 0) and (data := await local.read()):
            data = data if left is None else data[:left]
            left = None if left is None else left - len(data)
            yield data


def _remaining_file_bytes(fd: int) -> int | None:
    """Bytes from the current offset to the end, if ``fd`` is a regular file."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        return None
    return max(info.st_size - os.lseek(fd, 0, os.SEEK_CUR), 0)


class _RetryNotice:
    """The line that says the connection is down, counting down the seconds left; on a
    terminal it is rewritten in place each second and erased when the connection is back."""

    def __init__(self, client: Client, command: str, raw: bool) -> None:
        self.client = client
        self.command = command
        self.newline = "\r\n" if raw else "\n"
        self.in_place = os.isatty(2)
        self.task: asyncio.Task[None] | None = None
        self.shown = False

    def changed(self, state: State, reason: str) -> None:
        if state is State.RECONNECTING and self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._count_down(reason))
        elif state is not State.RECONNECTING:
            self.clear(resumed=state is State.OPEN)

    async def _count_down(self, reason: str) -> None:
        if self.in_place:
            self._write(self.newline)  # off the line the program was writing
        while True:
            self._write(self._line(reason))
            self.shown = True
            if not self.in_place:
                self._write(self.newline)
                return
            await asyncio.sleep(1.0)

    def _line(self, reason: str) -> str:
        deadline = self.client.reconnect_deadline
        left = 0.0 if deadline is None else deadline - asyncio.get_running_loop().time()
        erase = "\r\x1b[K" if self.in_place else ""
        return (
            f"{erase}[exec-server {self.command}: connection lost ({reason}); reconnecting, "
            f"{max(math.ceil(left), 0)} s left; ~. or Ctrl-C leaves]"
        )

    def clear(self, *, resumed: bool = False) -> None:
        """Stop counting; erase the line on a terminal (else say it resumed, if it did)."""
        if self.task is not None:
            self.task.cancel()
            self.task = None
        if not self.shown:
            return
        self.shown = False
        if self.in_place:
            self._write("\r\x1b[K")
        elif resumed:
            self._write(f"[exec-server {self.command}: reconnected]{self.newline}")

    @staticmethod
    def _write(text: str) -> None:
        sys.stderr.write(text)
        sys.stderr.flush()


class _Session:
    """One remote process attached to this terminal: output out, input in, signals over."""

    def __init__(self, client: Client, process: Process, command: str, how: Attachment) -> None:
        self.client = client
        self.process = process
        self.command = command
        self.how = how
        self.raw = how.interactive
        self.loop = asyncio.get_running_loop()
        self.tasks: set[asyncio.Task[None]] = set()
        self.interrupts = 0
        self.leaving: Leave | None = None
        self.notice = _RetryNotice(client, command, self.raw)
        self.main: asyncio.Task[Any] | None = None

    async def follow(self, stdin: _LocalStdin, timeout: float | None) -> int:
        self.main = asyncio.current_task()
        handlers = {
            signal.SIGINT: self._interrupt,
            signal.SIGWINCH: self._resized,
            signal.SIGTERM: lambda: self._leave(Leave(128 + signal.SIGTERM)),
            signal.SIGHUP: lambda: self._leave(Leave(128 + signal.SIGHUP)),
        }
        for signum, handler in handlers.items():
            self.loop.add_signal_handler(signum, handler)
        stop_listening = self.client.on_state_change(self.notice.changed)
        if stdin.enabled and stdin.size != 0:
            queue: asyncio.Queue[bytes | None] = asyncio.Queue(INPUT_QUEUE_CHUNKS)
            self._spawn(self._read_stdin(stdin, queue))
            self._spawn(self._write_stdin(queue, closes=stdin.size is None))
        try:
            async with asyncio.timeout(timeout) as deadline:
                await self._print_output()
        except TimeoutError:
            if not deadline.expired():
                raise
            with contextlib.suppress(ExecServerError):
                await self.process.terminate()
            raise Leave(124, f"the command did not finish within {timeout:g} s") from None
        except asyncio.CancelledError:
            if self.leaving is None:
                raise
            raise self.leaving from None
        except ConnectionLost:
            if self.leaving is not None:  # closed by us while reconnecting
                raise self.leaving from None
            raise
        finally:
            stop_listening()
            self.notice.clear()
            for signum in handlers:
                self.loop.remove_signal_handler(signum)
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
        return exit_code(self.process.returncode if self.process.returncode is not None else 255)

    def _leave(self, leave: Leave) -> None:
        if self.leaving is None and self.main is not None:
            self.leaving = leave
            self.main.cancel()

    def _leave_reconnecting(self, how: str) -> None:
        self._leave(
            Leave(
                TRANSPORT_FAILED,
                f"gave up reconnecting ({how}): the connection to the server was lost",
            )
        )

    async def _print_output(self) -> None:
        out, err = sys.stdout.buffer, sys.stderr.buffer
        while True:
            try:
                async for event in self.process.events():
                    if isinstance(event, Output):
                        stream = err if event.stream == "stderr" else out
                        stream.write(event.data)
                        stream.flush()
                return
            except OutputGap as gap:  # say so, then go on with what follows
                out.flush()
                err.write(f"\r\n[exec-server {self.command}: {gap}]\r\n".encode())
                err.flush()

    async def _read_stdin(self, stdin: _LocalStdin, queue: asyncio.Queue[bytes | None]) -> None:
        """Read our stdin as it comes, whatever the connection does, watching typed input
        for ``~.`` and (while reconnecting) Ctrl-C."""
        escapes = EscapeScanner(self._escape_help) if os.isatty(0) else None
        async for data in stdin.chunks():
            if escapes is not None:
                data, leave = escapes.feed(data)
                if leave:
                    self._leave(Leave(TRANSPORT_FAILED, "connection closed (~.)"))
                    return
            if self.raw and CTRL_C in data and self.client.state is State.RECONNECTING:
                self._leave_reconnecting("Ctrl-C")
                return
            if data:
                await queue.put(data)
        await queue.put(None)

    def _escape_help(self) -> None:
        sys.stderr.write(f"[{ESCAPE_HELP}]{chr(13) if self.raw else ''}\n")
        sys.stderr.flush()

    async def _write_stdin(self, queue: asyncio.Queue[bytes | None], closes: bool) -> None:
        """Send what was read, in order, joining what piled up while a write was waiting."""
        try:
            ended = False
            while not ended and (data := await queue.get()) is not None:
                pieces = [data]
                while not queue.empty():
                    more = queue.get_nowait()
                    if more is None:
                        ended = True
                        break
                    pieces.append(more)
                await self.process.write(b"".join(pieces))
            if closes:
                await self.process.close_stdin()
        except NotSupported as exc:
            complain(self.command, f"warning: {exc}", self.raw)
        except (StdinClosed, ProcessLost, ConnectionLost):
            pass  # the remote side stopped reading, or the connection is gone for good

    def _spawn(self, coroutine: Any) -> None:
        task: asyncio.Task[None] = self.loop.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if task.cancelled() or self.client.state is State.CLOSED:
            return  # once the connection is gone, the main task says so, once
        if isinstance(task.exception(), ExecServerError):
            complain(self.command, f"warning: {task.exception()}", self.raw)

    def _interrupt(self) -> None:
        """Ctrl-C (outside raw mode): interrupt the remote process; a second one kills it.
        While the connection is down it leaves."""
        if self.client.state is State.RECONNECTING:
            self._leave_reconnecting("Ctrl-C")
            return
        self.interrupts += 1
        self._spawn(self._send_interrupt(self.interrupts > 1))

    async def _send_interrupt(self, kill: bool) -> None:
        if not kill:
            try:
                await self.process.signal("INT")
                return
            except NotSupported:
                pass
        await self.process.terminate()

    def _resized(self) -> None:
        size = window_size(1) or window_size(0)
        if size is not None and self.process.tty and self.client.supports("resize"):
            self._spawn(self.process.resize(*size))
