"""``bash -lc true`` with a slow login profile, with and without a shell snapshot.

    .venv/bin/python -m bench.shell_snapshot [--runs 10] [--profile-sleep 0.2] [--no-reference]

For each server (ours; the 0.169 reference when installed), started fresh: ``--runs``
sequential ``process/start`` of ``bash -lc true`` whose ``HOME`` has a ``.bash_profile`` that
sleeps ``--profile-sleep`` seconds, first without ``shellSnapshot``, then with one scope (the
first of those pays for the capture). Shows the median start → ``process/closed`` time of
each, and the capture's. Results go to ``bench/results/shell_snapshot.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from .fs_memory import REPO, add_reference_flag, compared_servers, print_markdown, started

RESULTS = REPO / "bench" / "results" / "shell_snapshot.json"


class _Session:
    """One connection: requests by id, ``process/closed`` by process id."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.next_id = 0
        self.replies: dict[int, asyncio.Future[Any]] = {}
        self.closed: dict[str, asyncio.Future[None]] = {}
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for raw in self.ws:
            message = json.loads(raw)
            if "id" in message and message["id"] in self.replies:
                self.replies.pop(message["id"]).set_result(message)
            elif message.get("method") == "process/closed":
                waiter = self.closed.get(message["params"]["processId"])
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)

    async def call(self, method: str, params: dict[str, Any]) -> Any:
        self.next_id += 1
        future = asyncio.get_running_loop().create_future()
        self.replies[self.next_id] = future
        await self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        reply = await future
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    async def run(self, process_id: str, params: dict[str, Any]) -> float:
        self.closed[process_id] = asyncio.get_running_loop().create_future()
        began = time.perf_counter()
        await self.call("process/start", {"processId": process_id, **params})
        await self.closed[process_id]
        return time.perf_counter() - began


async def measure(name: str, argv: list[str], home: Path, runs: int) -> dict[str, Any]:
    base = {
        "argv": ["/bin/bash", "-lc", "true"],
        "cwd": f"file://{home}",
        "env": {"HOME": str(home), "PATH": "/usr/bin:/bin"},
        "tty": False,
    }
    snapshot = {"scopeId": "bench", "shell": {"name": "bash", "path": "/bin/bash"}}
    async with started(argv) as (_, url), connect(url, max_size=None) as ws:
        session = _Session(ws)
        await session.call("initialize", {"clientName": "bench-shell-snapshot"})
        await ws.send(json.dumps({"method": "initialized", "params": {}}))
        plain = [await session.run(f"plain-{n}", base) for n in range(runs)]
        snapped = [
            await session.run(f"snap-{n}", {**base, "shellSnapshot": snapshot})
            for n in range(runs + 1)
        ]
        session.reader.cancel()
    return {
        "server": name,
        "plain_ms": round(statistics.median(plain) * 1000, 1),
        "first_with_capture_ms": round(snapped[0] * 1000, 1),
        "snapshot_ms": round(statistics.median(snapped[1:]) * 1000, 1),
    }


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    servers = compared_servers(args.reference)
    with tempfile.TemporaryDirectory() as place:
        home = Path(place)
        (home / ".bash_profile").write_text(f"sleep {args.profile_sleep}\nexport FOO=bar\n")
        return [await measure(name, argv, home, args.runs) for name, argv in servers]


def main() -> None:
    """Run the benchmark, print the rows, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="starts of each kind (default 10)")
    parser.add_argument("--profile-sleep", type=float, default=0.2, help="seconds (default 0.2)")
    add_reference_flag(parser)
    args = parser.parse_args()
    runs = asyncio.run(main_async(args))
    head = [
        "server",
        "`bash -lc true`, no snapshot",
        "first with snapshot (capture)",
        "with snapshot",
    ]
    rows = [
        [
            str(run["server"]),
            f"{run['plain_ms']} ms",
            f"{run['first_with_capture_ms']} ms",
            f"{run['snapshot_ms']} ms",
        ]
        for run in runs
    ]
    print_markdown(head, rows)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"benchmark": "shell_snapshot", "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
