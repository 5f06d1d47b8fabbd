"""One child's egress proxies: HTTP (absolute-form requests and CONNECT) and SOCKS5.

:class:`EgressProxy` serves connections accepted on listening sockets it is given (in our
design, sockets bound inside the child's network namespace, see ``netns.py``). Every request
is judged by a :class:`~.policy.NetworkPolicy`; each verdict is reported to ``audit`` as an
:class:`AuditEvent`; an allowed request is connected to the address the policy checked.

Blocked answers are the reference's: a plain HTTP request gets ``403`` with ``x-proxy-error``
and a JSON body, a CONNECT gets ``403`` with a text body, a SOCKS5 request reply code 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import email.utils
import json
import socket
import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import h11

from .policy import (
    REASON_DENIED,
    REASON_METHOD_NOT_ALLOWED,
    REASON_MITM_REQUIRED,
    REASON_NOT_ALLOWED,
    REASON_NOT_ALLOWED_LOCAL,
    Answer,
    Decision,
    Mode,
    NetworkPolicy,
    Protocol,
    Resolver,
)

MAX_HEAD_BYTES = 64 * 1024
"""A request head longer than this is refused (400): no client needs more."""

CONNECT_TIMEOUT_S = 30.0
"""How long a connection to an allowed destination may take before 502 / SOCKS reply 4."""

COPY_CHUNK = 256 * 1024

_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"te",
        b"trailer",
        b"upgrade",
    }
)

_MESSAGES = {
    REASON_NOT_ALLOWED: "Domain not in allowlist.",
    REASON_NOT_ALLOWED_LOCAL: "Sandbox policy blocks local/private network addresses.",
    REASON_DENIED: "Domain denied by the sandbox policy.",
    REASON_METHOD_NOT_ALLOWED: "Method not allowed in limited mode.",
    REASON_MITM_REQUIRED: "MITM required for limited HTTPS.",
}
_DEFAULT_MESSAGE = "Request blocked by network policy."

_ERROR_HEADERS = {
    REASON_NOT_ALLOWED: "blocked-by-allowlist",
    REASON_NOT_ALLOWED_LOCAL: "blocked-by-allowlist",
    REASON_DENIED: "blocked-by-denylist",
    REASON_METHOD_NOT_ALLOWED: "blocked-by-method-policy",
    REASON_MITM_REQUIRED: "blocked-by-mitm-required",
}


def blocked_message(reason: str) -> str:
    """The human sentence of a blocked answer (the reference's words)."""
    return _MESSAGES.get(reason, _DEFAULT_MESSAGE)


def blocked_header(reason: str) -> str:
    """The ``x-proxy-error`` value of a blocked answer."""
    return _ERROR_HEADERS.get(reason, "blocked-by-policy")


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One policy verdict, as the ``network/policyDecision`` notification reports it."""

    timestamp: str
    scope: str
    decision: str
    source: str
    reason: str
    protocol: str
    host: str
    port: int
    method: str | None
    client: str | None
    policy_override: bool = False


Audit = Callable[[AuditEvent], None]

Decider = Callable[[Protocol, str, int], Awaitable[Answer]]
"""Asks the client about a destination the lists do not allow (``network/policyRequest``)."""


async def resolve(host: str, port: int) -> Sequence[str]:
    """The host's addresses from the system resolver (an empty list when it has none)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _http_date() -> str:
    return email.utils.formatdate(usegmt=True)


def _now() -> str:
    now = datetime.datetime.now(datetime.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


class EgressProxy:
    """The HTTP and SOCKS5 proxies of one process, judged by one policy.

    :meth:`serve_http` and :meth:`serve_socks` start accepting on given listening sockets;
    :meth:`close` stops accepting and cuts every open connection (the process is gone).
    """

    def __init__(
        self,
        policy: NetworkPolicy,
        audit: Audit,
        resolver: Resolver | None = None,
        decider: Decider | None = None,
    ) -> None:
        self.policy = policy
        self._audit = audit
        self._resolve: Resolver = resolver or resolve
        self._decider = decider
        self._servers: list[asyncio.Server] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._closed = False

    async def serve_http(self, listener: socket.socket) -> None:
        """Serve the HTTP proxy on ``listener`` (already listening)."""
        self._servers.append(await asyncio.start_server(self._http_client, sock=listener))

    async def serve_socks(self, listener: socket.socket) -> None:
        """Serve the SOCKS5 proxy on ``listener`` (already listening)."""
        self._servers.append(await asyncio.start_server(self._socks_client, sock=listener))

    def close(self) -> None:
        """Stop accepting and close every connection; safe to call more than once."""
        self._closed = True
        for server in self._servers:
            server.close()
        self._servers.clear()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        for handler in list(self._handlers):
            handler.cancel()  # e.g. one waiting for the client's decision

    # ---- verdicts ------------------------------------------------------------------------

    async def _judge(
        self, protocol: Protocol, host: str, port: int, method: str | None, client: str | None
    ) -> Decision:
        decider = self._decider
        ask = None
        if decider is not None:

            async def ask(name: str, asked_port: int) -> Answer:
                return await decider(protocol, name, asked_port)

        decision = await self.policy.decide(host, port, self._resolve, ask)
        self._report(decision, protocol, host, port, method, client)
        if not decision.allowed or method is None:
            return decision
        guard: Decision | None = None
        if protocol is Protocol.HTTPS_CONNECT and self.policy.mode is Mode.LIMITED:
            guard = Decision(False, REASON_MITM_REQUIRED, "mode_guard")
        elif not self.policy.method_allowed(method):
            guard = Decision(False, REASON_METHOD_NOT_ALLOWED, "mode_guard")
        if guard is None:
            return decision
        self._report(guard, protocol, host, port, method, client)
        return guard

    def _report(
        self,
        decision: Decision,
        protocol: Protocol,
        host: str,
        port: int,
        method: str | None,
        client: str | None,
    ) -> None:
        self._audit(
            AuditEvent(
                timestamp=_now(),
                scope=decision.scope,
                decision=decision.decision,
                source=decision.source,
                reason=decision.reason,
                protocol=protocol.value,
                host=host,
                port=port,
                method=method,
                client=client,
                policy_override=decision.policy_override,
            )
        )

    # ---- HTTP ----------------------------------------------------------------------------

    async def _http_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._writers.add(writer)
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
        try:
            await self._http_exchange(reader, writer)
        except (OSError, h11.ProtocolError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            self._handlers.discard(handler)
            writer.transport.abort() if self._closed else writer.close()

    async def _http_exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        parser = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        event = await _next_event(parser, reader)
        if not isinstance(event, h11.Request):
            return
        client = _peer(writer)
        method = event.method.decode("ascii", "replace").upper()
        if method == "CONNECT":
            await self._connect_tunnel(event, parser, reader, writer, client)
            return
        target = urlsplit(event.target.decode("ascii", "replace"))
        if target.scheme != "http" or not target.hostname:
            await _send_text(writer, 400, "absolute-form http:// URL or CONNECT required", None)
            return
        try:
            port = target.port or 80
        except ValueError:
            await _send_text(writer, 400, "invalid port in the request URL", None)
            return
        host = target.hostname
        decision = await self._judge(Protocol.HTTP, host, port, method, client)
        if not decision.allowed:
            await _send_blocked_json(writer, decision, Protocol.HTTP, host, port)
            return
        upstream = await _open(decision.addresses, port)
        if upstream is None:
            await _send_text(writer, 502, f"cannot connect to {host}:{port}", None)
            return
        await self._forward(event, target, parser, reader, writer, upstream)

    async def _forward(
        self,
        request: h11.Request,
        target: object,
        parser: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        """One request to the origin in origin-form (``Connection: close``), its response
        copied back as it comes; the client's connection ends with it."""
        up_reader, up_writer = upstream
        self._writers.add(up_writer)
        try:
            split = urlsplit(request.target.decode("ascii", "replace"))
            path = split.path or "/"
            if split.query:
                path += "?" + split.query
            headers = [(n, v) for n, v in request.headers if n.lower() not in _HOP_BY_HOP]
            headers.append((b"connection", b"close"))
            outgoing = h11.Connection(h11.CLIENT)
            up_writer.write(
                outgoing.send(h11.Request(method=request.method, target=path, headers=headers))
                or b""
            )
            while True:
                event = await _next_event(parser, reader)
                if isinstance(event, h11.Data):
                    up_writer.write(outgoing.send(h11.Data(data=event.data)) or b"")
                    await up_writer.drain()
                elif isinstance(event, h11.EndOfMessage):
                    up_writer.write(outgoing.send(h11.EndOfMessage()) or b"")
                    break
                else:
                    return
            await up_writer.drain()
            await _copy(up_reader, writer)
        finally:
            self._writers.discard(up_writer)
            up_writer.transport.abort()

    async def _connect_tunnel(
        self,
        request: h11.Request,
        parser: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        client: str | None,
    ) -> None:
        authority = request.target.decode("ascii", "replace")
        host, port = _split_authority(authority)
        if host is None or port is None:
            await _send_text(writer, 400, "CONNECT needs host:port", None)
            return
        decision = await self._judge(Protocol.HTTPS_CONNECT, host, port, "CONNECT", client)
        if not decision.allowed:
            await _send_text(writer, 403, blocked_message(decision.reason), decision.reason)
            return
        upstream = await _open(decision.addresses, port)
        if upstream is None:
            await _send_text(writer, 502, f"cannot connect to {host}:{port}", None)
            return
        writer.write(b"HTTP/1.1 200 OK\r\n\r\n")
        early, _ = parser.trailing_data
        await self._splice(reader, writer, upstream, early)

    # ---- SOCKS5 (RFC 1928; CONNECT only) -------------------------------------------------

    async def _socks_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._writers.add(writer)
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
        try:
            await self._socks_exchange(reader, writer)
        except (OSError, asyncio.IncompleteReadError, UnicodeError, ValueError):
            pass
        finally:
            self._writers.discard(writer)
            self._handlers.discard(handler)
            writer.transport.abort() if self._closed else writer.close()

    async def _socks_exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        version, count = await reader.readexactly(2)
        methods = await reader.readexactly(count)
        if version != 5:
            return
        if 0 not in methods:
            writer.write(b"\x05\xff")  # no acceptable method: we offer "no authentication"
            return
        writer.write(b"\x05\x00")
        version, command, _, kind = await reader.readexactly(4)
        if kind == 1:
            host = socket.inet_ntop(socket.AF_INET, await reader.readexactly(4))
        elif kind == 4:
            host = socket.inet_ntop(socket.AF_INET6, await reader.readexactly(16))
        elif kind == 3:
            (length,) = await reader.readexactly(1)
            host = (await reader.readexactly(length)).decode("idna")
        else:
            writer.write(_socks_reply(8))  # address type not supported
            return
        (port,) = struct.unpack("!H", await reader.readexactly(2))
        if command != 1:
            writer.write(_socks_reply(7))  # command not supported (BIND, UDP ASSOCIATE)
            return
        decision = await self._judge(Protocol.SOCKS5_TCP, host, port, None, _peer(writer))
        if not decision.allowed:
            writer.write(_socks_reply(2))  # connection not allowed by ruleset
            return
        upstream = await _open(decision.addresses, port)
        if upstream is None:
            writer.write(_socks_reply(5))  # connection refused
            return
        writer.write(_socks_reply(0))
        await self._splice(reader, writer, upstream, b"")

    # ---- byte copying --------------------------------------------------------------------

    async def _splice(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        early: bytes,
    ) -> None:
        """Copy both ways until both sides are done (or the proxy closes)."""
        up_reader, up_writer = upstream
        self._writers.add(up_writer)
        try:
            if early:
                up_writer.write(early)
            await asyncio.gather(
                _copy(reader, up_writer, half_close=True),
                _copy(up_reader, writer, half_close=True),
            )
        finally:
            self._writers.discard(up_writer)
            up_writer.transport.abort()


def _socks_reply(code: int) -> bytes:
    return bytes([5, code, 0, 1, 0, 0, 0, 0, 0, 0])


async def _next_event(parser: h11.Connection, reader: asyncio.StreamReader) -> object:
    while True:
        event = parser.next_event()
        if event is not h11.NEED_DATA:
            return event
        data = await reader.read(COPY_CHUNK)
        parser.receive_data(data)


async def _copy(
    source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, half_close: bool = False
) -> None:
    try:
        while data := await source.read(COPY_CHUNK):
            sink.write(data)
            await sink.drain()
        if half_close and sink.can_write_eof():
            sink.write_eof()
    except OSError:
        sink.transport.abort()


async def _open(
    addresses: Sequence[str], port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """A connection to the first checked address that answers (never a fresh lookup)."""
    for address in addresses:
        with contextlib.suppress(OSError, TimeoutError):
            return await asyncio.wait_for(
                asyncio.open_connection(address, port, limit=COPY_CHUNK), CONNECT_TIMEOUT_S
            )
    return None


def _split_authority(authority: str) -> tuple[str | None, int | None]:
    host, sep, port_text = authority.rpartition(":")
    if not sep or not port_text.isdigit() or not host:
        return None, None
    port = int(port_text)
    if not 0 < port < 65536:
        return None, None
    return host.strip("[]"), port


def _peer(writer: asyncio.StreamWriter) -> str | None:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return None


async def _send_text(
    writer: asyncio.StreamWriter, status: int, text: str, reason: str | None
) -> None:
    body = text.encode()
    phrase = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway"}[status]
    head = f"HTTP/1.1 {status} {phrase}\r\ncontent-type: text/plain\r\n"
    if reason is not None:
        head += f"x-proxy-error: {blocked_header(reason)}\r\n"
    head += f"content-length: {len(body)}\r\ndate: {_http_date()}\r\n\r\n"
    writer.write(head.encode() + body)
    await writer.drain()


async def _send_blocked_json(
    writer: asyncio.StreamWriter, decision: Decision, protocol: Protocol, host: str, port: int
) -> None:
    body = json.dumps(
        {
            "status": "blocked",
            "host": host,
            "reason": decision.reason,
            "decision": "deny",
            "source": decision.source,
            "protocol": protocol.value,
            "port": port,
            "message": blocked_message(decision.reason),
        },
        separators=(",", ":"),
    ).encode()
    head = (
        "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\n"
        f"x-proxy-error: {blocked_header(decision.reason)}\r\n"
        f"content-length: {len(body)}\r\ndate: {_http_date()}\r\n\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()
