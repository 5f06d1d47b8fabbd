"""What the first request of each method module costs a fresh stdio server.

    .venv/bin/python -m bench.first_call [--runs 9]

A server imports a method module (with its wire types and the domain modules behind it)
when one of its methods is first requested (``methods/__init__.py``), so the first such
request pays that import. For each request below, ``--runs`` fresh ``exec-server --listen
stdio`` servers: after the handshake the request is sent three times, one after the other.
The first goes the long way (its module imported, its params decoder built); the second is
the first to meet the one-step decoder since that module registered, which is then built
again with the module's methods (``methods.REQUESTS``); the third is a warm call. Prints
the medians; bench/README.md ("Start-up") has the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

from .servers import ours, spawn_stdio

Params = Callable[[int], dict[str, Any]]


def _requests(scratch: str, port: int) -> dict[str, tuple[str, Params]]:
    """Label -> (method, params of the n-th call)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    walk = {"maxDepth": 2, "maxDirectories": 10, "maxEntries": 100}
    return {
        "fs/getMetadata": ("fs/getMetadata", lambda n: {"path": scratch}),
        "fs/walk": (
            "fs/walk",
            lambda n: {"path": scratch, "options": {**walk, "followDirectorySymlinks": False}},
        ),
        "process/start (true)": (
            "process/start",
            lambda n: {
                "processId": f"p{n}",
                "argv": ["true"],
                "cwd": scratch,
                "env": env,
                "tty": False,
            },
        ),
        "forward/open (loopback)": (
            "forward/open",
            lambda n: {"streamId": f"s{n}", "host": "127.0.0.1", "port": port},
        ),
        "capabilities/discoverV2": ("capabilities/discoverV2", lambda n: {"cwd": scratch}),
        "environmentConfig/read": (
            "environmentConfig/read",
            lambda n: {"cwd": scratch, "configPaths": [["model"]], "requirementsPaths": []},
        ),
    }


async def _thrice(argv: tuple[str, ...], method: str, params: Params) -> tuple[float, float, float]:
    """A fresh server; after the handshake, the times of three calls of ``method``."""
    proc = await spawn_stdio(argv)
    assert proc.stdin is not None and proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout

    async def call(request_id: int, method: str, params: dict[str, Any]) -> float:
        t0 = time.perf_counter()
        stdin.write(json.dumps({"id": request_id, "method": method, "params": params}).encode())
        stdin.write(b"\n")
        while True:  # notifications (process/output, ...) may come first
            reply = json.loads(await asyncio.wait_for(stdout.readline(), 30))
            if reply.get("id") == request_id:
                break
        if "result" not in reply:
            raise RuntimeError(f"{method}: {reply}")
        return time.perf_counter() - t0

    try:
        await call(0, "initialize", {"clientName": "bench"})
        stdin.write(b'{"method":"initialized"}\n')
        return tuple([await call(n, method, params(n)) for n in (1, 2, 3)])  # type: ignore[return-value]
    finally:
        stdin.close()
        await asyncio.wait_for(proc.wait(), 30)


async def _main(runs: int) -> None:
    argv = ours().argv  # with every module compiled first, as an installed package has them
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    with tempfile.TemporaryDirectory() as scratch, listener:
        print(f"{'request':26} {'1st ms':>8} {'2nd ms':>8} {'3rd ms':>8} {'1st+2nd-2*3rd':>14}")
        for label, (method, params) in _requests(scratch, port).items():
            calls = [[t * 1000 for t in await _thrice(argv, method, params)] for _ in range(runs)]
            first, second, third = (statistics.median(c[i] for c in calls) for i in range(3))
            extra = statistics.median(c[0] + c[1] - 2 * c[2] for c in calls)
            print(f"{label:26} {first:8.2f} {second:8.2f} {third:8.2f} {extra:14.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=9, help="fresh servers per request")
    asyncio.run(_main(parser.parse_args().runs))


if __name__ == "__main__":
    main()
