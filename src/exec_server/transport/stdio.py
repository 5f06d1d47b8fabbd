"""stdio transport: newline-delimited JSON on stdin/stdout, one connection per server process.

Blank lines are ignored. Nobody can come back over stdio, so EOF on stdin ends the session
at once: every child is killed and the server exits (Part A §A2).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from typing import BinaryIO

from ..connection import Connection, serve_connection
from ..rpc import Malformed
from ..server import Server


class StdioTransport:
    description = "exec-server stdio"
    malformed_prefix = "failed to parse JSON-RPC message from exec-server stdio"
    resumable = False

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    async def send(self, message: bytes) -> None:
        writer = self._writer
        if writer.is_closing():
            raise ConnectionError("stdout is closed")
        writer.write(message + b"\n")
        await writer.drain()

    def abort(self) -> None:
        self._writer.close()


async def _lines(reader: asyncio.StreamReader, limit: int) -> AsyncIterator[bytes | Malformed]:
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            line = exc.partial
            if line.strip():
                yield line
            return
        except asyncio.LimitOverrunError as exc:
            # A line over the message limit: skip it whole and report it as unparseable.
            await reader.readexactly(exc.consumed)
            await _skip_to_newline(reader)
            yield Malformed(f"message is larger than {limit} bytes")
            continue
        if line.strip():
            yield line


async def _skip_to_newline(reader: asyncio.StreamReader) -> None:
    while True:
        try:
            await reader.readuntil(b"\n")
            return
        except asyncio.LimitOverrunError as exc:
            await reader.readexactly(exc.consumed)
        except asyncio.IncompleteReadError:
            return


async def serve_stdio(
    server: Server, stdin: BinaryIO | None = None, stdout: BinaryIO | None = None
) -> None:
    """Serve one connection over the process's stdin/stdout until stdin ends."""
    loop = asyncio.get_running_loop()
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout.buffer
    reader = asyncio.StreamReader(limit=server.limits.max_message_bytes, loop=loop)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop), stdin)
    write_file = os.fdopen(os.dup(stdout.fileno()), "wb", buffering=0)
    transport, protocol = await loop.connect_write_pipe(
        lambda: asyncio.streams.FlowControlMixin(loop=loop), write_file
    )
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    connection = Connection(server, StdioTransport(writer))
    try:
        await serve_connection(connection, _lines(reader, server.limits.max_message_bytes))
    finally:
        transport.close()
