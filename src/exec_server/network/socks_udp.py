"""SOCKS5 UDP ASSOCIATE (RFC 1928 §7) for one child: datagrams the child sends to the UDP
socket beside its SOCKS port are judged per destination and sent on from the server's side;
answers come back wrapped in the SOCKS UDP header.

The UDP socket is bound inside the child's namespace (like the TCP listeners); datagrams are
relayed only while at least one association (a SOCKS TCP connection that asked for it) is
open. Each child source address gets its own outbound socket, closed with the last
association. Fragments (``FRAG`` ≠ 0) are dropped, as the RFC allows.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from . import pump
from .policy import Decision

MAX_DATAGRAM = 65535
MAX_SOURCES = 64
"""Child source addresses relayed at once (each has a server-side socket)."""
MAX_VERDICTS = 4096
"""Remembered verdicts per association; past it they are forgotten (and asked again)."""

Judge = Callable[[str, int, str], Awaitable[Decision]]
"""The verdict on ``host:port`` for a datagram from ``client`` (audited by the caller)."""
Spawn = Callable[[Coroutine[Any, Any, None]], None]


def parse_header(datagram: bytes) -> tuple[str, int, bytes] | None:
    """``(host, port, payload)`` of a client's datagram; None when it is not one we relay."""
    if len(datagram) < 4 or datagram[:2] != b"\0\0" or datagram[2] != 0:
        return None
    kind, rest = datagram[3], datagram[4:]
    try:
        if kind == 1:
            host, rest = socket.inet_ntop(socket.AF_INET, rest[:4]), rest[4:]
        elif kind == 4:
            host, rest = socket.inet_ntop(socket.AF_INET6, rest[:16]), rest[16:]
        elif kind == 3 and rest:
            length = rest[0]
            host, rest = rest[1 : 1 + length].decode("idna"), rest[1 + length :]
        else:
            return None
    except (ValueError, UnicodeError, OSError):
        return None
    if len(rest) < 2:
        return None
    (port,) = struct.unpack("!H", rest[:2])
    return host, port, rest[2:]


def header(address: str, port: int) -> bytes:
    """The SOCKS UDP header for an answer from ``address:port``."""
    if ":" in address:
        return b"\0\0\0\x04" + socket.inet_pton(socket.AF_INET6, address) + struct.pack("!H", port)
    return b"\0\0\0\x01" + socket.inet_pton(socket.AF_INET, address) + struct.pack("!H", port)


class UdpRelay:
    """The UDP side of one child's SOCKS5 proxy."""

    def __init__(self, inside: socket.socket, judge: Judge, spawn: Spawn) -> None:
        inside.setblocking(False)
        self._inside = inside
        self._judge = judge
        self._spawn = spawn
        self._associations = 0
        self._outbound: dict[tuple[str, int], socket.socket] = {}
        self._verdicts: dict[tuple[tuple[str, int], str, int], Decision] = {}
        self._spawn(self._relay())

    @property
    def port(self) -> int:
        """The port the child sends its datagrams to."""
        return int(self._inside.getsockname()[1])

    def associate(self) -> None:
        """A SOCKS connection asked for UDP: relay until :meth:`dissociate`."""
        self._associations += 1

    def dissociate(self) -> None:
        """Its connection ended; with the last one, outbound sockets and verdicts go."""
        self._associations -= 1
        if self._associations == 0:
            self._drop_outbound()

    def close(self) -> None:
        """The process is gone (the tasks are cancelled by their owner)."""
        self._associations = 0
        self._drop_outbound()
        self._inside.close()

    def _drop_outbound(self) -> None:
        for sock in self._outbound.values():
            sock.close()  # its reader task ends on the error
        self._outbound.clear()
        self._verdicts.clear()

    async def _relay(self) -> None:
        while True:
            await pump.readable(self._inside.fileno())
            try:
                datagram, source = self._inside.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                return
            parsed = parse_header(datagram) if self._associations else None
            if parsed is not None:
                await self._send_on((source[0], source[1]), *parsed)

    async def _send_on(self, source: tuple[str, int], host: str, port: int, payload: bytes) -> None:
        key = (source, host, port)
        decision = self._verdicts.get(key)
        if decision is None:
            decision = await self._judge(host, port, f"{source[0]}:{source[1]}")
            if len(self._verdicts) >= MAX_VERDICTS:
                self._verdicts.clear()
            self._verdicts[key] = decision
        if not decision.allowed or not decision.addresses:
            return
        address = decision.addresses[0]
        outbound = self._outbound.get(source)
        if outbound is None:
            if len(self._outbound) >= MAX_SOURCES:
                return  # a child spraying source ports gets no more server sockets
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            outbound = socket.socket(family, socket.SOCK_DGRAM)
            outbound.setblocking(False)
            self._outbound[source] = outbound
            self._spawn(self._answers(source, outbound))
        with contextlib.suppress(OSError):  # a full buffer or an unreachable host: dropped
            outbound.sendto(payload, (address, port))

    async def _answers(self, source: tuple[str, int], outbound: socket.socket) -> None:
        while self._outbound.get(source) is outbound:
            try:
                await pump.readable(outbound.fileno())
                data, sender = outbound.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                continue
            except (OSError, ValueError):
                return  # closed
            with contextlib.suppress(OSError):
                self._inside.sendto(header(sender[0], sender[1]) + data, source)
