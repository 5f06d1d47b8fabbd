"""``http/request``: HTTP made from the server's machine for the client (PROTOCOL.md Part B §4.6).

Requests go through httpx. The request is validated before anything is sent (-32602 with the
reference's wording), ``timeoutMs`` bounds the whole exchange including the body (as the
reference's client does), and with ``streamResponse`` the reply carries status and headers
while the body follows as ``http/request/bodyDelta`` notifications, numbered from 1, the last
one ``done: true`` (with ``error`` when the body failed).

Bodies pass through untouched: no ``Accept-Encoding`` is added and nothing is decompressed,
so the bytes and the ``content-encoding`` header a client sees always agree.

Body streams belong to the connection that asked for them: they wait for room in its
outbound queue (a slow client slows the download, memory stays bounded) and are cancelled
when it closes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Awaitable, Coroutine
from typing import TYPE_CHECKING, Any

from ..errors import internal_error, invalid_params, invalid_request
from ..protocol import (
    encode,
)
from ..protocol.http import (
    HttpBodyDelta,
    HttpBodyDeltaNotification,
    HttpHeader,
    HttpRequestHeader,
    HttpRequestParams,
    HttpRequestResult,
)
from . import method, refuse_when_network_confined

if TYPE_CHECKING:
    import ssl

    import httpx

    from ..connection import Connection

log = logging.getLogger(__name__)

HTTP = "http"
BODY_DELTA = "http/request/bodyDelta"
MAX_REDIRECTS = 10
"""Redirects followed under the default ``redirectPolicy: follow`` (the reference's client's)."""

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
"""RFC 9110 ``token``: what a method and a header name may consist of."""


# ---- validation ----------------------------------------------------------------------------


def _valid_url(raw: str) -> httpx.URL:
    import httpx  # imported on first use: a server that never makes a request never loads it

    try:
        url = httpx.URL(raw)
    except httpx.InvalidURL as exc:
        raise invalid_params(f"http/request url is invalid: {exc}") from None
    if not url.scheme:
        raise invalid_params("http/request url is invalid: relative URL without a base")
    if url.scheme not in ("http", "https"):
        raise invalid_params(f"http/request only supports http and https URLs, got {url.scheme}")
    if not url.host:
        raise invalid_params("http/request url is invalid: empty host")
    if "%" in url.host:
        raise invalid_params("http/request url is invalid: invalid domain character")
    return url


def _valid_headers(
    headers: list[HttpRequestHeader], never_lent: tuple[str, ...]
) -> list[tuple[bytes, bytes]]:
    """Each header checked in order (its name, its variable, its value), as the reference."""
    checked = []
    for header in headers:
        if not _TOKEN.fullmatch(header.name):
            raise invalid_params("http/request header name is invalid: invalid HTTP header name")
        value = header.value.encode()
        if header.value_env_var is not None:
            value += _from_environment(header.name, header.value_env_var, never_lent).encode()
        if any((byte < 32 and byte != 9) or byte == 127 for byte in value):
            raise invalid_params(
                f"http/request header value is invalid for {header.name}: "
                "failed to parse header value"
            )
        checked.append((header.name.encode("ascii"), value))
    return checked


def _from_environment(header: str, variable: str, never_lent: tuple[str, ...]) -> str:
    """The server's own ``$variable`` for a header value. A variable the server never lends
    (:func:`_never_lent`) is answered as if it were unset, so its existence does not show."""
    from ..process.env import matches

    lent = not any(matches(pattern, variable) for pattern in never_lent)
    value = os.environ.get(variable) if lent and variable and "=" not in variable else None
    if value is None:
        raise invalid_params(
            f"http/request header {header} requires executor environment variable {variable}"
        )
    if not value:
        raise invalid_params(
            f"http/request header {header} requires a non-empty executor environment "
            f"variable {variable}"
        )
    return value


def _never_lent(connection: Connection) -> tuple[str, ...]:
    """Variables no client can read through a header (patterns as for ``--env-exclude``):
    the server's own bearer token variable, and whatever the operator keeps from children
    with ``--env-exclude``. The reference lends any variable; these are ours to keep."""
    from ..cli import TOKEN_ENV

    return (TOKEN_ENV, *connection.server.guards.env_exclude)


# ---- the method ----------------------------------------------------------------------------


@method("http/request", HttpRequestParams, HTTP)
def http_request(connection: Connection, params: HttpRequestParams) -> Awaitable[HttpRequestResult]:
    """Validate now (-32602), then perform the request; see the module docstring."""
    refuse_when_network_confined(connection, "http/request is refused")
    if not _TOKEN.fullmatch(params.method):
        raise invalid_params("http/request method is invalid: invalid HTTP method")
    url = _valid_url(params.url)
    headers = _valid_headers(params.headers, _never_lent(connection))
    streams = _streams_of(connection)
    if params.stream_response:
        streams.reserve(params.request_id, connection)  # now: the id's second is refused
    return _perform(connection, streams, params, url, headers)


async def _perform(
    connection: Connection,
    streams: HttpStreams,
    params: HttpRequestParams,
    url: httpx.URL,
    headers: list[tuple[bytes, bytes]],
) -> HttpRequestResult:
    import httpx  # imported on first use: a server that never makes a request never loads it

    deadline = _deadline(params.timeout_ms)
    try:
        client = await _client(
            follow_redirects=params.redirect_policy != "stop",
            deny=connection.server.guards.http_deny,
        )
    except BaseException:
        if params.stream_response:
            streams.unreserve(params.request_id)
        raise
    response: httpx.Response | None = None
    streaming = False
    try:
        request = client.build_request(
            params.method, url, headers=headers, content=params.body_base64
        )
        request.method = params.method  # httpx upper-cases it; methods are case-sensitive
        try:
            async with asyncio.timeout_at(deadline):
                response = await client.send(request, stream=True)
        except TimeoutError:
            raise internal_error(
                f"http/request failed: no response from {url} within {params.timeout_ms} ms"
            ) from None
        except httpx.HTTPError as exc:
            raise internal_error(
                f"http/request failed: error sending request for url ({url}): {_reason(exc)}"
            ) from None
        status = response.status_code
        response_headers = [
            HttpHeader(name, value) for name, value in response.headers.multi_items()
        ]
        if params.stream_response:
            # The reply is queued as soon as this coroutine returns, before the pump first
            # runs: deltas never overtake the response they belong to.
            streams.start(
                params.request_id,
                _pump(connection, params.request_id, client, response, deadline, params.timeout_ms),
            )
            streaming = True
            return HttpRequestResult(status, response_headers, b"")
        body = await _read_body(response, deadline, params.timeout_ms, _body_limit(connection))
        return HttpRequestResult(status, response_headers, body)
    finally:
        if not streaming:
            if params.stream_response:
                streams.unreserve(params.request_id)
            if response is not None:
                await response.aclose()
            await client.aclose()


def _body_limit(connection: Connection) -> int:
    return connection.server.limits.http_response_max_bytes


async def _read_body(
    response: httpx.Response, deadline: float | None, timeout_ms: int | None, limit: int
) -> bytes:
    import httpx  # imported on first use: a server that never makes a request never loads it

    chunks: list[bytes] = []
    total = 0
    try:
        async with asyncio.timeout_at(deadline):
            async for chunk in response.aiter_raw():
                total += len(chunk)
                if total > limit:
                    raise internal_error(
                        f"failed to read http/request response body: it exceeds {limit} bytes; "
                        "ask with streamResponse: true for large bodies"
                    )
                chunks.append(chunk)
    except TimeoutError:
        raise internal_error(
            f"failed to read http/request response body: timed out after {timeout_ms} ms"
        ) from None
    except httpx.HTTPError as exc:
        raise internal_error(f"failed to read http/request response body: {_reason(exc)}") from None
    return b"".join(chunks)


async def _pump(
    connection: Connection,
    request_id: str,
    client: httpx.AsyncClient,
    response: httpx.Response,
    deadline: float | None,
    timeout_ms: int | None,
) -> None:
    """Send the body as deltas, then the final ``done`` one; always closes what it got."""
    import httpx  # imported on first use: a server that never makes a request never loads it

    seq = 0
    error: str | None = None
    try:
        try:
            async with asyncio.timeout_at(deadline):
                async for chunk in response.aiter_raw():
                    if not chunk:
                        continue
                    seq += 1
                    if not connection.send_notification(_delta(request_id, seq, chunk)):
                        await connection.wait_for_room()
        except TimeoutError:
            error = f"timed out after {timeout_ms} ms"
        except httpx.HTTPError as exc:
            error = _reason(exc)
        connection.send_notification(_delta(request_id, seq + 1, b"", done=True, error=error))
    finally:
        await response.aclose()
        await client.aclose()


def _delta(
    request_id: str, seq: int, data: bytes, *, done: bool = False, error: str | None = None
) -> bytes:
    return encode(
        HttpBodyDeltaNotification(BODY_DELTA, HttpBodyDelta(request_id, seq, data, done, error))
    )


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def _deadline(timeout_ms: int | None) -> float | None:
    if timeout_ms is None:
        return None
    return asyncio.get_running_loop().time() + timeout_ms / 1000


_tls_context: ssl.SSLContext | None = None


async def _client(*, follow_redirects: bool, deny: tuple[str, ...]) -> httpx.AsyncClient:
    """A client for one request: no timeouts of its own, nothing added to the request, and
    connections only outside the ``deny`` networks when there are any (``http_guard``).

    One client per request keeps ownership simple (the request or its stream closes it);
    the TLS context, the costly part (loading CA certificates takes a noticeable fraction of
    a second), is built once, on a worker thread, and shared.
    """
    import httpx  # imported on first use: a server that never makes a request never loads it

    global _tls_context
    if _tls_context is None:
        context = await asyncio.to_thread(httpx.create_ssl_context)
        _tls_context = _tls_context or context
    transport: httpx.AsyncBaseTransport | None = None
    if deny:
        from ..http_guard import GuardedTransport, parse_networks

        transport = GuardedTransport(parse_networks(deny), _tls_context)
    client = httpx.AsyncClient(
        timeout=None,
        follow_redirects=follow_redirects,
        max_redirects=MAX_REDIRECTS,
        verify=_tls_context,
        transport=transport,
        trust_env=transport is None,
    )
    del client.headers["accept-encoding"]  # pass bodies through untouched
    del client.headers["user-agent"]
    return client


# ---- streams of one connection -------------------------------------------------------------


class HttpStreams:
    """The body streams of one connection, by ``requestId``; cancelled when it closes."""

    def __init__(self) -> None:
        self._active: dict[str, asyncio.Task[None] | None] = {}  # None: headers pending

    def __len__(self) -> int:
        return len(self._active)

    def reserve(self, request_id: str, connection: Connection) -> None:
        """Claim ``request_id`` for a stream: -32602 when it is streaming already, -32600
        when the connection has ``http_max_streams`` streams (each holds an origin's socket)."""
        if request_id in self._active:
            raise invalid_params(
                f"http/request streamResponse requestId `{request_id}` is already active"
            )
        limit = connection.server.limits.http_max_streams
        if len(self._active) >= limit:
            connection.server.metrics.limit_refused("http_max_streams")
            raise invalid_request(
                f"http/request: this connection already streams {limit} response bodies; "
                "read or cancel one first (--max-http-streams)"
            )
        self._active[request_id] = None

    def unreserve(self, request_id: str) -> None:
        """The request failed before its body: the id is free again."""
        if request_id in self._active and self._active[request_id] is None:
            del self._active[request_id]

    def start(self, request_id: str, pump: Coroutine[Any, Any, None]) -> None:
        """Run ``pump`` as the stream of ``request_id`` (which is freed when it ends)."""
        task = asyncio.ensure_future(pump)
        self._active[request_id] = task

        def finished(done: asyncio.Task[None]) -> None:
            if self._active.get(request_id) is done:
                del self._active[request_id]
            if not done.cancelled() and done.exception() is not None:
                log.error("http/request body stream failed", exc_info=done.exception())

        task.add_done_callback(finished)

    def release(self) -> None:
        """The connection closed: stop every stream (each closes its response)."""
        tasks = [task for task in self._active.values() if task is not None]
        self._active.clear()
        for task in tasks:
            task.cancel()


def _streams_of(connection: Connection) -> HttpStreams:
    return connection.resources.get(HttpStreams, HttpStreams)
