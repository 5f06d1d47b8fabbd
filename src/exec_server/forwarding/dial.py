"""Connecting to a forward's destination under the operator's rules.

As ``http/request`` does (``http_guard.py``), the name is resolved here, every address in a
network the operator denies (``--http-deny``) is dropped, and the connection goes to one of
the checked addresses itself, so a DNS answer that changes between the check and the connect
cannot slip past.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from collections.abc import Callable
from typing import TypeVar

from .errors import ConnectFailed, StreamRefused

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
P = TypeVar("P", bound=asyncio.BaseProtocol)


async def resolve(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to, in the resolver's order, without repeats."""
    try:
        return [str(ipaddress.ip_address(host.strip("[]")))]  # an address: no resolver thread
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM
        )
    except OSError as exc:
        raise ConnectFailed(f"cannot resolve {host}: {exc.strerror or exc}") from None
    seen: dict[str, None] = {}
    for _, _, _, _, sockaddr in infos:
        seen.setdefault(str(sockaddr[0]), None)
    return list(seen)


def allowed_addresses(host: str, addresses: list[str], deny: tuple[Network, ...]) -> list[str]:
    """``addresses`` less those in a denied network; :class:`StreamRefused` if none is left."""
    if not deny:
        return addresses
    from ..http_guard import is_denied  # loads httpx: only when there is a rule

    allowed = [address for address in addresses if not is_denied(address, deny)]
    if not allowed:
        shown = ", ".join(addresses) or "no address"
        raise StreamRefused(
            f"destination {host} ({shown}) is in a network this server denies (--http-deny)"
        )
    return allowed


async def dial(
    host: str,
    port: int,
    deny: tuple[Network, ...],
    make_protocol: Callable[[], P],
    timeout_s: float,
) -> tuple[asyncio.Transport, P]:
    """A TCP connection to ``host:port`` through one of its allowed addresses, tried in the
    resolver's order; ``timeout_s`` bounds the whole attempt."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout_s):
            addresses = allowed_addresses(host, await resolve(host, port), deny)
            last: OSError | None = None
            for address in addresses:
                try:
                    transport, protocol = await loop.create_connection(make_protocol, address, port)
                except OSError as exc:
                    last = exc
                    continue
                return transport, protocol
    except TimeoutError:
        raise ConnectFailed(
            f"cannot connect to {host}:{port}: timed out after {timeout_s:g} s"
        ) from None
    assert last is not None
    reason = os.strerror(last.errno) if last.errno else str(last)
    raise ConnectFailed(f"cannot connect to {host}:{port}: {reason}")
