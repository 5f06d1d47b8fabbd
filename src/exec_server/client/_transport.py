"""The two ways to reach a server: a WebSocket URL, or a server command spoken to over its
stdin and stdout (newline-delimited JSON). Each moves whole messages and nothing more."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import subprocess
from collections.abc import Sequence
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection, unix_connect
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from .errors import AuthenticationFailed, ConnectionFailed

STDIO_LINE_LIMIT = 1 << 30
"""The longest line read from a stdio server; a whole 512 MiB file in base64 fits."""


GOING_AWAY = 1001
"""The WebSocket close code of a server that shuts down."""


class TransportClosed(Exception):
    """The transport ended (EOF, close, reset); ``reason`` says how, for messages.
    ``going_away``: the server closed it because it shuts down, saying ``server_reason``."""

    def __init__(self, reason: str, going_away: bool = False, server_reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.going_away = going_away
        self.server_reason = server_reason


class Transport(Protocol):
    async def send(self, message: bytes) -> None:
        """Send one message; raises :class:`TransportClosed` when the transport is gone."""

    async def recv(self) -> bytes:
        """The next message; raises :class:`TransportClosed` at the end."""

    async def close(self) -> None:
        """Close; safe to call more than once."""


class WebSocketTransport:
    """One WebSocket connection, without compression (the 0.128 reference drops handshakes
    that offer permessage-deflate)."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws

    @classmethod
    async def open(
        cls, url: str, token: str | None, timeout: float, ca_file: str | None = None
    ) -> WebSocketTransport:
        """Connect to ``ws://``, ``wss://`` (verified against ``ca_file`` if given, else the
        system's CAs) or ``unix:///PATH``; or raise :class:`ConnectionFailed` /
        :class:`AuthenticationFailed`."""
        headers = {"Authorization": f"Bearer {token}"} if token is not None else None
        options: dict[str, Any] = {
            "additional_headers": headers,
            "compression": None,
            "max_size": None,
            "open_timeout": timeout,
            "user_agent_header": None,
        }
        try:
            if url.startswith("wss://") and ca_file is not None:
                options["ssl"] = _tls_context(ca_file)
            if url.startswith("unix://"):
                ws = await unix_connect(url.removeprefix("unix://"), "ws://localhost/", **options)
            else:
                ws = await ws_connect(url, **options)
        except InvalidStatus as exc:
            raise _refused(url, exc.response.status_code, token is not None) from None
        except InvalidURI:
            raise ConnectionFailed(
                f"`{url}` is not a WebSocket URL; expected ws://HOST:PORT, wss://HOST:PORT "
                "or unix:///PATH"
            ) from None
        except (OSError, InvalidHandshake, TimeoutError, EOFError) as exc:
            reason = _reason(exc)
            if url.startswith("wss://") and isinstance(exc, ConnectionResetError | EOFError):
                reason = "the server dropped the TLS handshake (is it ws://, not wss://?)"
            raise ConnectionFailed(f"cannot connect to {url}: {reason}") from None
        return cls(ws)

    async def send(self, message: bytes) -> None:
        try:
            await self._ws.send(message, text=True)  # UTF-8 already: no decode and re-encode
        except ConnectionClosed as exc:
            raise _closed(exc) from None

    async def recv(self) -> bytes:
        try:
            message = await self._ws.recv(decode=False)  # bytes, as msgspec reads them
        except ConnectionClosed as exc:
            raise _closed(exc) from None
        return message.encode() if isinstance(message, str) else message

    async def close(self) -> None:
        await self._ws.close()

    def abort(self) -> None:
        """Drop the TCP connection at once (no closing handshake)."""
        self._ws.transport.abort()


def _refused(url: str, status: int, sent_token: bool) -> ConnectionFailed:
    if status == 401:
        hint = "the token was not accepted" if sent_token else "it needs a token (--token)"
        return AuthenticationFailed(f"{url} refused the connection: {hint} (HTTP 401)")
    if status == 403:
        return ConnectionFailed(f"{url} refused the connection (HTTP 403 Forbidden)")
    return ConnectionFailed(f"{url} did not accept a WebSocket connection (HTTP {status})")


def _tls_context(ca_file: str) -> ssl.SSLContext:
    """Verify the server against the CA certificates in ``ca_file`` (PEM)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    try:
        context.load_verify_locations(ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConnectionFailed(f"cannot use the CA file {ca_file}: {_reason(exc)}") from None
    return context


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"TLS: the server's certificate is not trusted ({exc.verify_message}); give --ca-file"
        )
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc.reason or exc} (is it a wss:// server?)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the server running?)"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _closed(exc: ConnectionClosed) -> TransportClosed:
    received = exc.rcvd
    if received is not None and received.code == GOING_AWAY:
        return TransportClosed(_closed_reason(exc), True, received.reason)
    return TransportClosed(_closed_reason(exc))


def _closed_reason(exc: ConnectionClosed) -> str:
    if exc.rcvd is None and exc.sent is None:
        return "the connection was cut"
    return str(exc)


class StdioTransport:
    """A server started as a child process, spoken to over its stdin and stdout."""

    def __init__(self, process: asyncio.subprocess.Process, argv: Sequence[str]) -> None:
        self._process = process
        self._argv = list(argv)

    @classmethod
    async def open(cls, argv: Sequence[str], stderr: int | None) -> StdioTransport:
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                limit=STDIO_LINE_LIMIT,
                start_new_session=True,  # a Ctrl-C meant for us is not the server's
            )
        except OSError as exc:
            raise ConnectionFailed(f"cannot start {argv[0]!r}: {_reason(exc)}") from None
        return cls(process, argv)

    async def send(self, message: bytes) -> None:
        stdin = self._process.stdin
        assert stdin is not None
        try:
            stdin.write(message + b"\n")
            await stdin.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise TransportClosed(f"the server's stdin is closed ({exc})") from None

    async def recv(self) -> bytes:
        stdout = self._process.stdout
        assert stdout is not None
        while True:
            try:
                line = await stdout.readline()
            except (ValueError, asyncio.LimitOverrunError) as exc:
                raise TransportClosed(f"the server sent an oversized line ({exc})") from None
            if not line:
                code = await self._process.wait()
                raise TransportClosed(f"the server {self._argv[0]!r} exited with code {code}")
            if line.strip():
                return line

    async def close(self, timeout: float = 5.0) -> None:
        """Close the server's stdin (it then ends every process and exits) and reap it."""
        stdin = self._process.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.close()
            with contextlib.suppress(ConnectionError):
                await stdin.wait_closed()
        try:
            await asyncio.wait_for(self._process.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, 9)
            await self._process.wait()
