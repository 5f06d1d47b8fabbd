"""The managed network proxy's cost (issue 18): an HTTP fetch from a proxied child.

A child started with ``networkProxy`` (loopback allowed) fetches from an origin that runs in
the bench process: ``proxy_n`` small requests one after another (median latency, less the
same fetch made directly from the bench: the latency the proxy adds), then one large body
(MiB/s). Each request is its own connection, ``Connection: close``. Ours runs the child under
bubblewrap in its own network namespace (the proxy is enforced); the reference, given the
same request without a sandbox profile, runs it unsandboxed (its proxy is advisory there).
"""

from __future__ import annotations

import asyncio
import http.server
import json
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from bench.client import b64decode
from bench.servers import RunningServer

MiB = 1 << 20
SMALL = b"x" * 100

CHILD = r"""
import json, os, socket, sys, time
proxy = os.environ.get("HTTP_PROXY")
if not proxy:
    print(json.dumps({"error": "no HTTP_PROXY: the server started no proxy"}))
    sys.exit(3)
host, port = proxy.rsplit("/", 1)[1].rsplit(":", 1)
origin, count = sys.argv[1], int(sys.argv[2])

def get(path):
    with socket.create_connection((host, int(port))) as s:
        s.sendall(f"GET http://{origin}{path} HTTP/1.1\r\nHost: {origin}\r\nConnection: close\r\n\r\n".encode())
        total = 0
        while data := s.recv(1 << 20):
            total += len(data)
    return total

samples = []
for _ in range(count):
    t0 = time.perf_counter()
    get("/small")
    samples.append(time.perf_counter() - t0)
t0 = time.perf_counter()
size = get("/big")
print(json.dumps({"latency": sorted(samples)[len(samples) // 2], "bytes": size, "seconds": time.perf_counter() - t0}))
"""


class _Origin(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    big = b""

    def do_GET(self) -> None:
        body = self.big if self.path == "/big" else SMALL
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.send_header("connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def _origin(big_bytes: int) -> Iterator[int]:
    handler = type("Origin", (_Origin,), {"big": b"\0" * big_bytes})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _direct_latency(port: int, count: int) -> float:
    request = f"GET /small HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
    samples = []
    for _ in range(count):
        t0 = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(request)
            while s.recv(1 << 20):
                pass
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


async def proxy_fetch(server: RunningServer, count: int, big_bytes: int) -> dict[str, float]:
    """Latency added by the proxy (ms) and fetch throughput through it (MiB/s)."""
    client = server.client
    with _origin(big_bytes) as port:
        direct = await asyncio.to_thread(_direct_latency, port, count)
        watch = client.watch("net")
        chunks: list[str] = []
        watch.on_output = lambda _, chunk: chunks.append(chunk)
        params = client.start_params(
            "net", ["python3", "-c", CHILD, f"127.0.0.1:{port}", str(count)]
        )
        params["networkProxy"] = {
            "proxy": {
                "enabled": True,
                "enableSocks5": False,
                "enableSocks5Udp": False,
                "allowUpstreamProxy": False,
                "dangerouslyAllowAllUnixSockets": False,
                "allowLocalBinding": False,
                "mode": "full",
                "domains": {"127.0.0.1": "allow"},
            }
        }
        params["enforceManagedNetwork"] = True
        reply = await client.call("process/start", params)
        await asyncio.wait_for(asyncio.shield(watch.closed), 300)
        await reply
    output = b"".join(b64decode(c) for c in chunks).decode(errors="replace").strip()
    result = json.loads(output.splitlines()[-1]) if output else {"error": "no output"}
    if "error" in result or result["bytes"] < big_bytes:
        raise RuntimeError(f"proxied fetch failed: {output[-300:]}")
    return {
        "proxy_added_latency_ms": (result["latency"] - direct) * 1e3,
        "proxy_fetch_mibs": result["bytes"] / MiB / result["seconds"],
    }
