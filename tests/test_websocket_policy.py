"""Who may open a WebSocket: Origin and Host checks (Part A §A3), over a real socket."""

from __future__ import annotations

import asyncio

import pytest

from exec_server.transport.websocket import HandshakePolicy, _host_name

from .support import running_server, upgrade_request


async def _handshake_status(url: str, headers: dict[str, str]) -> int:
    """Send a hand-written upgrade request; return the HTTP status of the answer."""
    host, port = url.removeprefix("ws://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(upgrade_request(host, port, headers))
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


def test_policy_for_a_non_loopback_bind_accepts_any_host() -> None:
    assert HandshakePolicy.for_bind("0.0.0.0").allowed_hosts is None
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
    assert _host_name(header) == name
