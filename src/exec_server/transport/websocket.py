"""WebSocket transport: one Connection per WebSocket, plus ``GET /readyz``.

Text and binary frames are both read as JSON; replies and notifications go out as text
frames. permessage-deflate is not negotiated (the 0.128 reference drops such handshakes, and
compression costs more CPU than it saves on loopback). The handshake is checked in one place,
:func:`check_handshake`.
"""

from __future__ import annotations

import http
from collections.abc import AsyncIterator, Callable

from websockets.asyncio.server import Server as WsServer
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from ..connection import Connection, serve_connection
from ..server import Server

KEEPALIVE_INTERVAL_S = 30.0
"""Server pings, as the current reference; no pong deadline, so a paused reader is not cut off."""


class WebSocketTransport:
    """Adapts a websockets connection to what :class:`Connection` needs."""

    resumable = True

    def __init__(self, ws: ServerConnection) -> None:
        self._ws = ws
        host, port = ws.remote_address[:2]
        self.description = f"exec-server websocket {host}:{port}"
        self.malformed_prefix = (
            f"failed to parse websocket JSON-RPC message from {self.description}"
        )

    async def send(self, message: bytes) -> None:
        try:
            await self._ws.send(message, text=True)
        except ConnectionClosed as exc:
            raise ConnectionError(str(exc)) from None

    def abort(self) -> None:
        self._ws.transport.abort()


def check_handshake(
    request: Request, allowed_origins: frozenset[str]
) -> tuple[http.HTTPStatus, str] | None:
    """The one place a WebSocket handshake is judged; returns a refusal or None.

    A browser page can open a WebSocket to loopback; any ``Origin`` that is not explicitly
    allowed is refused so a web page cannot run commands here (Part A §A3).
    """
    origin = request.headers.get("Origin")
    if origin is not None and origin not in allowed_origins:
        return http.HTTPStatus.FORBIDDEN, f"origin {origin} is not allowed\n"
    return None


async def _messages(ws: ServerConnection) -> AsyncIterator[str | bytes]:
    try:
        async for message in ws:
            yield message
    except ConnectionClosed:
        return


async def serve_websocket(
    server: Server,
    host: str,
    port: int,
    *,
    allowed_origins: frozenset[str] = frozenset(),
    on_bound: Callable[[str, int], None] | None = None,
) -> WsServer:
    """Start listening; returns the running websockets server (close it to stop)."""

    async def handler(ws: ServerConnection) -> None:
        connection = Connection(server, WebSocketTransport(ws))
        await serve_connection(connection, _messages(ws))

    def process_request(ws: ServerConnection, request: Request) -> Response | None:
        if request.path == "/readyz":
            return ws.respond(http.HTTPStatus.OK, "ok\n")
        refusal = check_handshake(request, allowed_origins)
        if refusal is not None:
            return ws.respond(*refusal)
        if "upgrade" not in request.headers.get("Connection", "").lower():
            return ws.respond(http.HTTPStatus.NOT_FOUND, "not found\n")
        return None

    ws_server = await serve(
        handler,
        host,
        port,
        process_request=process_request,
        compression=None,
        max_size=server.limits.max_message_bytes,
        ping_interval=KEEPALIVE_INTERVAL_S,
        ping_timeout=None,
        server_header=None,
    )
    if on_bound is not None:
        sockname = next(iter(ws_server.sockets)).getsockname()
        on_bound(sockname[0], sockname[1])
    return ws_server
