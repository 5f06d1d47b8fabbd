"""WebSocket transport: one Connection per WebSocket, plus ``GET /readyz``.

The WebSocket protocol itself (handshake, frame parsing, ping/pong, close) is the
``websockets`` library's sans-I/O state machine; this module is the thin asyncio layer over
it. Outbound messages are framed here and written in one batch per event-loop turn, so a
burst of notifications costs one system call, not one coroutine and one system call each.

Text and binary frames are both read as JSON; everything goes out as text frames.
permessage-deflate is not negotiated (the 0.128 reference drops such handshakes, and on
loopback compression costs more than it saves). The handshake is judged in one place,
:func:`check_handshake`.
"""

from __future__ import annotations

import asyncio
import http
import ipaddress
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from ..connection import Connection
from ..server import Server
from .flow import FlowControl

log = logging.getLogger(__name__)

KEEPALIVE_INTERVAL_S = 30.0
"""Server pings, as the current reference; no pong deadline, so a paused reader is not cut off."""

HANDSHAKE_TIMEOUT_S = 10.0
"""A peer that has not completed the WebSocket handshake by then is dropped."""


@dataclass(frozen=True, slots=True)
class HandshakePolicy:
    """Who may open a WebSocket here (Part A §A3).

    ``allowed_hosts``: the names a ``Host`` header may carry, or None to accept any (a
    non-loopback bind, where the server's own DNS name is unknown to us).
    """

    allowed_origins: frozenset[str] = frozenset()
    allowed_hosts: frozenset[str] | None = None

    @classmethod
    def for_bind(cls, host: str, allowed_origins: frozenset[str] = frozenset()) -> HandshakePolicy:
        """On a loopback bind only loopback names are accepted in ``Host``."""
        if ipaddress.ip_address(host).is_loopback:
            hosts = frozenset({host, "localhost", "127.0.0.1", "::1"})
            return cls(allowed_origins, hosts)
        return cls(allowed_origins, None)


def _host_name(header: str) -> str:
    """``Host`` without its port: ``[::1]:80`` -> ``::1``, ``localhost:80`` -> ``localhost``."""
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def check_handshake(
    request: Request, policy: HandshakePolicy
) -> tuple[http.HTTPStatus, str] | None:
    """The one place a WebSocket handshake is judged; returns a refusal or None.

    A browser page can open a WebSocket to loopback: any ``Origin`` that is not explicitly
    allowed is refused, so a web page cannot run commands here; and on a loopback bind a
    ``Host`` that is not a loopback name is refused, so DNS rebinding cannot get around that.
    """
    origin = request.headers.get("Origin")
    if origin is not None and origin not in policy.allowed_origins:
        return http.HTTPStatus.FORBIDDEN, f"origin {origin} is not allowed\n"
    if policy.allowed_hosts is not None:
        host = _host_name(request.headers.get("Host", "")).lower()
        if host not in policy.allowed_hosts:
            return http.HTTPStatus.FORBIDDEN, f"host {host or '(none)'} is not allowed\n"
    return None


def _text_frame_header(length: int) -> bytes:
    """FIN + text opcode and the payload length; server frames are never masked (RFC 6455)."""
    if length < 126:
        return bytes((0x81, length))
    if length < 65536:
        return struct.pack("!BBH", 0x81, 126, length)
    return struct.pack("!BBQ", 0x81, 127, length)


