"""WebSocket transport: one Connection per WebSocket, plus ``GET /readyz``.

The HTTP handshake is judged by the ``websockets`` library's sans-I/O state machine; after
it, frames are read by :class:`~.wsframes.FrameReader` straight from the buffer (the
library's generator-based parser cost more than the rest of a small request). This module
is the thin asyncio layer over both: it owns an :class:`~.outbox.Outbox` (framed messages,
written in one batch per event-loop turn) and an :class:`~.inbox.Inbox` (messages held back
while the connection cannot take more).

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
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from websockets.http11 import Request
from websockets.server import ServerProtocol

from ..connection import Connection
from ..server import Server
from .inbox import Inbox
from .outbox import Outbox
from .wsframes import (
    CLOSE_NORMAL,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameError,
    FrameReader,
    close_payload,
    frame,
    text_header,
)

log = logging.getLogger(__name__)

KEEPALIVE_INTERVAL_S = 30.0
"""Server pings, as the current reference; no pong deadline, so a paused reader is not cut off."""

MAX_HANDSHAKE_BYTES = 64 * 1024
"""An HTTP request head larger than this is dropped."""

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


class WebSocketTransport(asyncio.Protocol):
    """One accepted TCP connection: the HTTP handshake (judged by the ``websockets``
    state machine), then frames (read by :class:`FrameReader`), and the Connection over it."""

    resumable = True

    def __init__(self, server: Server, policy: HandshakePolicy) -> None:
        self._loop = asyncio.get_running_loop()
        self._server = server
        self._policy = policy
        self._ws = ServerProtocol(max_size=server.limits.max_message_bytes, logger=log)
        self._head = bytearray()  # the HTTP request, until its blank line
        self._reader: FrameReader | None = None  # set once the handshake succeeded
        self._closing = False
        self._transport: asyncio.Transport | None = None
        self._conn: Connection | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.outbox = Outbox(self._write, server.limits.outbound_queue_bytes, self._on_room)
        self.inbox: Inbox[bytes] = Inbox(
            self._deliver, self._has_room, self._pause_reading, self._resume_reading
        )
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
        transport.set_write_buffer_limits(high=self.outbox.high_water)
        self._timer = self._loop.call_later(HANDSHAKE_TIMEOUT_S, self._handshake_timeout)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        reader = self._reader
        if reader is None:
            data = self._handshake_data(data)
            reader = self._reader
            if reader is None or not data:
                return
        elif not self.inbox.holding:
            message = reader.whole_message(data)
            if message is not None:  # the usual case: one read, one whole message
                self._receive_one(message)
                return
        try:
            received = reader.feed(data)
        except FrameError as exc:
            self._close(exc.code, exc.reason)
            return
        for opcode, payload in received:
            if opcode in (OP_TEXT, OP_BINARY):
                self.inbox.hold(payload)
            elif opcode == OP_PING:
                self._control(OP_PONG, payload)
            elif opcode == OP_CLOSE:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else CLOSE_NORMAL
                self._close(code, "")
                return
        self._process_held()

    # Replies queued while handing over what one read brought leave together, right after.

    def _receive_one(self, message: bytes) -> None:
        self.outbox.begin_batch()
        try:
            self.inbox.receive(message)
        finally:
            self.outbox.end_batch()

    def _process_held(self) -> None:
        self.outbox.begin_batch()
        try:
            self.inbox.process()
        finally:
            self.outbox.end_batch()

    def eof_received(self) -> bool:
        return False  # the peer is gone: close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.outbox.clear()
        self.inbox.clear()
        if self._conn is not None:
            self._conn.close()

    def pause_writing(self) -> None:
        self.outbox.pause_writing()

    def resume_writing(self) -> None:
        self.outbox.resume_writing()

    # ---- what Connection needs --------------------------------------------------------------

    def send(self, message: bytes) -> None:
        if self._reader is None or self._closing:
            return
        self.outbox.put((text_header(len(message)), message), len(message))

    @property
    def writable(self) -> bool:
        return self.outbox.writable

    def abort(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.abort()

    def resume_inbound(self) -> None:
        self._on_room()

    # ---- outbox and inbox wiring ----------------------------------------------------------

    def _write(self, pieces: list[bytes]) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.writelines(pieces)

    def _deliver(self, message: bytes) -> bool:
        connection = self._conn
        if connection is None or self._closing:
            return False
        if not connection.receive(message):
            self.abort()  # protocol violation: drop the socket, no close frame (as the reference)
            return False
        return True

    def _has_room(self) -> bool:
        connection = self._conn
        if connection is not None and not connection.accepting:
            return False
        if not self.outbox.writable:
            self.outbox.flush()  # the OS transport's buffer may take what is queued
        return self.outbox.writable

    def _on_room(self) -> None:
        """Room again (the outbox drained, or a waiting request finished)."""
        self.inbox.resume()
        connection = self._conn
        if connection is not None and self.outbox.writable:
            connection.on_writable()

    def _pause_reading(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    # ---- internals --------------------------------------------------------------------------

    def _handshake_data(self, data: bytes) -> bytes:
        """Collect the HTTP request; judge it once whole. Returns bytes that followed it."""
        head = self._head
        head += data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            if len(head) > MAX_HANDSHAKE_BYTES:
                self.abort()
            return b""
        request_bytes, rest = bytes(head[: end + 4]), bytes(head[end + 4 :])
        head.clear()
        ws = self._ws
        ws.receive_data(request_bytes)
        for event in ws.events_received():
            if isinstance(event, Request):
                self._handshake(event)
                break
        self._write_handshake_data()
        return rest

    def _write_handshake_data(self) -> None:
        """Write the state machine's answer to the handshake; b"" means close after it."""
        transport = self._transport
        assert transport is not None
        for chunk in self._ws.data_to_send():
            if chunk:
                transport.write(chunk)
            else:
                self._closing = True
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
        if response.status_code != 101:
            return
        self._reader = FrameReader(self._server.limits.max_message_bytes)
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(KEEPALIVE_INTERVAL_S, self._keepalive)
        self._conn = Connection(self._server, self)

    def _control(self, opcode: int, payload: bytes = b"") -> None:
        """Queue a control frame after the data already queued."""
        if not self._closing:
            self.outbox.put((frame(opcode, payload),), 0)

    def _close(self, code: int, reason: str) -> None:
        """Send a close frame (after what is queued) and close the TCP connection."""
        if self._closing:
            return
        self._control(OP_CLOSE, close_payload(code, reason))
        self.outbox.flush()
        self._closing = True
        self.inbox.clear()
        if self._transport is not None:
            self._transport.close()

    def _handshake_timeout(self) -> None:
        self._timer = None
        if self._conn is None:
            self.abort()

    def _keepalive(self) -> None:
        if not self._closing:
            self._control(OP_PING)
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
