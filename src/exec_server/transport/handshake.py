"""Who may open a WebSocket here: the one place an HTTP handshake is judged (Part A §A3).

In order: only ``/`` upgrades (``/readyz`` answers 200 to a probe; any other path is 404);
a browser ``Origin`` that is not explicitly allowed is refused, so a web page cannot run
commands here; on a loopback bind a ``Host`` that is not a loopback name is refused, so DNS
rebinding cannot get around that; and when the server has a token, the request must carry
it as ``Authorization: Bearer <token>`` (compared in constant time), or it gets 401 before
any JSON-RPC. ``/readyz`` passes the Origin and Host checks too, but needs no token.
"""

from __future__ import annotations

import hmac
import http

import msgspec
from websockets.http11 import Request

READY_PATH = "/readyz"
UPGRADE_PATH = "/"


class HandshakePolicy(msgspec.Struct, frozen=True):
    """The rules of one listener.

    ``allowed_hosts``: the names a ``Host`` header may carry, or None to accept any (a
    non-loopback bind, where the server's own DNS name is unknown to us, or a Unix socket,
    which no browser can reach). ``token``: the bearer token every client must present, or
    None for none.
    """

    allowed_origins: frozenset[str] = frozenset()
    allowed_hosts: frozenset[str] | None = None
    token: bytes | None = None

    @classmethod
    def for_bind(
        cls,
        host: str | None,
        allowed_origins: frozenset[str] = frozenset(),
        token: str | None = None,
    ) -> HandshakePolicy:
        """On a loopback bind only loopback names are accepted in ``Host``; ``host`` None
        is a Unix socket."""
        token_bytes = token.encode() if token is not None else None
        if host is not None and _is_loopback(host):
            hosts = frozenset({host, "localhost", "127.0.0.1", "::1"})
            return cls(allowed_origins, hosts, token_bytes)
        return cls(allowed_origins, None, token_bytes)


class Refusal(msgspec.Struct, frozen=True):
    status: http.HTTPStatus
    body: str
    headers: tuple[tuple[str, str], ...] = ()


def _is_loopback(host: str) -> bool:
    import ipaddress

    return ipaddress.ip_address(host).is_loopback


def host_name(header: str) -> str:
    """``Host`` without its port: ``[::1]:80`` -> ``::1``, ``localhost:80`` -> ``localhost``."""
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def judge(request: Request, policy: HandshakePolicy) -> Refusal | None:
    """The answer to a handshake that must not upgrade, or None when it may.

    A ``/readyz`` probe that passes is refused with 200: it is answered, not upgraded.
    """
    path = request.path.partition("?")[0]
    if path not in (UPGRADE_PATH, READY_PATH):
        return Refusal(http.HTTPStatus.NOT_FOUND, "not found\n")
    origin = request.headers.get("Origin")
    if origin is not None and origin not in policy.allowed_origins:
        return Refusal(http.HTTPStatus.FORBIDDEN, f"origin {origin} is not allowed\n")
    if policy.allowed_hosts is not None:
        host = host_name(request.headers.get("Host", "")).lower()
        if host not in policy.allowed_hosts:
            return Refusal(http.HTTPStatus.FORBIDDEN, f"host {host or '(none)'} is not allowed\n")
    if path == READY_PATH:
        return Refusal(http.HTTPStatus.OK, "ok\n")
    if policy.token is not None and not _has_token(request, policy.token):
        return Refusal(
            http.HTTPStatus.UNAUTHORIZED,
            "a bearer token is required: send `Authorization: Bearer <token>`\n",
            (("WWW-Authenticate", 'Bearer realm="exec-server"'),),
        )
    if "upgrade" not in request.headers.get("Connection", "").lower():
        return Refusal(http.HTTPStatus.NOT_FOUND, "not found\n")
    return None


def _has_token(request: Request, token: bytes) -> bool:
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(presented.strip().encode(), token)