class WebSocketTransport(FlowControl["Frame | Request"], asyncio.Protocol):
    """One accepted TCP connection: the WebSocket state machine and the Connection over it."""

    resumable = True

    def __init__(self, server: Server, policy: HandshakePolicy) -> None:
        super().__init__(server.limits.outbound_queue_bytes)
        self._server = server
        self._policy = policy
        self._ws = ServerProtocol(max_size=server.limits.max_message_bytes, logger=log)
        self._transport: asyncio.Transport | None = None
        self._conn: Connection | None = None
        self._fragments: list[bytes | bytearray | memoryview] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.description = "exec-server websocket"
        self.malformed_prefix = (
            "failed to parse websocket JSON-RPC message from exec-server websocket"
        )

    # ---- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass, but is one
        self._transport = transport
        peer = transport.get_extra_info("peername")
        if peer:
            self.description = f"exec-server websocket {peer[0]}:{peer[1]}"
            self.malformed_prefix = (
                f"failed to parse websocket JSON-RPC message from {self.description}"
            )
        # The kernel buffer is the first queue; ours starts past it.
        transport.set_write_buffer_limits(high=self._high_water)
        self._timer = self._loop.call_later(HANDSHAKE_TIMEOUT_S, self._handshake_timeout)

    def data_received(self, data: bytes) -> None:
        ws = self._ws
        ws.receive_data(data)
        for event in ws.events_received():
            if isinstance(event, (Frame, Request)):
                self._receive(event)
        self._process_inbound()
        self._write_protocol_data()

    def eof_received(self) -> bool:
        self._ws.receive_eof()
        self._write_protocol_data()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._out.clear()
        if self._conn is not None:
            self._conn.close()

    # ---- what Connection needs --------------------------------------------------------------

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # ---- FlowControl hooks ------------------------------------------------------------------

    def _connection(self) -> Connection | None:
        return self._conn

    def _can_send(self) -> bool:
        return self._ws.state is State.OPEN

    def _framed(self, message: bytes) -> list[bytes]:
        return [_text_frame_header(len(message)), message]

    def _write(self, pieces: list[bytes]) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.writelines(pieces)

    def _handle(self, item: Frame | Request) -> bool:
        if isinstance(item, Frame):
            self._frame(item)
        else:
            self._handshake(item)
        return True

    def _pause_reading(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    # ---- internals --------------------------------------------------------------------------

    def _write_protocol_data(self) -> None:
        """Write what the state machine wants sent (handshake, pongs, close); b"" means EOF."""
        chunks = self._ws.data_to_send()
        if not chunks:
            return
        self._flush()  # keep order with data frames queued earlier
        transport = self._transport
        assert transport is not None
        for chunk in chunks:
            if chunk:
                transport.write(chunk)
            else:
                transport.close()  # flushes what is buffered, then closes
                return

    def _handshake(self, request: Request) -> None:
        ws = self._ws
        if request.path == "/readyz":
            response = ws.reject(http.HTTPStatus.OK, "ok\n")
        elif (refusal := check_handshake(request, self._policy)) is not None:
            response = ws.reject(*refusal)
        elif "upgrade" not in request.headers.get("Connection", "").lower():
            response = ws.reject(http.HTTPStatus.NOT_FOUND, "not found\n")
        else:
            response = ws.accept(request)
        ws.send_response(response)
        self._write_protocol_data()
        if response.status_code != 101:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(KEEPALIVE_INTERVAL_S, self._keepalive)
        self._conn = Connection(self._server, self)

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if frame.fin:
                self._deliver(frame.data)
            else:
                self._fragments = [frame.data]
        elif opcode is Opcode.CONT and self._fragments is not None:
            self._fragments.append(frame.data)
            if frame.fin:
                data = b"".join(self._fragments)
                self._fragments = None
                self._deliver(data)
        # PING, PONG and CLOSE are answered by the state machine itself.

    def _deliver(self, data: bytes | bytearray | memoryview) -> None:
        connection = self._conn
        if connection is not None and not connection.receive(data):
            self.abort()  # protocol violation: drop the socket, no close frame (as the reference)

    def _handshake_timeout(self) -> None:
        self._timer = None
        if self._conn is None:
            self.abort()

    def _keepalive(self) -> None:
        if self._ws.state is State.OPEN:
            self._ws.send_ping(b"")
            self._write_protocol_data()
            self._timer = self._loop.call_later(KEEPALIVE_INTERVAL_S, self._keepalive)


async def serve_websocket(
    server: Server,
    host: str,
    port: int,
    *,
    allowed_origins: frozenset[str] = frozenset(),
    on_bound: Callable[[str, int], None] | None = None,
) -> asyncio.Server:
    """Start listening; returns the asyncio server (close it to stop accepting)."""
    policy = HandshakePolicy.for_bind(host, allowed_origins)
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(
        lambda: WebSocketTransport(server, policy), host, port, reuse_address=True
    )
    if on_bound is not None:
        sockname = listener.sockets[0].getsockname()
        on_bound(sockname[0], sockname[1])
    return listener
