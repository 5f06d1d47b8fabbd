"""One process's managed network, from before its spawn to its exit.

The child runs in a network namespace of its own (bubblewrap's ``--unshare-net``: only a
loopback). Its first program, ``entry.py``, binds the proxy ports on that loopback and hands
the listening sockets out through a Unix socket (bind-mounted read-only into the sandbox at
:data:`INSIDE_DIR`); this server accepts on them, so the proxy is the only thing the child can
connect to, and every connection it makes lands in :class:`~.proxy.EgressProxy`.

The hand-over socket accepts one connection, from a descendant of the child (checked with
``SO_PEERCRED``), then is removed; it is removed too when the server gives the hand-over up
(:data:`HANDOVER_TIMEOUT_S`, or unexpected sockets), so the child's entry fails at once (exit
status 126, the reason on its stderr) rather than waiting for a go-ahead: a child never runs
without its proxy, nor is it left blocked. :meth:`ManagedNetwork.close` tears everything down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import socket
import struct
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from . import pump
from .env import proxy_environment
from .policy import NetworkPolicy
from .providers import Provider
from .proxy import Audit, Decider, EgressProxy

INSIDE_DIR = "/dev/exec-server-network"
"""Where the hand-over socket's directory appears in the sandbox (under bubblewrap's fresh
``/dev``, which exists whatever the profile hides)."""

HANDOVER_TIMEOUT_S = 30.0
"""How long the child has to hand its sockets over before its proxy is given up."""

_SOCKET_NAME = "handover.sock"
_BUNDLE_NAME = "ca-bundle.pem"
_PORT_RANGE = (20000, 60000)
_ENTRY_SOURCE = (Path(__file__).with_name("entry.py")).read_text(encoding="utf-8")

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """What the client asked for, decoded: the policy, and whether SOCKS5 is wanted."""

    policy: NetworkPolicy
    socks5: bool
    allow_local_binding: bool
    socks5_udp: bool = False
    """SOCKS5 UDP ASSOCIATE too (a UDP socket on the SOCKS port, inside the namespace)."""
    decider: Decider | None = None
    """Asks the client about misses and review domains (``networkProxyReviewDomains``)."""
    credential_masking: bool = False
    """The child sees dummies of the built-in providers' tokens (``credentials.py``)."""
    credential_providers: tuple[Provider, ...] = ()
    """Custom providers masked too (``providers.py``), with ``credential_masking`` only."""


