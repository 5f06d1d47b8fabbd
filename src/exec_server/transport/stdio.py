"""stdio transport: newline-delimited JSON on stdin/stdout, one connection per server process.

Blank lines are ignored. Nobody can come back over stdio, so EOF on stdin ends the session
at once: every child is killed and the server exits (Part A §A2). Outbound messages are
batched per event-loop turn, as over WebSocket.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from typing import BinaryIO

from ..connection import Connection
from ..rpc import Malformed
from ..server import Server
from .flow import FlowControl

FLUSH_TIMEOUT_S = 2.0
"""How long replies already written may take to reach a peer that has closed stdin."""


class StdioTransport(FlowControl["bytes | Malformed"]):
    """The Connection's transport over a pair of pipes (or a tty, or files)."""

    description = "exec-server stdio"
    resumable = False
    malformed_prefix = "failed to parse JSON-RPC message from exec-server stdio"

    def __init__(self, server: Server) -> None:
        super().__init__(server.limits.outbound_queue_bytes)
        self._max_line = server.limits.max_message_bytes
        self.connection = Connection(server, self)
        self.finished = asyncio.Event()
        self.write_closed = asyncio.Event()
        self._buffer = bytearray()
        self._eof = False
        self._skipping = False
        self._write_transport: asyncio.WriteTransport | None = None
        self._read_transport: asyncio.ReadTransport | None = None
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
                self._receive(self._too_large())
            elif buffer[start:end].strip():
                self._receive(bytes(buffer[start:end]))
            start = end + 1
        del buffer[:start]
        if len(buffer) > self._max_line and not self._skipping:
            buffer.clear()
            self._skipping = True  # drop the rest of this line as it comes
            self._receive(self._too_large())
        elif self._skipping:
            buffer.clear()
        self._handle_batch()

    def _too_large(self) -> Malformed:
        return Malformed(f"message is larger than {self._max_line} bytes")

    def feed_eof(self) -> None:
        if self._buffer.strip() and not self._skipping:
            self._receive(bytes(self._buffer))
        self._buffer.clear()
        self._eof = True
        self._process_inbound()

    def finish(self) -> None:
        self.connection.close()
        self.finished.set()

    def abort(self) -> None:
        self.finish()

    # ---- FlowControl hooks --------------------------------------------------------------

    def _connection(self) -> Connection:
        return self.connection

    def _framed(self, message: bytes) -> list[bytes] | None:
        return [message, b"\n"]

    def _write(self, pieces: list[bytes]) -> None:
        if self._write_transport is not None:
            if not self._write_transport.is_closing():
                self._write_transport.writelines(pieces)
        elif self._write_fd >= 0:
            _write_all(self._write_fd, b"".join(pieces))

    def _handle(self, item: bytes | Malformed) -> bool:
        if self.connection.receive(item):
            return True
        self.abort()
        return False

    def _inbound_done(self) -> None:
        if self._eof:
            self.finish()

    def _pause_reading(self) -> None:
        if self._read_transport is not None:
            self._read_transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._read_transport is not None and not self._eof:
            self._read_transport.resume_reading()

    # ---- wiring -------------------------------------------------------------------------

    async def open(self, stdin: BinaryIO, stdout: BinaryIO) -> None:
        loop = self._loop
        write_file = os.fdopen(os.dup(stdout.fileno()), "wb", buffering=0)
        try:
            transport, _ = await loop.connect_write_pipe(lambda: _WriteSide(self), write_file)
            transport.set_write_buffer_limits(high=self._high_water)
            self._write_transport = transport
        except ValueError:  # a regular file: plain blocking writes are fine there
            self._write_fd = write_file.fileno()
        read_file = os.fdopen(os.dup(stdin.fileno()), "rb", buffering=0)
        try:
            read_transport, _ = await loop.connect_read_pipe(lambda: _ReadSide(self), read_file)
            self._read_transport = read_transport
        except ValueError:  # a regular file: read it in a thread
            loop.create_task(self._read_file(read_file))

    async def _read_file(self, file: BinaryIO) -> None:
        while True:
            data = await asyncio.to_thread(file.read, 65536)
            if not data:
                self.feed_eof()
                return
            self.feed(data)

    @property
    def has_write_transport(self) -> bool:
        return self._write_transport is not None

    def close(self) -> None:
        self._flush()
        for transport in (self._read_transport, self._write_transport):
            if transport is not None:
                transport.close()


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


class _WriteSide(asyncio.Protocol):
    def __init__(self, owner: StdioTransport) -> None:
        self._owner = owner

    def pause_writing(self) -> None:
        self._owner.pause_writing()

    def resume_writing(self) -> None:
        self._owner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner.write_closed.set()
        self._owner.finish()  # stdout is gone: nobody can hear us


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
        transport.close()
    # Replies already written are delivered before we go (`printf '<request>\n' | exec-server
    # --listen stdio` gets its answer), unless the reader of stdout is stuck.
    if transport.has_write_transport:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(transport.write_closed.wait(), FLUSH_TIMEOUT_S)
