"""stdio transport: newline-delimited JSON on stdin/stdout, one connection per server process.

Blank lines are ignored. Nobody can come back over stdio, so EOF on stdin ends the session
at once: every child is killed and the server exits (Part A §A2). The transport owns an
:class:`~.outbox.Outbox` and an :class:`~.inbox.Inbox`, as the WebSocket one does.

Either end may be a pipe, a socket, a terminal, a regular file or a device such as
``/dev/null``. Pipes and sockets are driven by the event loop (written by a
:class:`~.pipe_writer.PipeWriter`); anything else is read by a worker thread and written
with plain blocking writes (a file or a terminal always takes what it is given; an event
loop cannot watch a regular file).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import sys
import threading
from collections.abc import Callable
from typing import BinaryIO

from ..connection import CLIENT_WENT_AWAY, Connection
from ..rpc import Malformed
from ..server import Server
from .inbox import Inbox
from .outbox import Outbox
from .pipe_writer import PipeWriter

FLUSH_TIMEOUT_S = 2.0
"""How long replies already written may take to reach a peer that has closed stdin."""

Line = bytes | Malformed


def _is_stream(fd: int) -> bool:
    """Whether the event loop can drive ``fd``: a pipe or a socket."""
    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


class StdioTransport:
    """The Connection's transport over stdin and stdout."""

    description = "exec-server stdio"
    resumable = False
    malformed_prefix = "failed to parse JSON-RPC message from exec-server stdio"

    def __init__(self, server: Server) -> None:
        self._loop = asyncio.get_running_loop()
        self._max_line = server.limits.max_message_bytes
        self.outbox = Outbox(self._write, server.limits.outbound_queue_bytes, self._on_room)
        self.inbox: Inbox[Line] = Inbox(
            self._deliver, self._has_room, self._pause_reading, self._resume_reading
        )
        self.connection = Connection(server, self)
        self.finished = asyncio.Event()
        self._buffer = bytearray()
        self._eof = False
        self._skipping = False
        self._writer: PipeWriter | None = None
        self._read_transport: asyncio.ReadTransport | None = None
        self._read_thread: _ReadThread | None = None
        self._write_fd = -1

    # ---- inbound ------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Split input into lines; each non-blank one goes to the connection, in order."""
        buffer = self._buffer
        buffer += data
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            if self._skipping:
                self._skipping = False  # the tail of a line already reported as too large
            elif end - start > self._max_line:
                self.inbox.hold(self._too_large())
            elif buffer[start:end].strip():
                self.inbox.hold(bytes(buffer[start:end]))
            start = end + 1
        del buffer[:start]
        if len(buffer) > self._max_line and not self._skipping:
            buffer.clear()
            self._skipping = True  # drop the rest of this line as it comes
            self.inbox.hold(self._too_large())
        elif self._skipping:
            buffer.clear()
        self._process()

    def _too_large(self) -> Malformed:
        return Malformed(f"message is larger than {self._max_line} bytes")

    def feed_eof(self) -> None:
        if self._buffer.strip() and not self._skipping:
            self.inbox.hold(bytes(self._buffer))
        self._buffer.clear()
        self._eof = True
        self._process()

    def _process(self) -> None:
        """Hand over what is held; replies leave together after. At EOF with nothing left
        held, the connection is over."""
        self.outbox.begin_batch()
        try:
            self.inbox.process()
        finally:
            self.outbox.end_batch()
        self._finish_at_eof()

    def _finish_at_eof(self) -> None:
        if self._eof and not self.inbox.holding:
            self.finish()

    def finish(self, reason: str = CLIENT_WENT_AWAY) -> None:
        self.connection.close(reason)
        self.finished.set()

    # ---- what Connection needs ----------------------------------------------------------

    def send(self, message: bytes) -> None:
        self.outbox.put((message, b"\n"), len(message))

    @property
    def writable(self) -> bool:
        return self.outbox.writable

    def abort(self) -> None:
        self.finish("a protocol violation")

    def resume_inbound(self) -> None:
        self._on_room()

    def shut_down(self, reason: str) -> None:
        self.finish(reason)  # stdio has no way to say why: the peer sees end of file

    # ---- outbox and inbox wiring --------------------------------------------------------

    def _write(self, pieces: list[bytes]) -> None:
        if self._writer is not None:
            self._writer.write(pieces)
        elif self._write_fd >= 0:
            try:
                _write_all(self._write_fd, b"".join(pieces))
            except OSError:  # stdout is gone (EPIPE, disk full): nobody can hear us
                self._write_fd = -1
                self.finish("stdout is gone")

    def _deliver(self, line: Line) -> bool:
        if self.connection.receive(line):
            return True
        self.abort()
        return False

    def _has_room(self) -> bool:
        if not self.connection.accepting:
            return False
        if not self.outbox.writable:
            self.outbox.flush()
        return self.outbox.writable

    def _on_room(self) -> None:
        self.inbox.resume()
        self._finish_at_eof()
        if self.outbox.writable:
            self.connection.on_writable()

    def _pause_reading(self) -> None:
        if self._read_transport is not None:
            self._read_transport.pause_reading()
        elif self._read_thread is not None:
            self._read_thread.pause()

    def _resume_reading(self) -> None:
        if self._eof:
            return
        if self._read_transport is not None:
            self._read_transport.resume_reading()
        elif self._read_thread is not None:
            self._read_thread.resume()

    # ---- wiring -------------------------------------------------------------------------

    async def open(self, stdin: BinaryIO, stdout: BinaryIO) -> None:
        loop = self._loop
        write_fd = os.dup(stdout.fileno())
        if _is_stream(write_fd):
            os.set_blocking(write_fd, False)
            outbox = self.outbox
            self._writer = PipeWriter(
                write_fd,
                outbox.high_water,
                outbox.pause_writing,
                outbox.resume_writing,
                self.finish,  # stdout is gone: nobody can hear us
            )
        else:
            os.set_blocking(write_fd, True)
            self._write_fd = write_fd
        read_fd = os.dup(stdin.fileno())
        if _is_stream(read_fd):
            read_file = os.fdopen(read_fd, "rb", buffering=0)
            read_transport, _ = await loop.connect_read_pipe(lambda: _ReadSide(self), read_file)
            self._read_transport = read_transport
        else:
            os.set_blocking(read_fd, True)
            self._read_thread = _ReadThread(read_fd, self)

    async def close(self) -> None:
        """Deliver what is queued (unless the reader of stdout is stuck), then close."""
        self.outbox.flush()
        if self._read_transport is not None:
            self._read_transport.close()
        if self._writer is not None:
            await self._writer.drain(FLUSH_TIMEOUT_S)
            self._writer.close()
        if self._write_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._write_fd)
            self._write_fd = -1


