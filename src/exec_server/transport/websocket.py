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

Before any byte is read, a peer that is one of this server's own sandboxed processes is
dropped (``peers.py``). Until the upgrade a connection counts among its listener's pending
ones (``pending.py``; the oldest go past the bound) and has ``handshake_timeout_s`` to
finish, TLS included: for ``wss://`` the transport runs TLS itself (``tls.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import stat
from collections.abc import Callable
from typing import Any, cast

from websockets.http11 import Request
from websockets.server import ServerProtocol

from ..connection import CLIENT_WENT_AWAY, Connection
from ..server import Server
from .handshake import HandshakePolicy, judge
from .inbox import Inbox
from .outbox import Outbox
from .peers import is_sandboxed_descendant
from .pending import PendingConnections
from .tls import TlsClosed, TlsSession
from .wsframes import (
    CLOSE_GOING_AWAY,
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


class _LibraryLog(logging.LoggerAdapter[logging.Logger]):
    """The ``websockets`` state machine's log with its INFO lines ("connection open",
    "connection rejected (401 ...)", "HTTP response sent (200 OK)") demoted to DEBUG: the
    handshake and connection events (``observability.py``) are their one record at INFO."""

    def info(self, msg: object, *args: object, **kwargs: Any) -> None:
        self.debug(msg, *args, **kwargs)


_library_log = _LibraryLog(log, {})

KEEPALIVE_INTERVAL_S = 30.0
"""Server pings, as the current reference; no pong deadline, so a paused reader is not cut off."""

TLS_HANDSHAKE_RECORD = b"\x16\x03"
"""How a TLS ClientHello begins (record type 22, version 3.x): never an HTTP request."""

MAX_HANDSHAKE_BYTES = 64 * 1024
"""An HTTP request head larger than this is dropped."""


class WebSocketTransport(asyncio.Protocol):
    """One accepted TCP connection: the HTTP handshake (judged by the ``websockets``
    state machine), then frames (read by :class:`FrameReader`), and the Connection over it."""

    resumable = True

    def __init__(
        self,
        server: Server,
        policy: HandshakePolicy,
        pending: PendingConnections | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """``pending``: the listener's handshakes in progress, which this one joins until
        it upgrades; ``tls``: run TLS over the connection's bytes (``tls.py``)."""
        self._loop = asyncio.get_running_loop()
        self._server = server
        self._policy = policy
        self._pending = pending
        self._tls = TlsSession(tls) if tls is not None else None
        self._ws = ServerProtocol(max_size=server.limits.max_message_bytes, logger=_library_log)
        self._head = bytearray()  # the HTTP request, until its blank line
        self._reader: FrameReader | None = None  # set once the handshake succeeded
        self._closing = False
        self._transport: asyncio.Transport | None = None
        self._conn: Connection | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._metrics = server.metrics
        self._end_reason: str | None = None  # why the connection ends, once known (for its event)
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
        sock = transport.get_extra_info("socket")
        if sock is not None and is_sandboxed_descendant(sock, self._server.sessions.sandbox_pids):
            log.warning("refused a connection from a sandboxed process of this server")
            self.abort()
            return
        if self._pending is not None:
            self._pending.add(self)
        timeout = self._server.limits.handshake_timeout_s
        self._timer = self._loop.call_later(timeout, self._handshake_timeout)
        peer = transport.get_extra_info("peername")
        if peer:
            self.description = f"exec-server websocket {peer[0]}:{peer[1]}"
            self.malformed_prefix = (
                f"failed to parse websocket JSON-RPC message from {self.description}"
            )
        # The kernel buffer is the first queue; ours starts past it.
        transport.set_write_buffer_limits(high=self.outbox.high_water)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        if self._tls is not None:
            data = self._decrypt(self._tls, data)
            if not data:
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
            self._ending(f"a malformed frame ({exc.reason})")
            self._close(exc.code, exc.reason)
            return
        for opcode, payload in received:
            if opcode in (OP_TEXT, OP_BINARY):
                self.inbox.hold(payload)
            elif opcode == OP_PING:
                self._control(OP_PONG, payload)
            elif opcode == OP_CLOSE:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else CLOSE_NORMAL
                self._ending(f"the client closed it (code {code})")
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
        self._forget()
        self.outbox.clear()
        self.inbox.clear()
        if self._conn is not None:
            if exc is not None:
                self._ending(f"the connection failed ({exc})")
            self._conn.close(self._end_reason or CLIENT_WENT_AWAY)

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

    def shut_down(self, reason: str) -> None:
        self._ending(reason)
        self._close(CLOSE_GOING_AWAY, reason)

    # ---- outbox and inbox wiring ----------------------------------------------------------

    def _write(self, pieces: list[bytes]) -> None:
        if self._transport is not None and not self._transport.is_closing():
            if self._tls is None:
                self._transport.writelines(pieces)
            else:
                self._tls.send(b"".join(pieces))
                self._transport.write(self._tls.outgoing())
            self._metrics.sent(sum(map(len, pieces)))

    def _decrypt(self, tls: TlsSession, data: bytes) -> bytes:
        """The plaintext ``data`` completes; what TLS answers is sent at once."""
        try:
            plain = tls.receive(data)
        except (ssl.SSLError, TlsClosed) as exc:
            log.debug("TLS ended for %s: %r", self.description, exc)
            self._write_raw(tls.outgoing())  # an alert, if any
            self._closing = True
            if self._transport is not None:
                self._transport.close()
            return b""
        self._write_raw(tls.outgoing())
        return plain

    def _write_raw(self, data: bytes) -> None:
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _close_transport(self) -> None:
        """Close after what is queued (our close_notify last, under TLS)."""
        if self._transport is None:
            return
        if self._tls is not None:
            self._tls.close()
            self._write_raw(self._tls.outgoing())
        self._transport.close()

    def _deliver(self, message: bytes) -> bool:
        connection = self._conn
        if connection is None or self._closing:
            return False
        if not connection.receive(message):
            self._ending("a protocol violation")
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
        if head.startswith(TLS_HANDSHAKE_RECORD):
            # A wss:// client at a ws:// listener: no HTTP will come, so say no at once (its
            # TLS library reports the closed connection) rather than at the handshake timeout.
            log.info("%s: a TLS handshake on a plain listener; closed", self.description)
            self.abort()
            return b""
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
        for chunk in self._ws.data_to_send():
            if chunk:
                self._write([chunk])
            else:
                self._close_transport()  # flushes what is buffered, then closes
                self._closing = True
                return

    def _handshake(self, request: Request) -> None:
        ws = self._ws
        refusal = judge(request, self._policy, self._server)
        if refusal is None:
            response = ws.accept(request)
        else:
            response = ws.reject(refusal.status, refusal.body)
            for name, value in refusal.headers:
                if name in response.headers:
                    del response.headers[name]  # one value: ours (Content-Type of /metrics)
                response.headers[name] = value
        ws.send_response(response)
        path = request.path.partition("?")[0]
        self._metrics.handshake(self.description, path, response.status_code)
        if response.status_code != 101:
            return
        if self._pending is not None:
            self._pending.done(self)
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
        self._close_transport()

    def _ending(self, reason: str) -> None:
        """Remember why the connection ends (the first reason wins), for its event."""
        if self._end_reason is None:
            self._end_reason = reason

    def _handshake_timeout(self) -> None:
        self._timer = None
        if self._conn is None:
            self.abort()
            self._forget()

    def _forget(self) -> None:
        """Gone or given up on: no timer, no longer pending."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending is not None:
            self._pending.done(self)

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
    token: str | None = None,
    tls: ssl.SSLContext | None = None,
    on_bound: Callable[[str, int], None] | None = None,
    metrics_public: bool = False,
) -> asyncio.Server:
    """Listen on TCP (with TLS when ``tls`` is given); returns the asyncio server (close it
    to stop accepting). ``token``: the bearer token every client must present (for
    ``/metrics`` too, unless ``metrics_public``). Starts the server's heartbeat (``/healthz``)."""
    policy = HandshakePolicy.for_bind(host, allowed_origins, token, metrics_public)
    server.heartbeat.start()
    pending = PendingConnections(server.limits.max_pending_connections)
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(
        lambda: WebSocketTransport(server, policy, pending, tls), host, port, reuse_address=True
    )
    if on_bound is not None:
        sockname = listener.sockets[0].getsockname()
        on_bound(sockname[0], sockname[1])
    return listener


async def serve_unix(
    server: Server,
    path: str,
    *,
    allowed_origins: frozenset[str] = frozenset(),
    token: str | None = None,
    metrics_public: bool = False,
) -> asyncio.Server:
    """Listen on a Unix socket at ``path``, created with mode 0600 (only this user may
    connect; a stale socket file there is replaced)."""
    policy = HandshakePolicy.for_bind(None, allowed_origins, token, metrics_public)
    server.heartbeat.start()
    pending = PendingConnections(server.limits.max_pending_connections)
    loop = asyncio.get_running_loop()
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    previous = os.umask(0o177)  # the socket is born 0600: no moment when others may connect
    try:
        return await loop.create_unix_server(
            lambda: WebSocketTransport(server, policy, pending), path
        )
    finally:
        os.umask(previous)
