"""A minimal WebSocket client (RFC 6455) on an asyncio Protocol, for loopback benchmarking.

Why not the ``websockets`` library: its pure-Python frame parser costs ~25 µs per message,
about half the client's CPU when a server streams 8 KiB output chunks, and on a 2-core machine
that CPU is taken from the server under test. Here complete frames are parsed straight out of
each ``data_received`` buffer and handed to the client synchronously. No extensions (so no
permessage-deflate), no size limit, pings answered, text frames sent (masked, as required).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
from collections.abc import Callable
from typing import cast
from urllib.parse import urlsplit

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_OP_CONT, _OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG = 0, 1, 2, 8, 9, 10


class HandshakeError(Exception):
    pass


def _frame(opcode: int, payload: bytes) -> bytes:
    """A FIN frame from client to server, masked with a random key."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    key = os.urandom(4)
    if n:
        mask = int.from_bytes(key * ((n + 3) // 4), "big") >> (8 * (-n % 4))
        payload = (int.from_bytes(payload, "big") ^ mask).to_bytes(n, "big")
    return header + key + payload


def _frame_len(buf: bytes | bytearray) -> int | None:
    """Total length of the frame starting ``buf``, or None while its header is incomplete."""
    if len(buf) < 2:
        return None
    n = buf[1] & 0x7F
    head = 2 + (4 if buf[1] & 0x80 else 0)
    if n == 126:
        head += 2
        if len(buf) < 4:
            return None
        n = int.from_bytes(buf[2:4], "big")
    elif n == 127:
        head += 8
        if len(buf) < 10:
            return None
        n = int.from_bytes(buf[2:10], "big")
    return head + n


class _WsProtocol(asyncio.Protocol):
    def __init__(
        self,
        on_message: Callable[[memoryview], None],
        on_lost: Callable[[BaseException | None], None],
        request: bytes,
        key: bytes,
    ) -> None:
        self._on_message = on_message
        self._on_lost = on_lost
        self._request = request
        self._accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        self._transport: asyncio.Transport | None = None
        self._pending = bytearray()
        self._fragments: list[bytes] = []
        self._open = False
        self.handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(exc or HandshakeError("connection closed in handshake"))
        self._open = False
        self._on_lost(exc)

    def send(self, opcode: int, payload: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(_frame(opcode, payload))

    def data_received(self, data: bytes) -> None:
        if not self._open:
            data = self._handshake_data(data)
            if not data:
                return
        try:
            self._feed(memoryview(data))
        except Exception as exc:  # a message the client cannot handle: the run is void
            self._pending.clear()
            assert self._transport is not None
            self._transport.abort()
            self._on_lost(exc)

    def _handshake_data(self, data: bytes) -> bytes:
        """Collect the HTTP response; return the bytes after it once the socket is open."""
        self._pending += data
        end = self._pending.find(b"\r\n\r\n")
        if end < 0:
            return b""
        head, rest = bytes(self._pending[:end]), bytes(self._pending[end + 4 :])
        self._pending.clear()
        if not self._check_handshake(head):
            return b""
        self._open = True
        return rest

    def _feed(self, data: memoryview) -> None:
        """Parse frames without copying ``data``; only a frame split across reads is copied."""
        pos = 0
        pending = self._pending
        if pending:
            size = len(data)
            total = _frame_len(pending)
            while pos < size and (total is None or len(pending) < total):
                if total is None:  # the header itself is incomplete: at most 14 bytes
                    pending.append(data[pos])
                    pos += 1
                    total = _frame_len(pending)
                else:
                    take = min(total - len(pending), size - pos)
                    pending += data[pos : pos + take]
                    pos += take
            if total is None or len(pending) < total:
                return
            self._parse(memoryview(bytes(pending)))
            pending.clear()
        rest = self._parse(data[pos:])
        if rest:
            pending += rest

    def _check_handshake(self, head: bytes) -> bool:
        lines = head.split(b"\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if b" 101 " not in lines[0] + b" " or headers.get(b"sec-websocket-accept") != self._accept:
            err = HandshakeError(f"handshake refused: {lines[0].decode(errors='replace')}")
            self.handshake.set_exception(err)
            assert self._transport is not None
            self._transport.close()
            return False
        self.handshake.set_result(None)
        return True

    def _parse(self, buf: memoryview) -> memoryview:
        """Consume every complete frame in ``buf``; return the incomplete rest."""
        pos = 0
        size = len(buf)
        on_message = self._on_message
        while size - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            n = b1 & 0x7F
            head = 2
            if n == 126:
                if size - pos < 4:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 4
            elif n == 127:
                if size - pos < 10:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            if b1 & 0x80:  # a server must not mask; unmask anyway
                head += 4
            end = pos + head + n
            if end > size:
                break
            payload = buf[pos + head : end]
            if b1 & 0x80:
                key = bytes(buf[end - n - 4 : end - n])
                mask = int.from_bytes(key * ((n + 3) // 4), "big") >> (8 * (-n % 4))
                payload = memoryview((int.from_bytes(payload, "big") ^ mask).to_bytes(n, "big"))
            pos = end
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            if opcode in (_OP_TEXT, _OP_BINARY) and fin:
                on_message(payload)
            elif opcode in (_OP_TEXT, _OP_BINARY, _OP_CONT):
                self._fragments.append(bytes(payload))
                if fin:
                    whole = b"".join(self._fragments)
                    self._fragments.clear()
                    on_message(memoryview(whole))
            elif opcode == _OP_PING:
                self.send(_OP_PONG, bytes(payload))
            elif opcode == _OP_CLOSE:
                self.send(_OP_CLOSE, bytes(payload[:2]))
                assert self._transport is not None
                self._transport.close()
                return buf[:0]
        return buf[pos:]


class WsConnection:
    """An open WebSocket: :meth:`send` text messages; incoming ones go to ``on_message``."""

    def __init__(self, transport: asyncio.Transport, protocol: _WsProtocol) -> None:
        self._transport = transport
        self._protocol = protocol

    def send(self, message: bytes) -> None:
        self._protocol.send(_OP_TEXT, message)

    def send_binary(self, message: bytes) -> None:
        """A binary frame: the protocol parses it as UTF-8 JSON too, but the WebSocket layer
        does not check it is UTF-8 (in a text frame, invalid UTF-8 may end the connection)."""
        self._protocol.send(_OP_BINARY, message)

    def pause_reading(self) -> None:
        """Stop taking bytes from the socket: the kernel buffers fill, then the server's."""
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    async def close(self) -> None:
        self._protocol.send(_OP_CLOSE, struct.pack("!H", 1000))
        self._transport.close()


async def ws_connect(
    url: str,
    on_message: Callable[[memoryview], None],
    on_lost: Callable[[BaseException | None], None],
    timeout: float = 10.0,
) -> WsConnection:
    parts = urlsplit(url)
    if parts.scheme != "ws" or parts.hostname is None or parts.port is None:
        raise HandshakeError(f"not a ws://host:port URL: {url}")
    key = base64.b64encode(os.urandom(16))
    host = f"{parts.hostname}:{parts.port}"
    request = (
        f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    transport, protocol = await asyncio.wait_for(
        loop.create_connection(
            lambda: _WsProtocol(on_message, on_lost, request, key), parts.hostname, parts.port
        ),
        timeout,
    )
    try:
        await asyncio.wait_for(protocol.handshake, timeout)
    except BaseException:
        transport.close()
        raise
    return WsConnection(transport, protocol)