class ManagedNetwork:
    """The proxies of one process: ports and variables first, the sockets after the spawn."""

    def __init__(self, settings: ProxySettings, audit: Audit) -> None:
        self.settings = settings
        self.proxy = EgressProxy(settings.policy, audit, decider=settings.decider)
        first = _PORT_RANGE[0] + secrets.randbelow(_PORT_RANGE[1] - _PORT_RANGE[0])
        self.http_port = first
        self.socks_port = first + 1 if settings.socks5 else None
        self._udp = settings.socks5 and settings.socks5_udp
        self._dir = tempfile.mkdtemp(prefix="exec-server-net-")
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(os.path.join(self._dir, _SOCKET_NAME))
        self._listener.listen(4)
        self._listener.setblocking(False)
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def environment(self) -> dict[str, str]:
        """The variables that point the child at its proxies."""
        return proxy_environment(self.http_port, self.socks_port, self.settings.allow_local_binding)

    def child_environment(self, env: Mapping[str, str]) -> dict[str, str]:
        """``env`` as the child gets it: the proxy variables set and, with credential
        masking, the credentials replaced by dummies and the CA variables pointing at a
        bundle that trusts the proxy (written beside the hand-over socket)."""
        result = {**env, **self.environment()}
        if not self.settings.credential_masking:
            return result
        from . import mitm
        from .credentials import mask_environment

        masked = mask_environment(result, self.settings.credential_providers)
        self.proxy.masked = masked
        mitm.write_bundle(os.path.join(self._dir, _BUNDLE_NAME))
        inside = f"{INSIDE_DIR}/{_BUNDLE_NAME}"
        return {**masked.env, **dict.fromkeys(mitm.CA_ENV_KEYS, inside)}

    def entry_argv(self, env: Mapping[str, str]) -> list[str]:
        """The argv prefix that runs ``entry.py`` before the command (``--`` last), for a
        child whose environment is ``env``."""
        ports = [f"tcp:{self.http_port}"]
        if self.socks_port is not None:
            ports.append(f"tcp:{self.socks_port}")
            if self._udp:
                ports.append(f"udp:{self.socks_port}")
        interpreter = os.path.realpath(sys.executable)
        channel = f"{INSIDE_DIR}/{_SOCKET_NAME}"
        lc_ctype = "=" + env["LC_CTYPE"] if "LC_CTYPE" in env else "-"
        return [interpreter, "-I", "-S", "-c", _ENTRY_SOURCE, channel, lc_ctype, *ports, "--"]

    def mounts(self, hidden: Callable[[str], bool]) -> list[str]:
        """bubblewrap arguments: the hand-over directory, and the interpreter and its
        standard library read-only where the profile hides them (``hidden(path)``)."""
        args = ["--ro-bind", self._dir, INSIDE_DIR]
        paths = sysconfig.get_paths()
        for path in (os.path.realpath(sys.executable), paths["stdlib"], paths["platstdlib"]):
            real = os.path.realpath(path)
            if os.path.exists(real) and hidden(real):
                args += ["--ro-bind", real, real]
        return args

    def start(self, child_pid: int) -> None:
        """The child is spawned: wait for its sockets and serve them (in a task this
        object owns; :meth:`close` cancels it)."""
        if not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._serve(child_pid))

    def close(self) -> None:
        """Stop the proxies and remove the hand-over socket; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        self.proxy.close()
        self._listener.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    async def _serve(self, child_pid: int) -> None:
        try:
            listeners = await asyncio.wait_for(self._handover(child_pid), HANDOVER_TIMEOUT_S)
        except (TimeoutError, OSError) as error:
            log.warning("managed network of pid %d not started: %s", child_pid, error)
            self._end_handover()  # the entry, connected or not yet, fails instead of waiting
            return
        self.proxy.serve_http(listeners[0])
        if len(listeners) > 1:
            self.proxy.serve_socks(listeners[1], listeners[2] if len(listeners) > 2 else None)

    async def _handover(self, child_pid: int) -> list[socket.socket]:
        """The child's listening sockets, from the first connection its tree makes."""
        loop = asyncio.get_running_loop()
        wanted = 1 if self.socks_port is None else 3 if self._udp else 2
        while True:
            channel, _ = await loop.sock_accept(self._listener)
            with channel:
                if not _descends_from(_peer_pid(channel), child_pid):
                    continue  # someone else's process found the path: not theirs to use
                channel.setblocking(False)
                await pump.readable(channel.fileno())
                _, fds, _, _ = socket.recv_fds(channel, 16, wanted)
                listeners = [socket.socket(fileno=fd) for fd in fds]
                kinds = [socket.SOCK_STREAM, socket.SOCK_STREAM, socket.SOCK_DGRAM][:wanted]
                if len(listeners) != wanted or not all(map(_is_bound, listeners, kinds)):
                    for listener in listeners:
                        listener.close()
                    raise OSError("the child handed over unexpected sockets")
                for listener in listeners:
                    listener.setblocking(False)
                self._end_handover()
                await pump.send(channel, b"K")
                return listeners

    def _end_handover(self) -> None:
        """Take no more hand-overs: close the socket (a connection still queued on it is
        reset) and remove its path (a later one is refused)."""
        self._listener.close()
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(self._dir, _SOCKET_NAME))


def _peer_pid(channel: socket.socket) -> int:
    credentials = channel.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    pid, _, _ = struct.unpack("3i", credentials)
    return int(pid)


def _descends_from(pid: int, ancestor: int, depth: int = 16) -> bool:
    """Whether ``pid`` is ``ancestor`` or below it (parents read from /proc)."""
    for _ in range(depth):
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            return False
        pid = int(fields[1])
    return False


def _is_bound(sock: socket.socket, kind: socket.SocketKind) -> bool:
    """An IPv4 socket of ``kind``: listening for TCP, bound for UDP."""
    try:
        if sock.family != socket.AF_INET or sock.type != kind:
            return False
        return kind == socket.SOCK_DGRAM or bool(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        )
    except OSError:
        return False
