"""The server's own listening sockets, which no proxied child may reach.

A child whose allow list names a loopback or host address would otherwise get, through its
proxy, to the server's control channel (its WebSocket port, metrics, ...). Read from procfs:
the TCP sockets in LISTEN state of this network namespace whose inodes are this process's
descriptors. Cached for :data:`CACHE_S` (listeners come and go rarely).
"""

from __future__ import annotations

import ipaddress
import os
import time

CACHE_S = 1.0

_LISTEN = "0A"
_cache: tuple[float, frozenset[tuple[str, int]]] = (-1.0, frozenset())


def own_listeners() -> frozenset[tuple[str, int]]:
    """``(address, port)`` of every TCP socket this process listens on."""
    global _cache
    now = time.monotonic()
    if now - _cache[0] < CACHE_S:
        return _cache[1]
    inodes = _socket_inodes()
    found: set[tuple[str, int]] = set()
    for table, width in (("/proc/self/net/tcp", 4), ("/proc/self/net/tcp6", 16)):
        try:
            with open(table, encoding="ascii") as rows:
                next(rows, None)
                for row in rows:
                    fields = row.split()
                    if len(fields) > 9 and fields[3] == _LISTEN and fields[9] in inodes:
                        found.add(_decode(fields[1], width))
        except OSError:
            continue
    _cache = (now, frozenset(found))
    return _cache[1]


def reaches_own_listener(address: str, port: int) -> bool:
    """Whether connecting to ``address:port`` would land on one of the server's listeners
    (the same address, or a wildcard one on that port)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for listen_address, listen_port in own_listeners():
        if listen_port != port:
            continue
        listening = ipaddress.ip_address(listen_address)
        if listening.is_unspecified or listening == ip:
            return True
        if isinstance(listening, ipaddress.IPv6Address) and listening.ipv4_mapped == ip:
            return True
    return False


def _socket_inodes() -> set[str]:
    inodes: set[str] = set()
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return inodes
    for name in names:
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _decode(field: str, width: int) -> tuple[str, int]:
    """procfs ``ADDR:PORT`` (hex, the address in host-order 32-bit words) as text and int."""
    address_hex, port_hex = field.split(":")
    raw = bytes.fromhex(address_hex)
    packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(packed if width == 16 else packed[:4])), int(port_hex, 16)
