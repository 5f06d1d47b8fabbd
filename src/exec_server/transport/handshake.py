"""Who may open a WebSocket here: the one place an HTTP handshake is judged (Part A §A3).

In order: only ``/`` upgrades (``/readyz``, ``/healthz`` and ``/metrics`` are answered as
plain HTTP, see :class:`Probes`; any other path is 404);
a browser ``Origin`` that is not explicitly allowed is refused, so a web page cannot run
commands here; on a loopback bind a ``Host`` that is not a loopback name is refused, so DNS
rebinding cannot get around that; and when the server has a token, the request must carry
it as ``Authorization: Bearer <token>`` (compared in constant time), or it gets 401 before
any JSON-RPC. ``/readyz`` and ``/healthz`` pass the Origin and Host checks too, but need no
token; ``/metrics`` needs the token unless the operator made it public (``--metrics-public``).
While the server drains ``/readyz`` gets 503; an upgrade still succeeds, so that a client can
resume its session, but ``initialize`` refuses a new one.
"""

from __future__ import annotations

import hmac
import http
from typing import Protocol

import msgspec
from websockets.http11 import Request

READY_PATH = "/readyz"
HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"
UPGRADE_PATH = "/"
_PATHS = (UPGRADE_PATH, READY_PATH, HEALTH_PATH, METRICS_PATH)


class Probes(Protocol):
    """What the HTTP endpoints ask the server (``server.Server`` answers)."""

    @property
    def draining(self) -> bool:
        """True once the server takes no new sessions (SIGTERM)."""

    def liveness_problem(self) -> str | None:
        """None while the server is alive and well, else what is wrong."""

    def metrics_exposition(self) -> tuple[bytes, str]:
        """The metrics as Prometheus text, and its content type."""


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
    metrics_public: bool = False
    """Whether ``/metrics`` may be read without the token (``--metrics-public``)."""

    @classmethod
    def for_bind(
        cls,
        host: str | None,
        allowed_origins: frozenset[str] = frozenset(),
        token: str | None = None,
        metrics_public: bool = False,
    ) -> HandshakePolicy:
        """On a loopback bind only loopback names are accepted in ``Host``; ``host`` None
        is a Unix socket."""
        token_bytes = token.encode() if token is not None else None
        if host is not None and _is_loopback(host):
            hosts = frozenset({host, "localhost", "127.0.0.1", "::1"})
            return cls(allowed_origins, hosts, token_bytes, metrics_public)
        return cls(allowed_origins, None, token_bytes, metrics_public)


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


def judge(
    request: Request, policy: HandshakePolicy, probes: Probes | None = None
) -> Refusal | None:
    """The answer to a handshake that must not upgrade, or None when it may.

    A probe that passes is "refused" with its answer (200, or 503): it is answered, not
    upgraded. Without ``probes`` only ``/readyz`` is known, and always ready.
    """
    path = request.path.partition("?")[0]
    if path not in _PATHS or (probes is None and path in (HEALTH_PATH, METRICS_PATH)):
        return Refusal(http.HTTPStatus.NOT_FOUND, "not found\n")
    origin = request.headers.get("Origin")
    if origin is not None and origin not in policy.allowed_origins:
        return Refusal(http.HTTPStatus.FORBIDDEN, f"origin {origin} is not allowed\n")
    if policy.allowed_hosts is not None:
        host = host_name(request.headers.get("Host", "")).lower()
        if host not in policy.allowed_hosts:
            return Refusal(http.HTTPStatus.FORBIDDEN, f"host {host or '(none)'} is not allowed\n")
    if path in (READY_PATH, HEALTH_PATH):
        return _probe(path, probes)
    public = path == METRICS_PATH and policy.metrics_public
    if policy.token is not None and not public and not _has_token(request, policy.token):
        return Refusal(
            http.HTTPStatus.UNAUTHORIZED,
            "a bearer token is required: send `Authorization: Bearer <token>`\n",
            (("WWW-Authenticate", 'Bearer realm="exec-server"'),),
        )
    if path == METRICS_PATH and probes is not None:
        body, content_type = probes.metrics_exposition()
        return Refusal(http.HTTPStatus.OK, body.decode(), (("Content-Type", content_type),))
    if "upgrade" not in request.headers.get("Connection", "").lower():
        return Refusal(http.HTTPStatus.NOT_FOUND, "not found\n")
    return None


def _probe(path: str, probes: Probes | None) -> Refusal:
    """``/readyz``: 503 while draining; ``/healthz``: 503 when the event loop stalled (a loop
    that is stuck answers nothing, which a probe counts as a failure too)."""
    if probes is None:
        return Refusal(http.HTTPStatus.OK, "ok\n")
    if path == READY_PATH and probes.draining:
        return Refusal(http.HTTPStatus.SERVICE_UNAVAILABLE, "draining\n")
    if path == HEALTH_PATH and (problem := probes.liveness_problem()) is not None:
        return Refusal(http.HTTPStatus.SERVICE_UNAVAILABLE, problem + "\n")
    return Refusal(http.HTTPStatus.OK, "ok\n")


def _has_token(request: Request, token: bytes) -> bool:
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(presented.strip().encode(), token)
