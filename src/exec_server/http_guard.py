"""Keeping ``http/request`` off networks the operator denies (``--http-deny CIDR``).

The check must see the address a connection really goes to, after DNS resolution, and again
for every redirect. So it sits where connections are made: an httpcore network backend that
resolves the host itself, drops every address inside a denied network, and connects only
to one that is left (to the checked address itself, so a DNS answer that changes between the
check and the connect cannot slip past). TLS still verifies the certificate against the
host name of the URL. An httpx transport over an httpcore pool with that backend carries
the requests; environment proxies are not used with it, since a proxy would make the
connection on the client's behalf, out of sight of the check.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httpcore
import httpx

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


UNSPECIFIED: tuple[Network, ...] = (
    ipaddress.ip_network("0.0.0.0/8"),
    ipaddress.ip_network("::/128"),
    ipaddress.ip_network("::ffff:0.0.0.0/104"),
)
"""Addresses that mean "this host" when dialled: Linux connects ``0.0.0.0``/``::`` (and
``0``, which resolves to ``0.0.0.0``) to a loopback listener, so they reach what a denied
``127.0.0.0/8`` or ``::1/128`` protects."""


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """CIDRs (``10.0.0.0/8``, ``::1/128``) or single addresses; ValueError for a bad one.

    When any network is denied, the unspecified addresses (:data:`UNSPECIFIED`) are denied
    too: they are never a legitimate destination, and they reach this host's own services."""
    networks = tuple(ipaddress.ip_network(value, strict=False) for value in values)
    return (*networks, *UNSPECIFIED) if networks else networks


class DeniedDestination(httpcore.ConnectError):
    """Every address the host resolves to is in a denied network."""


def _is_denied(address: str, deny: tuple[Network, ...]) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return any(ip in network or (mapped is not None and mapped in network) for network in deny)


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Connects only to addresses outside ``deny``; see the module docstring."""

    def __init__(self, deny: tuple[Network, ...]) -> None:
        self._deny = deny
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self._resolve(host, port)
        allowed = [a for a in addresses if not _is_denied(a, self._deny)]
        if not allowed:
            shown = ", ".join(addresses) or "no address"
            raise DeniedDestination(
                f"destination {host} ({shown}) is in a network this server denies (--http-deny)"
            )
        last_error: Exception | None = None
        for address in allowed:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                last_error = exc
        assert last_error is not None
        raise last_error

    async def _resolve(self, host: str, port: int) -> list[str]:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host.strip("[]"), port, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
        seen: dict[str, None] = {}
        for _, _, _, _, sockaddr in infos:
            seen.setdefault(str(sockaddr[0]), None)
        return list(seen)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise DeniedDestination("Unix sockets are not reachable through http/request")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport over an httpcore pool whose connections pass the guard."""

    def __init__(self, deny: tuple[Network, ...], tls: ssl.SSLContext) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=tls, network_backend=GuardedBackend(deny)
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        try:
            response = await self._pool.handle_async_request(core_request)
        except httpcore.TimeoutException as exc:
            raise httpx.TimeoutException(str(exc), request=request) from exc
        except httpcore.ConnectError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        except httpcore.NetworkError as exc:
            raise httpx.NetworkError(str(exc), request=request) from exc
        except httpcore.ProtocolError as exc:
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, response: httpcore.Response) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for part in self._response.aiter_stream():
                yield part
        except httpcore.TimeoutException as exc:
            raise httpx.ReadTimeout(str(exc)) from exc
        except httpcore.NetworkError as exc:
            raise httpx.ReadError(str(exc)) from exc
        except httpcore.ProtocolError as exc:
            raise httpx.RemoteProtocolError(str(exc)) from exc

    async def aclose(self) -> None:
        await self._response.aclose()


# ---- the same check for other connections the server makes (port forwarding) ---------------


def is_denied(address: str, deny: tuple[Network, ...]) -> bool:
    """Whether an IP address (text; an IPv6 zone allowed) lies in one of ``deny``'s networks;
    an IPv4-mapped IPv6 address counts as the IPv4 address it carries."""
    return _is_denied(address, deny)
