"""Frames over a real socket after the handshake: ping, close, fragments, violations."""

from __future__ import annotations

import asyncio
import json
import struct

from exec_server.transport.wsframes import OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT

from .support import running_server, upgrade_request
from .test_wsframes import client_frame


class RawSocket:
    """A hand-driven WebSocket client: frames exactly as written here."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, url: str) -> RawSocket:
        host, port = url.removeprefix("ws://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(upgrade_request(host, port))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101")
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def frame(self) -> tuple[int, bytes]:
        first, second = await asyncio.wait_for(self.reader.readexactly(2), 10)
        length = second & 0x7F
        if length == 126:
            length = struct.unpack("!H", await self.reader.readexactly(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", await self.reader.readexactly(8))[0]
        assert not second & 0x80, "server frames are not masked"
        return first & 0x0F, await self.reader.readexactly(length)

    async def closed(self) -> bool:
        return await asyncio.wait_for(self.reader.read(), 10) == b""

    def close(self) -> None:
        self.writer.close()


INITIALIZE = json.dumps({"id": 1, "method": "initialize", "params": {"clientName": "raw"}})


async def test_ping_is_answered_with_the_same_payload() -> None:
    async with running_server() as (_, url):
        ws = await RawSocket.open(url)
        ws.send(client_frame(OP_PING, b"are you there"))
        assert await ws.frame() == (OP_PONG, b"are you there")
        ws.close()


async def test_fragmented_request_with_a_ping_inside_is_answered() -> None:
    async with running_server() as (_, url):
        ws = await RawSocket.open(url)
        half = len(INITIALIZE) // 2
        ws.send(client_frame(OP_TEXT, INITIALIZE[:half].encode(), fin=False))
        ws.send(client_frame(OP_PING, b"mid"))
        ws.send(client_frame(OP_CONT, INITIALIZE[half:].encode()))
        assert await ws.frame() == (OP_PONG, b"mid")
        opcode, payload = await ws.frame()
        assert opcode == OP_TEXT and "sessionId" in json.loads(payload)["result"]
        ws.close()


async def test_close_is_echoed_then_the_socket_closes() -> None:
    async with running_server() as (_, url):
        ws = await RawSocket.open(url)
        ws.send(client_frame(OP_CLOSE, struct.pack("!H", 1000)))
        assert await ws.frame() == (OP_CLOSE, struct.pack("!H", 1000))
        assert await ws.closed()


async def test_request_sent_with_the_handshake_is_not_lost() -> None:
    async with running_server() as (_, url):
        host, port = url.removeprefix("ws://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        # The first request travels in the same segment as the handshake.
        writer.write(upgrade_request(host, port) + client_frame(OP_TEXT, INITIALIZE.encode()))
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        ws = RawSocket(reader, writer)
        opcode, payload = await ws.frame()
        assert opcode == OP_TEXT and json.loads(payload)["id"] == 1
        ws.close()


async def test_an_unmasked_frame_closes_with_protocol_error() -> None:
    async with running_server() as (_, url):
        ws = await RawSocket.open(url)
        ws.send(client_frame(OP_TEXT, INITIALIZE.encode(), mask=False))
        assert await ws.frame() == (
            OP_CLOSE,
            struct.pack("!H", 1002) + b"client frames must be masked",
        )
        assert await ws.closed()
