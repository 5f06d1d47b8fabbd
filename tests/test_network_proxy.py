"""The managed network (issue 18 A): process/start.networkProxy runs the child behind its own
egress proxy, in a network namespace where nothing else is reachable. Real bubblewrap, real
children (curl, python), real origins on loopback; the escapes must fail."""

from __future__ import annotations

import http.server
import json
import shutil
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from exec_server.sandbox.bwrap import support

from .support import PATH_ENV, Client, running_server

pytestmark = pytest.mark.skipif(
    not support().usable, reason=f"bubblewrap cannot run here: {support().reason}"
)
needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")

POLICY_FIELDS = [
    "processId",
    "timestamp",
    "scope",
    "decision",
    "source",
    "reason",
    "protocol",
    "host",
    "port",
    "method",
    "client",
    "policyOverride",
]


class _Origin(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hello-origin\n"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        body = b"posted:" + self.rfile.read(length)
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def origin() -> Iterator[int]:
    """An HTTP origin on 127.0.0.1 (outside the child's namespace); yields its port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Origin)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    async with running_server() as (_, url), Client.connect(url) as connected:
        await connected.initialize()
        yield connected


def network_proxy(
    domains: dict[str, str] | None, *, mode: str = "full", socks5: bool = True, **extra: Any
) -> dict[str, Any]:
    """``process/start.networkProxy`` as codex 0.169 sends it."""
    proxy = {
        "enabled": True,
        "enableSocks5": socks5,
        "enableSocks5Udp": socks5,
        "allowUpstreamProxy": True,
        "dangerouslyAllowAllUnixSockets": False,
        "allowLocalBinding": False,
        "mode": mode,
        "domains": domains,
        "unixSockets": None,
        **extra,
    }
    return {"proxy": proxy, "environmentId": "tests", "executionId": "x1"}


async def run_proxied(
    client: Client, process_id: str, script: str, domains: dict[str, str] | None, **kw: Any
) -> str:
    params = {"networkProxy": network_proxy(domains, **kw), "enforceManagedNetwork": True}
    result = await client.start(process_id, ["sh", "-c", script], env=PATH_ENV, **params)
    assert result["sandboxType"] == "linuxSeccomp"
    events = await client.wait_closed(process_id)
    return events.data().decode(errors="replace")


def decisions(client: Client, process_id: str) -> list[dict[str, Any]]:
    return [
        n["params"]
        for n in client.notifications
        if n["method"] == "network/policyDecision" and n["params"]["processId"] == process_id
    ]


@needs_curl
async def test_allowed_fetch_goes_through_and_is_audited(client: Client, origin: int) -> None:
    out = await run_proxied(
        client, "p1", f"curl -s http://127.0.0.1:{origin}/", {"127.0.0.1": "allow"}
    )
    assert out == "hello-origin\n"
    [audit] = decisions(client, "p1")
    assert list(audit) == POLICY_FIELDS
    assert audit["decision"] == "allow" and audit["reason"] == "allow"
    assert (audit["scope"], audit["source"], audit["protocol"]) == (
        "domain",
        "baseline_policy",
        "http",
    )
    assert (audit["host"], audit["port"], audit["method"]) == ("127.0.0.1", origin, "GET")
    assert audit["client"].startswith("127.0.0.1:") and audit["policyOverride"] is False


@needs_curl
async def test_unlisted_host_gets_the_reference_403(client: Client, origin: int) -> None:
    out = await run_proxied(client, "p1", "curl -s -i http://example.test/", {"127.0.0.1": "allow"})
    head, _, body = out.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 403 Forbidden")
    assert "x-proxy-error: blocked-by-allowlist" in head
    assert "content-type: application/json" in head
    assert json.loads(body) == {
        "status": "blocked",
        "host": "example.test",
        "reason": "not_allowed",
        "decision": "deny",
        "source": "baseline_policy",
        "protocol": "http",
        "port": 80,
        "message": "Domain not in allowlist.",
    }
    [audit] = decisions(client, "p1")
    assert (audit["decision"], audit["reason"], audit["host"]) == (
        "deny",
        "not_allowed",
        "example.test",
    )
