"""Whether a connecting peer is one of this server's own sandboxed descendants, which are
never served, token or not (issue 17: a network-enabled sandbox shares the host's loopback,
so without this it could reach a token-less ``ws://127.0.0.1`` listener and start
unsandboxed processes).

A sandboxed descendant is a process in the tree of one of the sandboxes this server runs:
below a bubblewrap launcher the process manager started (``sandbox_pids``, asked only when
needed), whose namespaces, and so everything inside them, end with it. The peer is found by
its socket:

* Unix socket: the kernel names the peer's pid (``SO_PEERCRED``, in our PID namespace).
* TCP: the peer's socket is looked up by its address pair in ``/proc/net/tcp`` (or
  ``tcp6``) of our network namespace, which a network-enabled sandbox shares; its inode is
  then looked for among the descriptors of the sandboxes' processes. A remote peer's
  socket is not in the table: it is never taken for one of ours.

All of it reads ``/proc``, and only the sandboxes' trees: with no sandbox running, a peer
costs nothing here; the server's other children are never walked (bench/README.md,
"Operating it").
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import struct
import sys
from collections.abc import Callable, Iterable
from typing import Any


def is_sandboxed_descendant(sock: Any, sandbox_pids: Callable[[], Iterable[int]]) -> bool:
    """Whether the peer of the accepted socket ``sock`` (a socket or asyncio's wrapper of
    one) runs in one of the sandboxes below ``sandbox_pids()`` (their launchers). Blocking
    reads of ``/proc``, none while no sandbox runs."""
    if sock.family not in (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6):
        return False
    roots = list(sandbox_pids())
    if not roots:
        return False
    if sock.family == socket.AF_UNIX:
        return _unix_peer_pid(sock) in _trees(roots)
    # The peer's socket first: a remote peer (not in this namespace's table) is never ours,
    # and is told so without walking the sandboxes.
    inode = _tcp_peer_inode(sock)
    if inode is None:
        return False
    return any(_holds_socket(pid, inode) for pid in _trees(roots))


def _trees(roots: list[int]) -> set[int]:
    """``roots`` and every process below them."""
    found: set[int] = set()
    pending = list(roots)
    while pending:
        pid = pending.pop()
        if pid not in found:
            found.add(pid)
            pending += _children(pid)
    return found


def _children(pid: int) -> list[int]:
    children: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children") as f:
                children += [int(child) for child in f.read().split()]
    return children


def _unix_peer_pid(sock: Any) -> int | None:
    try:
        credentials = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    except OSError:
        return None
    pid, _uid, _gid = struct.unpack("3i", credentials)
    return int(pid)


def _tcp_peer_inode(sock: Any) -> int | None:
    """The inode of the peer's end of the TCP connection ``sock``, if it is on this host."""
    try:
        ours, theirs = sock.getsockname(), sock.getpeername()
    except OSError:
        return None
    wanted = (_endpoint(theirs[0], theirs[1]), _endpoint(ours[0], ours[1]))
    # The ports as the table writes them: only rows with both are parsed (the table also
    # holds every recent connection in TIME_WAIT, thousands on a scraped server).
    ports = (f":{theirs[1]:04X}", f":{ours[1]:04X}")
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):  # a mapped IPv4 peer is in the first
        try:
            with open(table) as rows:
                next(rows, None)  # the header
                for row in rows:
                    if ports[0] not in row:
                        continue
                    fields = row.split()
                    if not (fields[1].endswith(ports[0]) and fields[2].endswith(ports[1])):
                        continue
                    if (_parse(fields[1]), _parse(fields[2])) == wanted:
                        return int(fields[9])
        except OSError:
            continue
    return None


def _endpoint(host: str, port: int) -> tuple[bytes, int]:
    return _packed(ipaddress.ip_address(host.split("%", 1)[0])), port


def _packed(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    """IPv4-mapped IPv6 addresses as the IPv4 address they carry."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.packed
    return address.packed


def _parse(field: str) -> tuple[bytes, int]:
    """``0100007F:1F90`` (the address as 32-bit words in host byte order) as (packed
    address, port)."""
    address, port = field.split(":")
    raw = bytes.fromhex(address)
    if sys.byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return _packed(ipaddress.ip_address(raw)), int(port, 16)


def _holds_socket(pid: int, inode: int) -> bool:
    """Whether a thread of ``pid`` holds the socket (threads may have fd tables of their
    own, so each is looked at)."""
    wanted = f"socket:[{inode}]"
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for tid in threads:
        directory = f"/proc/{pid}/task/{tid}/fd"
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            with contextlib.suppress(OSError):
                if os.readlink(f"{directory}/{name}") == wanted:
                    return True
    return False