class _ReadThread:
    """Reads a file, a terminal or a device on a daemon thread (a blocked read must not keep
    the process from exiting) and hands each block to the loop. The next block is read only
    once the loop has taken the last and reading is not paused, so a large file of requests
    is read no faster than it is handled."""

    def __init__(self, fd: int, owner: StdioTransport) -> None:
        self._fd = fd
        self._owner = owner
        self._loop = asyncio.get_running_loop()
        self._paused = False
        self._may_read = threading.Event()
        self._may_read.set()
        threading.Thread(target=self._run, name="stdio-reader", daemon=True).start()

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        self._may_read.set()

    def _run(self) -> None:
        try:
            while True:
                self._may_read.wait()
                self._may_read.clear()
                data = self._read()
                if not data:
                    break
                self._hand_over(self._take, data)
        finally:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._hand_over(lambda _: self._owner.feed_eof(), b"")

    def _read(self) -> bytes:
        try:
            return os.read(self._fd, 65536)
        except OSError:  # EIO from a terminal that went away: the end of input
            return b""

    def _take(self, data: bytes) -> None:
        """On the loop: hand the block over, then let the thread read on unless paused."""
        self._owner.feed(data)
        if not self._paused:
            self._may_read.set()

    def _hand_over(self, callback: Callable[[bytes], None], data: bytes) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
            self._loop.call_soon_threadsafe(callback, data)


class _ReadSide(asyncio.Protocol):
    def __init__(self, owner: StdioTransport) -> None:
        self._owner = owner

    def data_received(self, data: bytes) -> None:
        self._owner.feed(data)

    def eof_received(self) -> bool:
        self._owner.feed_eof()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner.finish()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


async def serve_stdio(
    server: Server, stdin: BinaryIO | None = None, stdout: BinaryIO | None = None
) -> None:
    """Serve one connection over stdin/stdout until stdin ends (or stdout goes away)."""
    transport = StdioTransport(server)
    await transport.open(stdin or sys.stdin.buffer, stdout or sys.stdout.buffer)
    try:
        await transport.finished.wait()
    finally:
        # Replies already written are delivered before we go (`printf '<request>\n' |
        # exec-server --listen stdio` gets its answer), unless the reader of stdout is stuck.
        await transport.close()
