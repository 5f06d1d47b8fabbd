"""The server's own listening sockets, which no proxied child may reach.

A child whose allow list names a loopback or host address would otherwise get, through its
proxy, to the server's control channel (its WebSocket port, metrics, ...). Found by asking
each of this process's socket descriptors (listed in procfs) whether it listens, and where;
cached for :data:`CACHE_S` (a scan costs about a millisecond per few hundred descriptors;
the server's listeners exist before any child does, so a stale cache misses nothing in
practice; :func:`forget` drops it when a listener is opened later).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import time

CACHE_S = 1.0

_cache: tuple[float, frozenset[tuple[str, int]]] = (-1.0, frozenset())


def own_listeners() -> frozenset[tuple[str, int]]:
    """``(address, port)`` of every TCP socket this process listens on."""
    global _cache
    now = time.monotonic()
    if now - _cache[0] < CACHE_S:
        return _cache[1]
    found: set[tuple[str, int]] = set()
    for fd in _socket_fds():
        try:
            sock = socket.socket(fileno=fd)  # borrowed: detached below, never closed here
        except OSError:
            continue
        try:
            inet = sock.family in (socket.AF_INET, socket.AF_INET6)
            tcp = inet and sock.type == socket.SOCK_STREAM
            if tcp and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                address, port = sock.getsockname()[:2]
                found.add((str(address), int(port)))
        except OSError:
            pass
        finally:
            sock.detach()
    _cache = (now, frozenset(found))
    return _cache[1]


def forget() -> None:
    """Drop the cache: the next check scans again (call it after opening a listener)."""
    global _cache
    _cache = (-1.0, frozenset())


def reaches_own_listener(address: str, port: int) -> bool:
    """Whether connecting to ``address:port`` would land on one of the server's listeners
    (the same address, or a wildcard one on that port; the unspecified address, which Linux
    connects to loopback, reaches any of them)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for listen_address, listen_port in own_listeners():
        if listen_port != port:
            continue
        if ip.is_unspecified:
            return True
        listening = ipaddress.ip_address(listen_address.split("%", 1)[0])
        if listening.is_unspecified or listening == ip:
            return True
        if isinstance(listening, ipaddress.IPv6Address) and listening.ipv4_mapped == ip:
            return True
    return False


def _socket_fds() -> list[int]:
    """This process's descriptors that are sockets."""
    fds: list[int] = []
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return fds
    for name in names:
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("socket:["):
                fds.append(int(name))
        except (OSError, ValueError):
            continue
    return fds
