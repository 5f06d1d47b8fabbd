"""One child's egress proxies: HTTP (absolute-form requests and CONNECT) and SOCKS5.

:class:`EgressProxy` serves connections accepted on listening sockets it is given (in our
design, sockets bound inside the child's network namespace, see ``managed.py``). Every request
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
import errno
import json
import socket
import struct
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import h11

from . import pump
from .credentials import MaskedEnvironment
from .own_ports import reaches_own_listener
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
from .socks_udp import UdpRelay

MAX_HEAD_BYTES = 64 * 1024
"""A longer request head ends the connection unanswered: no client needs more."""

MAX_CONNECTIONS = 512
"""Connections one child may hold open through its proxies at once; more are closed at
accept, so a child cannot spend the server's descriptors (each costs two)."""

ACCEPT_RETRY_S = 0.1
"""Pause before accepting again when the server is out of descriptors."""

CONNECT_TIMEOUT_S = 30.0
"""How long a connection to an allowed destination may take before 502 / SOCKS reply 5."""

READ_CHUNK = 64 * 1024
"""Bytes read at a time from a child's request (answers and tunnels are spliced)."""

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


Audit = Callable[[AuditEvent], Awaitable[None] | None]
"""Reports a verdict. It returns an awaitable while the reports' reader is behind: the
verdict waits on it, so a child cannot have reports queued faster than they are read."""

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
    Every task is this object's: one accept loop per listener, one per connection.
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
        self._listeners: list[socket.socket] = []
        self._udp: UdpRelay | None = None
        self.masked: MaskedEnvironment | None = None
        """With credential masking: the credentials whose hosts' tunnels are looked into."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._conns: set[socket.socket] = set()
        self._closed = False

    def serve_http(self, listener: socket.socket) -> None:
        """Serve the HTTP proxy on ``listener`` (already listening)."""
        self._serve(listener, self._http)

    def serve_socks(self, listener: socket.socket, udp: socket.socket | None = None) -> None:
        """Serve the SOCKS5 proxy on ``listener`` (already listening), with UDP ASSOCIATE
        relayed through ``udp`` (bound beside it) when given."""
        if udp is not None and not self._closed:
            self._udp = UdpRelay(udp, self._judge_datagram, self._spawn)
        self._serve(listener, self._socks)

    def close(self) -> None:
        """Stop accepting and close every connection; safe to call more than once."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()  # each closes its sockets; one may be waiting for the client
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()
        for conn in self._conns:
            conn.close()  # also those whose task never got to run
        self._conns.clear()
        if self._udp is not None:
            self._udp.close()

    def _serve(self, listener: socket.socket, handler: _Handler) -> None:
        if self._closed:
            listener.close()
            return
        listener.setblocking(False)
        self._listeners.append(listener)
        self._spawn(self._accept(listener, handler))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, listener: socket.socket, handler: _Handler) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(listener)
            except (ConnectionAbortedError, InterruptedError):
                continue
            except OSError as error:
                if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    await asyncio.sleep(ACCEPT_RETRY_S)  # out of descriptors: try again soon
                    continue
                return  # closed
            if len(self._conns) >= MAX_CONNECTIONS:
                conn.close()  # the child holds enough already: not one more descriptor
                continue
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conns.add(conn)  # counted now: queued connections are accepted without a pause
            self._spawn(self._connection(conn, _address(peer), handler))

    async def _connection(self, conn: socket.socket, client: str | None, handler: _Handler) -> None:
        try:
            await self._handle(conn, client, handler)
        finally:
            self._conns.discard(conn)

    @staticmethod
    async def _handle(conn: socket.socket, client: str | None, handler: _Handler) -> None:
        # The child went away or spoke nonsense: nothing to answer.
        with conn, contextlib.suppress(OSError, EOFError, ValueError, h11.ProtocolError):
            await handler(conn, client)

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
        if decision.allowed and any(reaches_own_listener(a, port) for a in decision.addresses):
            decision = Decision(False, REASON_NOT_ALLOWED_LOCAL)  # the server's own ports
        await self._report(decision, protocol, host, port, method, client)
        if not decision.allowed or method is None:
            return decision
        guard: Decision | None = None
        if protocol is Protocol.HTTPS_CONNECT and self.policy.mode is Mode.LIMITED:
            guard = Decision(False, REASON_MITM_REQUIRED, "mode_guard")
        elif not self.policy.method_allowed(method):
            guard = Decision(False, REASON_METHOD_NOT_ALLOWED, "mode_guard")
        if guard is None:
            return decision
        await self._report(guard, protocol, host, port, method, client)
        return guard

    async def _report(
        self,
        decision: Decision,
        protocol: Protocol,
        host: str,
        port: int,
        method: str | None,
        client: str | None,
    ) -> None:
        behind = self._audit(
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
        if behind is not None:
            await behind

    # ---- HTTP ----------------------------------------------------------------------------

    async def _http(self, conn: socket.socket, client: str | None) -> None:
        parser = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        event = await _next_event(parser, conn)
        if not isinstance(event, h11.Request):
            return
        method = event.method.decode("ascii", "replace").upper()
        if method == "CONNECT":
            await self._connect_tunnel(event, parser, conn, client)
            return
        target = urlsplit(event.target.decode("ascii", "replace"))
        if target.scheme != "http" or not target.hostname:
            await _send_text(conn, 400, "absolute-form http:// URL or CONNECT required", None)
            return
        try:
            port = target.port or 80
        except ValueError:
            await _send_text(conn, 400, "invalid port in the request URL", None)
            return
        host = target.hostname
        decision = await self._judge(Protocol.HTTP, host, port, method, client)
        if not decision.allowed:
            await _send_blocked_json(conn, decision, Protocol.HTTP, host, port)
            return
        upstream = await _connect_http(conn, decision, host, port)
        if upstream is None:
            return
        masked, target_bytes = self.masked, event.target
        rewrite: _Rewrite | None = None
        if masked is not None and masked.intercepts("http", host, port):

            def rewrite(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
                assert masked is not None
                return masked.rewrite("http", host, port, target_bytes, headers)

        with upstream:
            await _forward(event, parser, conn, upstream, rewrite)

    async def _connect_tunnel(
        self, request: h11.Request, parser: h11.Connection, conn: socket.socket, client: str | None
    ) -> None:
        host, port = _split_authority(request.target.decode("ascii", "replace"))
        if host is None or port is None:
            await _send_text(conn, 400, "CONNECT needs host:port", None)
            return
        decision = await self._judge(Protocol.HTTPS_CONNECT, host, port, "CONNECT", client)
        if not decision.allowed:
            await _send_text(conn, 403, blocked_message(decision.reason), decision.reason)
            return
        upstream = await _connect_http(conn, decision, host, port)
        if upstream is None:
            return
        with upstream:
            await pump.send(conn, b"HTTP/1.1 200 OK\r\n\r\n")
            masked = self.masked
            if masked is not None and masked.intercepts("https", host, port):
                from .mitm import intercept

                await intercept(conn, upstream, host, port, masked)
                return
            await pump.send(upstream, parser.trailing_data[0])
            await _both_ways(conn, upstream)

    # ---- SOCKS5 (RFC 1928; CONNECT only) -------------------------------------------------

    async def _socks(self, conn: socket.socket, client: str | None) -> None:
        version, count = await pump.recv_exactly(conn, 2)
        methods = await pump.recv_exactly(conn, count)
        if version != 5:
            return
        if 0 not in methods:
            await pump.send(conn, b"\x05\xff")  # no acceptable method: we offer "no auth"
            return
        await pump.send(conn, b"\x05\x00")
        _, command, _, kind = await pump.recv_exactly(conn, 4)
        if kind == 1:
            host = socket.inet_ntop(socket.AF_INET, await pump.recv_exactly(conn, 4))
        elif kind == 4:
            host = socket.inet_ntop(socket.AF_INET6, await pump.recv_exactly(conn, 16))
        elif kind == 3:
            (length,) = await pump.recv_exactly(conn, 1)
            host = (await pump.recv_exactly(conn, length)).decode("idna")
        else:
            await pump.send(conn, _socks_reply(8))  # address type not supported
            return
        (port,) = struct.unpack("!H", await pump.recv_exactly(conn, 2))
        if command == 3:
            await self._associate(conn)
            return
        if command != 1:
            await pump.send(conn, _socks_reply(7))  # command not supported (BIND)
            return
        decision = await self._judge(Protocol.SOCKS5_TCP, host, port, None, client)
        if not decision.allowed:
            await pump.send(conn, _socks_reply(2))  # connection not allowed by ruleset
            return
        upstream = await pump.connect(decision.addresses, port, CONNECT_TIMEOUT_S)
        if upstream is None:
            await pump.send(conn, _socks_reply(5))  # connection refused
            return
        with upstream:
            await pump.send(conn, _socks_reply(0))
            await _both_ways(conn, upstream)

    async def _associate(self, conn: socket.socket) -> None:
        """UDP ASSOCIATE: the relay's address in the reply, then relaying until the client
        closes this connection. Refused without a UDP socket (``enableSocks5Udp`` false) and
        in limited mode."""
        relay = self._udp
        if relay is None:
            await pump.send(conn, _socks_reply(7))
            return
        if self.policy.mode is Mode.LIMITED:
            await pump.send(conn, _socks_reply(2))
            return
        relay.associate()
        try:
            reply = bytes([5, 0, 0, 1, 127, 0, 0, 1]) + struct.pack("!H", relay.port)
            await pump.send(conn, reply)
            while await pump.recv(conn, 4096):
                pass  # the association lasts as long as this connection
        finally:
            relay.dissociate()

    async def _judge_datagram(self, host: str, port: int, client: str) -> Decision:
        return await self._judge(Protocol.SOCKS5_UDP, host, port, None, client)


_Handler = Callable[[socket.socket, "str | None"], Awaitable[None]]


_Rewrite = Callable[[list[tuple[bytes, bytes]]], list[tuple[bytes, bytes]]]


async def _forward(
    request: h11.Request,
    parser: h11.Connection,
    conn: socket.socket,
    upstream: socket.socket,
    rewrite: _Rewrite | None = None,
) -> None:
    """One request to the origin in origin form (``Connection: close``, hop-by-hop headers
    dropped, the rest through ``rewrite`` when given, the body re-framed by h11), and its
    response spliced back as it comes."""
    split = urlsplit(request.target.decode("ascii", "replace"))
    path = split.path or "/"
    if split.query:
        path += "?" + split.query
    headers = [(n, v) for n, v in request.headers if n.lower() not in _HOP_BY_HOP]
    if parser.they_are_waiting_for_100_continue:
        # Answered here: the origin's answer only comes back after the whole body is sent.
        await pump.send(conn, b"HTTP/1.1 100 Continue\r\n\r\n")
        headers = [(n, v) for n, v in headers if n.lower() != b"expect"]
    if rewrite is not None:
        headers = rewrite(headers)
    headers.append((b"connection", b"close"))
    outgoing = h11.Connection(h11.CLIENT)
    head = h11.Request(method=request.method, target=path, headers=headers)
    await pump.send(upstream, outgoing.send(head) or b"")
    while True:
        event = await _next_event(parser, conn)
        if isinstance(event, h11.Data):
            await pump.send(upstream, outgoing.send(h11.Data(data=event.data)) or b"")
        elif isinstance(event, h11.EndOfMessage):
            await pump.send(upstream, outgoing.send(h11.EndOfMessage()) or b"")
            break
        else:
            return
    await pump.splice(upstream, conn)


async def _both_ways(conn: socket.socket, upstream: socket.socket) -> None:
    """Splice both directions until both have ended."""
    await asyncio.gather(pump.splice(conn, upstream), pump.splice(upstream, conn))


def _socks_reply(code: int) -> bytes:
    return bytes([5, code, 0, 1, 0, 0, 0, 0, 0, 0])


async def _next_event(parser: h11.Connection, conn: socket.socket) -> object:
    while True:
        event = parser.next_event()
        if event is not h11.NEED_DATA:
            return event
        parser.receive_data(await pump.recv(conn, READ_CHUNK))


def _split_authority(authority: str) -> tuple[str | None, int | None]:
    host, sep, port_text = authority.rpartition(":")
    if not sep or not port_text.isdigit() or not host:
        return None, None
    port = int(port_text)
    if not 0 < port < 65536:
        return None, None
    return host.strip("[]"), port


def _address(peer: object) -> str | None:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return None


async def _connect_http(
    conn: socket.socket, decision: Decision, host: str, port: int
) -> socket.socket | None:
    """The connection to an allowed HTTP or CONNECT destination, or None once the client has
    had its 502."""
    upstream = await pump.connect(decision.addresses, port, CONNECT_TIMEOUT_S)
    if upstream is None:
        await _send_text(conn, 502, f"cannot connect to {host}:{port}", None)
    return upstream


async def _send_text(conn: socket.socket, status: int, text: str, reason: str | None) -> None:
    body = text.encode()
    phrase = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway"}[status]
    head = f"HTTP/1.1 {status} {phrase}\r\ncontent-type: text/plain\r\n"
    if reason is not None:
        head += f"x-proxy-error: {blocked_header(reason)}\r\n"
    head += f"content-length: {len(body)}\r\ndate: {_http_date()}\r\n\r\n"
    await pump.send(conn, head.encode() + body)


async def _send_blocked_json(
    conn: socket.socket, decision: Decision, protocol: Protocol, host: str, port: int
) -> None:
    body = json.dumps(
        {
            "status": "blocked",
            "host": host,
            "reason": decision.reason,
            "decision": decision.decision,
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
    await pump.send(conn, head.encode() + body)
