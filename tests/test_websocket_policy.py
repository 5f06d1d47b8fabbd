"""Who may open a WebSocket: path, Origin, Host and bearer-token checks (Part A §A3, issue
11), over real sockets; and the TLS and Unix-socket listeners."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import stat
from pathlib import Path

import pytest
from websockets.asyncio.client import connect, unix_connect
from websockets.exceptions import InvalidStatus

from exec_server.server import Server
from exec_server.transport.handshake import HandshakePolicy, host_name
from exec_server.transport.websocket import serve_unix

from .support import running_server, self_signed, upgrade_request


async def _handshake_status(url: str, headers: dict[str, str], path: str = "/") -> int:
    """Send a hand-written upgrade request; return the HTTP status of the answer."""
    host, port = url.removeprefix("ws://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            upgrade_request(host, port, headers).replace(b"GET / ", f"GET {path} ".encode())
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
        return int(status_line.split()[1])
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("host_header", "status"),
    [
        ("127.0.0.1:{port}", 101),
        ("localhost:{port}", 101),
        ("LOCALHOST", 101),
        ("[::1]:{port}", 101),
        ("evil.example:{port}", 403),
        ("127.0.0.1.evil.example", 403),
        ("", 403),
    ],
)
async def test_host_header_on_a_loopback_bind(host_header: str, status: int) -> None:
    async with running_server() as (_, url):
        port = url.rsplit(":", 1)[1]
        assert await _handshake_status(url, {"Host": host_header.format(port=port)}) == status


async def test_origin_is_refused_unless_allowed() -> None:
    async with running_server(allowed_origins=frozenset({"https://ide.example"})) as (_, url):
        port = url.rsplit(":", 1)[1]
        host = {"Host": f"127.0.0.1:{port}"}
        assert await _handshake_status(url, {**host, "Origin": "https://evil.example"}) == 403
        assert await _handshake_status(url, {**host, "Origin": "https://ide.example"}) == 101
        assert await _handshake_status(url, host) == 101


@pytest.mark.parametrize(
    ("path", "status"),
    [("/", 101), ("/?x=1", 101), ("/ws", 404), ("/readyz/x", 404), ("//", 404), ("/readyz", 200)],
)
async def test_only_the_root_upgrades(path: str, status: int) -> None:
    async with running_server() as (_, url):
        port = url.rsplit(":", 1)[1]
        assert await _handshake_status(url, {"Host": f"127.0.0.1:{port}"}, path) == status


async def test_readyz_is_subject_to_origin_and_host_checks() -> None:
    async with running_server() as (_, url):
        port = url.rsplit(":", 1)[1]
        ok = {"Host": f"127.0.0.1:{port}"}
        assert await _handshake_status(url, ok, "/readyz") == 200
        evil_origin = {**ok, "Origin": "https://evil.example"}
        assert await _handshake_status(url, evil_origin, "/readyz") == 403
        assert await _handshake_status(url, {"Host": "evil.example"}, "/readyz") == 403


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        ("Bearer s3cret-token", 101),
        ("bearer s3cret-token", 101),
        ("Bearer s3cret-tokeN", 401),
        ("Bearer s3cret", 401),
        ("Basic czNjcmV0LXRva2Vu", 401),
        (None, 401),
    ],
)
async def test_a_token_is_required_when_the_server_has_one(
    authorization: str | None, status: int
) -> None:
    async with running_server(token="s3cret-token") as (_, url):
        port = url.rsplit(":", 1)[1]
        headers = {"Host": f"127.0.0.1:{port}"}
        if authorization is not None:
            headers["Authorization"] = authorization
        assert await _handshake_status(url, headers) == status
        assert await _handshake_status(url, {"Host": f"127.0.0.1:{port}"}, "/readyz") == 200


async def test_a_client_without_the_token_gets_401_before_any_json_rpc() -> None:
    async with running_server(token="s3cret-token") as (_, url):
        with pytest.raises(InvalidStatus) as info:
            async with connect(url):
                pass
        assert info.value.response.status_code == 401
        assert info.value.response.headers["WWW-Authenticate"].startswith("Bearer")
        headers = {"Authorization": "Bearer s3cret-token"}
        async with connect(url, additional_headers=headers) as ws:
            await ws.send(
                json.dumps({"id": 1, "method": "initialize", "params": {"clientName": "t"}})
            )
            assert "result" in json.loads(await ws.recv())


def test_policy_for_a_non_loopback_bind_or_a_unix_socket_accepts_any_host() -> None:
    assert HandshakePolicy.for_bind("0.0.0.0").allowed_hosts is None
    assert HandshakePolicy.for_bind(None).allowed_hosts is None
    assert HandshakePolicy.for_bind("127.0.0.1").allowed_hosts is not None


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("[::1]:80", "::1"),
        ("localhost:80", "localhost"),
        ("127.0.0.1", "127.0.0.1"),
        ("::1", "::1"),
    ],
)
def test_host_name_drops_the_port(header: str, name: str) -> None:
    assert host_name(header) == name


async def test_a_unix_socket_listener_is_private_and_serves(tmp_path: Path) -> None:
    path = str(tmp_path / "exec.sock")
    os.close(
        os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    )  # not a socket: kept, so listening fails
    server = Server()
    with pytest.raises(OSError):
        await serve_unix(server, path)
    os.unlink(path)
    listener = await serve_unix(server, path, token="t")
    try:
        mode = os.stat(path).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        with pytest.raises(InvalidStatus):
            async with unix_connect(path):
                pass
        async with unix_connect(path, additional_headers={"Authorization": "Bearer t"}) as ws:
            await ws.send(
                json.dumps({"id": 1, "method": "initialize", "params": {"clientName": "u"}})
            )
            assert "result" in json.loads(await ws.recv())
    finally:
        listener.close()
        await listener.wait_closed()
        await server.shutdown()


async def test_wss_with_a_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    client_tls = ssl.create_default_context(cafile=str(cert))
    async with running_server(tls=server_tls) as (_, url):
        wss = url.replace("ws://", "wss://")
        async with connect(wss, ssl=client_tls) as ws:
            await ws.send(
                json.dumps({"id": 1, "method": "initialize", "params": {"clientName": "s"}})
            )
            assert "result" in json.loads(await ws.recv())
        with pytest.raises(ssl.SSLError):  # a client that does not trust it
            async with connect(wss, ssl=ssl.create_default_context()):
                pass
