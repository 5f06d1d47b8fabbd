"""http/request end to end, against a real HTTP server the test starts on loopback."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.server
import json
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from exec_server.config import Guards, Limits

from .sandbox_support import confinement, workspace_write
from .support import Client, RpcFailure, running_server


def pattern(size: int) -> bytes:
    """``size`` bytes that are not all alike, cheaply."""
    return (bytes(range(251)) * (size // 251 + 1))[:size]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _TestHttpServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        path = self.path
        if path == "/echo":
            echo = {
                "method": self.command,
                "headers": [[k.lower(), v] for k, v in self.headers.items()],
                "body": body.decode("latin-1"),
            }
            self._send(201, json.dumps(echo).encode(), (("X-Multi", "one"), ("X-Multi", "two")))
        elif path == "/redirect":
            self._send(302, b"", (("Location", "/echo"),))
        elif path.startswith("/redirect-to/"):
            target = path.removeprefix("/redirect-to/")
            self._send(302, b"", (("Location", f"http://{target}/echo"),))
        elif path.startswith("/stream/"):
            parts = int(path.rsplit("/", 1)[1])
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for n in range(parts):
                self._chunk(b"part %d;" % n)
                self.server.pause.wait(0.02)  # a slow producer
            self._chunk(b"")
        elif path.startswith("/bytes/"):
            size = int(path.rsplit("/", 1)[1])
            self._send(200, pattern(size))
        elif path == "/broken":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"short")
            self.close_connection = True
        elif path == "/hang":
            self.server.release.wait(30)  # never answers while the test runs
        elif path == "/hang-body":
            self.send_response(200)
            self.send_header("Content-Length", "10")
            self.end_headers()
            self.wfile.write(b"12")
            self.wfile.flush()
            self.server.release.wait(30)
        elif path == "/endless":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                while not self.server.release.is_set():
                    self._chunk(b"tick;")
                    self.server.pause.wait(0.01)
            except OSError:
                self.server.endless_dropped.set()  # the client went away
        else:
            self._send(404, b"not found")

    do_GET = do_POST = do_PUT = do_get = _any


class _TestHttpServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: str = "127.0.0.1") -> None:
        super().__init__((address, 0), _Handler)
        self.release = threading.Event()
        self.pause = threading.Event()  # never set: only used to sleep interruptibly
        self.endless_dropped = threading.Event()

    @property
    def host_port(self) -> str:
        return f"{self.server_address[0]}:{self.server_address[1]}"

    @property
    def base(self) -> str:
        return f"http://{self.host_port}"


@contextlib.contextmanager
def _serving(address: str) -> Iterator[_TestHttpServer]:
    server = _TestHttpServer(address)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def web() -> Iterator[_TestHttpServer]:
    with _serving("127.0.0.1") as server:
        yield server


@pytest.fixture
def other_web() -> Iterator[_TestHttpServer]:
    """A second server on another loopback address, for what a redirect reaches."""
    with _serving("127.0.0.2") as server:
        yield server


def b64decode(text: str) -> bytes:
    return base64.b64decode(text)


async def fails(client: Client, params: dict[str, Any]) -> RpcFailure:
    with pytest.raises(RpcFailure) as info:
        await client.call("http/request", {"requestId": "r", **params})
    return info.value


def deltas(client: Client, request_id: str) -> list[dict[str, Any]]:
    return [
        n["params"]
        for n in client.notifications
        if n["method"] == "http/request/bodyDelta" and n["params"]["requestId"] == request_id
    ]


async def wait_done(client: Client, request_id: str) -> list[dict[str, Any]]:
    for _ in range(2000):
        got = deltas(client, request_id)
        if got and got[-1]["done"]:
            return got
        await asyncio.sleep(0.005)
    raise AssertionError(f"no final delta for {request_id}: {deltas(client, request_id)}")


# ---- plain requests ---------------------------------------------------------------------------


async def test_request_with_headers_and_body(client: Client, web: _TestHttpServer) -> None:
    result = await client.call(
        "http/request",
        {
            "method": "POST",
            "url": web.base + "/echo",
            "requestId": "1",
            "headers": [{"name": "X-Token", "value": "abc"}, {"name": "X-Token", "value": "def"}],
            "bodyBase64": base64.b64encode(b"payload").decode(),
        },
    )
    assert result["status"] == 201
    headers = [(h["name"], h["value"]) for h in result["headers"]]
    assert ("x-multi", "one") in headers and ("x-multi", "two") in headers
    echo = json.loads(b64decode(result["bodyBase64"]))
    assert echo["method"] == "POST"
    assert echo["body"] == "payload"
    sent = echo["headers"]
    assert ["x-token", "abc"] in sent and ["x-token", "def"] in sent
    # Nothing is added that would change the body (no Accept-Encoding) or identify us.
    assert not any(name in ("accept-encoding", "user-agent") for name, _ in sent)
    assert deltas(client, "1") == []


async def test_method_spelling_is_kept(client: Client, web: _TestHttpServer) -> None:
    result = await client.call(
        "http/request", {"method": "get", "url": web.base + "/echo", "requestId": "1"}
    )
    assert json.loads(b64decode(result["bodyBase64"]))["method"] == "get"


async def test_redirects_follow_by_default_or_stop(client: Client, web: _TestHttpServer) -> None:
    params = {"method": "GET", "url": web.base + "/redirect", "requestId": "1"}
    assert (await client.call("http/request", params))["status"] == 201
    stopped = await client.call("http/request", {**params, "redirectPolicy": "stop"})
    assert stopped["status"] == 302
    assert {"name": "location", "value": "/echo"} in stopped["headers"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"method": "G ET"}, "http/request method is invalid: invalid HTTP method"),
        ({"url": "not a url"}, "http/request url is invalid: relative URL without a base"),
        ({"url": "ftp://127.0.0.1/x"}, "http/request only supports http and https URLs, got ftp"),
        ({"url": "http:///x"}, "http/request url is invalid: empty host"),
        (
            {"headers": [{"name": "bad name", "value": "x"}]},
            "http/request header name is invalid: invalid HTTP header name",
        ),
        (
            {"headers": [{"name": "X-A", "value": "a\nb"}]},
            "http/request header value is invalid for X-A: failed to parse header value",
        ),
    ],
)
async def test_validation_errors(
    client: Client, web: _TestHttpServer, params: dict[str, Any], message: str
) -> None:
    error = await fails(client, {"method": "GET", "url": web.base + "/echo", **params})
    assert (error.code, error.message) == (-32602, message)


async def test_bad_params_decode_errors(client: Client) -> None:
    error = await fails(client, {"method": "GET", "url": "http://x/", "bodyBase64": "!!"})
    assert error.code == -32602 and "bodyBase64" in error.message
    with pytest.raises(RpcFailure) as info:
        await client.call("http/request", {"method": "GET", "url": "http://x/"})
    assert info.value.code == -32602 and "requestId" in info.value.message


async def test_connection_refused(client: Client, web: _TestHttpServer) -> None:
    port = web.server_address[1]
    web.shutdown()
    web.server_close()
    error = await fails(client, {"method": "GET", "url": f"http://127.0.0.1:{port}/"})
    assert error.code == -32603
    assert error.message.startswith(
        f"http/request failed: error sending request for url (http://127.0.0.1:{port}/)"
    )


async def test_timeout_without_response(client: Client, web: _TestHttpServer) -> None:
    error = await fails(client, {"method": "GET", "url": web.base + "/hang", "timeoutMs": 100})
    assert error.code == -32603
    assert error.message.startswith("http/request failed:") and "100 ms" in error.message


async def test_body_failures(client: Client, web: _TestHttpServer) -> None:
    error = await fails(client, {"method": "GET", "url": web.base + "/broken"})
    assert error.code == -32603
    assert error.message.startswith("failed to read http/request response body: ")
    error = await fails(client, {"method": "GET", "url": web.base + "/hang-body", "timeoutMs": 100})
    assert error.code == -32603
    assert error.message.startswith("failed to read http/request response body: timed out")


async def test_body_above_the_limit_needs_streaming(web: _TestHttpServer) -> None:
    limits = Limits(http_response_max_bytes=1000)
    async with running_server(limits) as (_, url), Client.connect(url) as client:
        await client.initialize()
        error = await fails(client, {"method": "GET", "url": web.base + "/bytes/1001"})
        assert error.code == -32603 and "streamResponse" in error.message
        ok = await client.call(
            "http/request", {"method": "GET", "url": web.base + "/bytes/1000", "requestId": "r"}
        )
        assert len(b64decode(ok["bodyBase64"])) == 1000


# ---- streamed bodies ----------------------------------------------------------------------------


async def test_stream_deltas_in_order_after_the_reply(client: Client, web: _TestHttpServer) -> None:
    params = {
        "method": "GET",
        "url": web.base + "/stream/5",
        "requestId": "s",
        "streamResponse": True,
    }
    result = await client.call("http/request", params)
    assert result["status"] == 200 and result["bodyBase64"] == ""
    got = await wait_done(client, "s")
    assert [d["seq"] for d in got] == list(range(1, len(got) + 1))
    assert all(not d["done"] and d["error"] is None for d in got[:-1])
    assert got[-1]["done"] is True and got[-1]["error"] is None
    assert b"".join(b64decode(d["deltaBase64"]) for d in got) == b"".join(
        b"part %d;" % n for n in range(5)
    )
    # The reply left the server before the first delta.
    reply_at = next(i for i, m in enumerate(client.raw) if m.get("result") is result)
    first_delta_at = next(
        i for i, m in enumerate(client.raw) if m.get("method") == "http/request/bodyDelta"
    )
    assert reply_at < first_delta_at


async def test_active_request_id_is_refused_then_free(client: Client, web: _TestHttpServer) -> None:
    params = {
        "method": "GET",
        "url": web.base + "/hang-body",
        "requestId": "dup",
        "streamResponse": True,
        "timeoutMs": 300,
    }
    await client.call("http/request", params)
    error = await fails(client, {**params, "url": web.base + "/echo"})
    assert (error.code, error.message) == (
        -32602,
        "http/request streamResponse requestId `dup` is already active",
    )
    got = await wait_done(client, "dup")  # the timeout ends it, with an error
    assert got[-1]["done"] is True and "timed out" in got[-1]["error"]
    assert b"".join(b64decode(d["deltaBase64"]) for d in got) == b"12"
    # Once done, the id can be used again; and ids of non-streamed requests never clash.
    again = await client.call("http/request", {**params, "url": web.base + "/stream/1"})
    assert again["status"] == 200
    plain = {"method": "GET", "url": web.base + "/echo", "requestId": "dup"}
    assert (await client.call("http/request", plain))["status"] == 201


async def test_a_connection_streams_at_most_its_bound_of_bodies(web: _TestHttpServer) -> None:
    """Each streamed body holds a socket to its origin: past --max-http-streams the request
    is refused (-32600) before any connection is made, and a finished stream frees a place."""
    async with (
        running_server(Limits(http_max_streams=2)) as (_, url),
        Client.connect(url) as client,
    ):
        await client.initialize()
        params = {"method": "GET", "streamResponse": True, "timeoutMs": 400}
        for request_id in ("a", "b"):
            hang = {**params, "url": web.base + "/hang-body", "requestId": request_id}
            await client.call("http/request", hang)
        error = await fails(client, {**params, "url": web.base + "/echo", "requestId": "c"})
        assert (error.code, error.message) == (
            -32600,
            "http/request: this connection already streams 2 response bodies; "
            "read or cancel one first (--max-http-streams)",
        )
        await wait_done(client, "a")
        again = {**params, "url": web.base + "/stream/1", "requestId": "c"}
        assert (await client.call("http/request", again))["status"] == 200


async def test_stream_failure_ends_with_error(client: Client, web: _TestHttpServer) -> None:
    params = {
        "method": "GET",
        "url": web.base + "/broken",
        "requestId": "b",
        "streamResponse": True,
    }
    assert (await client.call("http/request", params))["status"] == 200
    got = await wait_done(client, "b")
    assert got[-1]["done"] is True and got[-1]["error"]
    assert got[-1]["deltaBase64"] == ""
    assert b"".join(b64decode(d["deltaBase64"]) for d in got) == b"short"


async def test_stream_request_failure_frees_the_id(client: Client, web: _TestHttpServer) -> None:
    params = {
        "method": "GET",
        "url": web.base + "/hang",
        "requestId": "h",
        "streamResponse": True,
        "timeoutMs": 100,
    }
    error = await fails(client, params)
    assert error.code == -32603
    assert deltas(client, "h") == []
    ok = await client.call("http/request", {**params, "url": web.base + "/stream/1"})
    assert ok["status"] == 200


async def test_large_stream_through_a_small_queue(web: _TestHttpServer) -> None:
    """A tiny outbound queue: the stream waits for room and still delivers every byte."""
    size = 3 * 1024 * 1024
    limits = Limits(outbound_queue_bytes=4096)
    async with running_server(limits) as (_, url), Client.connect(url) as client:
        await client.initialize()
        params = {
            "method": "GET",
            "url": f"{web.base}/bytes/{size}",
            "requestId": "big",
            "streamResponse": True,
        }
        await client.call("http/request", params)
        got = await wait_done(client, "big")
        body = b"".join(b64decode(d["deltaBase64"]) for d in got)
        assert body == pattern(size)
        assert [d["seq"] for d in got] == list(range(1, len(got) + 1))


async def test_streams_are_cancelled_when_the_connection_closes(
    server_url: str, web: _TestHttpServer
) -> None:
    async with Client.connect(server_url) as client:
        await client.initialize()
        params = {
            "method": "GET",
            "url": web.base + "/endless",
            "requestId": "e",
            "streamResponse": True,
        }
        await client.call("http/request", params)
        for _ in range(1000):
            if deltas(client, "e"):
                break
            await asyncio.sleep(0.005)
        assert deltas(client, "e")
    # The client is gone: the server drops the download, so the web server's writes fail.
    dropped = await asyncio.to_thread(web.endless_dropped.wait, 15)
    assert dropped


async def test_http_needs_the_handshake(server_url: str, web: _TestHttpServer) -> None:
    async with Client.connect(server_url) as client:
        with pytest.raises(RpcFailure) as info:
            await client.call(
                "http/request", {"method": "GET", "url": web.base + "/echo", "requestId": "r"}
            )
        assert info.value.code == -32600
        assert info.value.message == "client must call initialize before using http methods"


@pytest.fixture
async def two_clients(server_url: str) -> AsyncIterator[tuple[Client, Client]]:
    async with Client.connect(server_url) as one, Client.connect(server_url) as two:
        await one.initialize()
        await two.initialize()
        yield one, two


async def test_stream_ids_are_per_connection(
    two_clients: tuple[Client, Client], web: _TestHttpServer
) -> None:
    one, two = two_clients
    params = {
        "method": "GET",
        "url": web.base + "/hang-body",
        "requestId": "same",
        "streamResponse": True,
        "timeoutMs": 200,
    }
    await one.call("http/request", params)
    await two.call("http/request", params)
    assert (await wait_done(one, "same"))[-1]["done"]
    assert (await wait_done(two, "same"))[-1]["done"]
    assert deltas(one, "same") != [] and deltas(two, "same") != []


# ---- --http-deny ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _client_of_a_server_denying(*networks: str) -> AsyncIterator[Client]:
    async with (
        running_server(guards=Guards(http_deny=networks)) as (_, url),
        Client.connect(url) as client,
    ):
        await client.initialize()
        yield client


async def test_denied_networks_are_refused_after_name_resolution(web: _TestHttpServer) -> None:
    port = web.server_address[1]
    async with _client_of_a_server_denying("127.0.0.0/8", "::1/128") as client:
        for target in (
            web.base,
            f"http://localhost:{port}",
            f"http://[::ffff:127.0.0.1]:{port}",
        ):
            failure = await fails(client, {"method": "GET", "url": target + "/echo"})
            assert failure.code == -32603
            assert "denies (--http-deny)" in failure.message, failure.message


async def test_allowed_destinations_work_through_the_guard(web: _TestHttpServer) -> None:
    async with _client_of_a_server_denying("10.0.0.0/8") as client:
        result = await client.call(
            "http/request",
            {
                "method": "POST",
                "url": web.base + "/echo",
                "requestId": "1",
                "bodyBase64": base64.b64encode(b"through").decode(),
            },
        )
        assert result["status"] == 201
        assert json.loads(b64decode(result["bodyBase64"]))["body"] == "through"
        streamed = await client.call(
            "http/request",
            {
                "method": "GET",
                "url": web.base + "/stream/3",
                "requestId": "s",
                "streamResponse": True,
            },
        )
        assert streamed["status"] == 200
        body = b"".join(b64decode(d["deltaBase64"]) for d in await wait_done(client, "s"))
        assert body == b"part 0;part 1;part 2;"


async def test_a_redirect_into_a_denied_network_is_refused(
    web: _TestHttpServer, other_web: _TestHttpServer
) -> None:
    async with _client_of_a_server_denying("127.0.0.2/32") as client:
        hop = {"method": "GET", "url": f"{web.base}/redirect-to/{other_web.host_port}"}
        failure = await fails(client, hop)
        assert "denies (--http-deny)" in failure.message
        stopped = await client.call(
            "http/request", {**hop, "requestId": "2", "redirectPolicy": "stop"}
        )
        assert stopped["status"] == 302  # the first hop itself is allowed


class _TestHttpServerV6(_TestHttpServer):
    address_family = socket.AF_INET6


async def test_unspecified_addresses_count_as_this_host(web: _TestHttpServer) -> None:
    """Issue 17 item 6: 0.0.0.0, 0 and [::] reach a loopback-only server on Linux, so with
    loopback denied they are refused, never dialled."""
    port = web.server_address[1]
    server6 = _TestHttpServerV6("::1")
    thread = threading.Thread(target=server6.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        port6 = server6.server_address[1]
        async with _client_of_a_server_denying("127.0.0.0/8", "::1/128") as client:
            for target in (
                f"http://0.0.0.0:{port}",
                f"http://0:{port}",
                f"http://[::]:{port6}",
                f"http://[::ffff:0.0.0.0]:{port}",
            ):
                failure = await fails(client, {"method": "GET", "url": target + "/echo"})
                assert "denies (--http-deny)" in failure.message, (target, failure.message)
        async with _client_of_a_server_denying("10.0.0.0/8") as client:  # any local range
            failure = await fails(client, {"method": "GET", "url": f"http://0.0.0.0:{port}/echo"})
            assert "denies (--http-deny)" in failure.message
    finally:
        server6.shutdown()
        server6.server_close()
        thread.join(5)


# ---- --confine ----------------------------------------------------------------------------------


async def test_refused_under_a_confinement_that_restricts_the_network(
    web: _TestHttpServer, tmp_path: Path
) -> None:
    """The server's own process obeys the operator's network rule too: -32600."""
    guards = confinement(workspace_write(str(tmp_path), network="restricted"), tmp_path)
    async with running_server(guards=guards) as (_, url), Client.connect(url) as client:
        await client.initialize()
        failure = await fails(client, {"method": "GET", "url": web.base + "/echo"})
    assert failure.code == -32600
    assert failure.message == (
        "http/request is refused: this server's confinement (--confine) restricts the network"
    )
