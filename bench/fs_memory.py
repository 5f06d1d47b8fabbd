"""Server memory while 1 GiB moves through file handles: does RSS stay flat?

    .venv/bin/python -m bench.fs_memory [--size-mib 1024] [--window 4] [--no-reference]

Starts a fresh server (ours; and the 0.169 reference when it is installed), then through one
WebSocket connection: writes a file of ``--size-mib`` MiB with ``fs/open`` (replace) and
1 MiB ``fs/writeBlock`` calls, reads it back with 1 MiB ``fs/readBlock`` calls (checking every
byte), and asks ``fs/readFile`` for it, which must be refused (above 512 MiB). ``--window``
requests are kept in flight. The server's RSS is sampled every 20 ms: the table shows it
before, the peak during each phase, and after. Results go to ``bench/results/fs_memory.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
from websockets.asyncio.client import ClientConnection, connect

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "fs_memory.json"
REFERENCE = (
    Path.home()
    / ".cache/exec-server-peers/codex-0.169.0/node_modules/@openai/codex-linux-x64"
    / "vendor/x86_64-unknown-linux-musl/bin/codex"
)
MIB = 1024 * 1024
BLOCK = MIB


class Rpc:
    """The smallest JSON-RPC client that can pipeline: replies matched by id."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._next = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for raw in self.ws:
            message = json.loads(raw)
            future = self._pending.pop(message.get("id", -2), None)
            if future is not None:
                future.set_result(message)

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self._next += 1
        future = asyncio.get_running_loop().create_future()
        self._pending[self._next] = future
        await self.ws.send(json.dumps({"id": self._next, "method": method, "params": params}))
        return await asyncio.wait_for(future, 120)

    async def call(self, method: str, params: dict[str, Any]) -> Any:
        reply = await self.request(method, params)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def close(self) -> None:
        self._reader.cancel()


@dataclass
class Phase:
    """RSS around one phase, in MiB, its throughput, and the server's CPU time (user+system:
    steadier than throughput on a busy machine)."""

    peak_mib: float = 0.0
    after_mib: float = 0.0
    seconds: float = 0.0
    mib_per_s: float = 0.0
    server_cpu_s: float = 0.0


@dataclass
class Run:
    server: str
    size_mib: int
    baseline_mib: float = 0.0
    write: Phase = field(default_factory=Phase)
    read: Phase = field(default_factory=Phase)
    read_file_refused: str = ""
    read_file_after_mib: float = 0.0
    error: str | None = None


class RssSampler:
    """Samples a process's RSS in the background; ``peak`` since the last ``reset``."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self.cpu_at_reset = 0.0
        self._task = asyncio.ensure_future(self._sample())

    def now(self) -> int:
        rss = int(self.process.memory_info().rss)
        self.peak = max(self.peak, rss)
        return rss

    def reset(self) -> None:
        self.peak = 0
        self.now()
        self.cpu_at_reset = self.cpu()

    def cpu(self) -> float:
        times = self.process.cpu_times()
        return float(times.user + times.system)

    async def _sample(self) -> None:
        while True:
            with contextlib.suppress(psutil.Error):
                self.now()
            await asyncio.sleep(0.02)

    def stop(self) -> None:
        self._task.cancel()


def _mib(n: int) -> float:
    return round(n / MIB, 1)


@contextlib.asynccontextmanager
async def started(argv: list[str]) -> AsyncIterator[tuple[int, str]]:
    """A server on a free loopback port: yields (pid, ws url); killed afterwards."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=tempfile.gettempdir(),
    )
    try:
        assert process.stdout is not None
        url = (await asyncio.wait_for(process.stdout.readline(), 30)).decode().strip()
        if not url.startswith("ws://"):
            raise RuntimeError(f"{argv[0]} did not print its URL (got {url!r})")
        yield process.pid, url
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


async def windowed(count: int, window: int, job: Callable[[int], Awaitable[None]]) -> None:
    """Run ``job(0..count-1)`` with at most ``window`` in flight, started in order."""
    in_flight: set[asyncio.Task[None]] = set()
    for n in range(count):
        if len(in_flight) >= window:
            done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        in_flight.add(asyncio.ensure_future(job(n)))
    for task in asyncio.as_completed(in_flight):
        await task


async def measure(name: str, argv: list[str], size_mib: int, window: int, workdir: Path) -> Run:
    run = Run(server=name, size_mib=size_mib)
    target = workdir / f"fs-memory-{name}.bin"
    uri = target.as_uri()
    block = os.urandom(BLOCK)
    block_b64 = base64.b64encode(block).decode()
    try:
        async with (
            started(argv) as (pid, url),
            connect(url, compression=None, max_size=None) as ws,
        ):
            rpc = Rpc(ws)
            sampler = RssSampler(pid)
            try:
                await rpc.call("initialize", {"clientName": "bench-fs-memory"})
                await ws.send(json.dumps({"method": "initialized", "params": {}}))
                await asyncio.sleep(0.3)
                run.baseline_mib = _mib(sampler.now())

                # Write through a replace handle, block by block.
                sampler.reset()
                started_at = time.perf_counter()
                await rpc.call("fs/open", {"handleId": "w", "path": uri, "mode": "replace"})

                async def write(n: int) -> None:
                    params = {"handleId": "w", "offset": n * BLOCK, "chunk": block_b64}
                    await rpc.call("fs/writeBlock", params)

                await windowed(size_mib, window, write)
                await rpc.call("fs/close", {"handleId": "w"})
                run.write = _phase(sampler, started_at, size_mib)
                if target.stat().st_size != size_mib * MIB:
                    raise RuntimeError(f"wrote {target.stat().st_size} bytes")

                # Read it back, checking every byte.
                sampler.reset()
                started_at = time.perf_counter()
                await rpc.call("fs/open", {"handleId": "r", "path": uri})

                async def read(n: int) -> None:
                    params = {"handleId": "r", "offset": n * BLOCK, "len": BLOCK}
                    result = await rpc.call("fs/readBlock", params)
                    if base64.b64decode(result["chunk"]) != block:
                        raise RuntimeError(f"block {n} read back wrong")

                await windowed(size_mib, window, read)
                await rpc.call("fs/close", {"handleId": "r"})
                run.read = _phase(sampler, started_at, size_mib)

                # The whole file at once is refused above the limit, without reading it.
                reply = await rpc.request("fs/readFile", {"path": uri})
                error = reply.get("error")
                run.read_file_refused = (
                    f"{error['code']} {error['message']}"
                    if error
                    else "not refused: the whole file came back (it is under the limit)"
                )
                await asyncio.sleep(0.2)
                run.read_file_after_mib = _mib(sampler.now())
            finally:
                sampler.stop()
                rpc.close()
    except Exception as exc:
        run.error = f"{type(exc).__name__}: {exc}"
    finally:
        target.unlink(missing_ok=True)
    return run


def _phase(sampler: RssSampler, started_at: float, size_mib: int) -> Phase:
    seconds = time.perf_counter() - started_at
    return Phase(
        peak_mib=_mib(sampler.peak),
        after_mib=_mib(sampler.now()),
        seconds=round(seconds, 2),
        mib_per_s=round(size_mib / seconds, 1),
        server_cpu_s=round(sampler.cpu() - sampler.cpu_at_reset, 2),
    )


def table(runs: list[Run]) -> str:
    head = (
        "server",
        "RSS before",
        "write peak",
        "after write",
        "read peak",
        "after read",
        "write MiB/s",
        "read MiB/s",
        "server CPU s (w/r)",
    )
    rows = [head]
    for run in runs:
        if run.error:
            rows.append((run.server, f"error: {run.error}", "", "", "", "", "", "", ""))
            continue
        rows.append(
            (
                run.server,
                f"{run.baseline_mib} MiB",
                f"{run.write.peak_mib} MiB",
                f"{run.write.after_mib} MiB",
                f"{run.read.peak_mib} MiB",
                f"{run.read.after_mib} MiB",
                f"{run.write.mib_per_s}",
                f"{run.read.mib_per_s}",
                f"{run.write.server_cpu_s} / {run.read.server_cpu_s}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def compared_servers(reference: bool) -> list[tuple[str, list[str]]]:
    """``(name, argv)`` of our server and, with ``reference`` and when it is installed, the
    0.169 reference, each listening on a free loopback port."""
    servers = [("ours", [sys.executable, "-m", "exec_server", "--listen", "ws://127.0.0.1:0"])]
    if reference and REFERENCE.exists():
        servers.append(
            ("ref-0.169", [str(REFERENCE), "exec-server", "--listen", "ws://127.0.0.1:0"])
        )
    return servers


def add_reference_flag(parser: argparse.ArgumentParser) -> None:
    """``--no-reference`` (``args.reference`` false): measure our server only."""
    parser.add_argument(
        "--no-reference", dest="reference", action="store_false", help="only our server"
    )


def print_markdown(head: list[str], rows: list[list[str]]) -> None:
    """A Markdown table as bench/README.md takes it."""
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(row) + " |")


async def main_async(args: argparse.Namespace) -> list[Run]:
    servers = compared_servers(args.reference)
    workdir = Path(args.dir)
    runs = []
    for name, argv in servers:
        print(f"{name}: moving {args.size_mib} MiB through file handles...", file=sys.stderr)
        runs.append(await measure(name, argv, args.size_mib, args.window, workdir))
    return runs


def main() -> None:
    """Run the benchmark, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="file size (default 1024)")
    parser.add_argument("--window", type=int, default=4, help="requests in flight (default 4)")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the file goes")
    add_reference_flag(parser)
    args = parser.parse_args()
    runs = asyncio.run(main_async(args))
    print(table(runs))
    for run in runs:
        if run.read_file_refused:
            print(f"{run.server}: fs/readFile of the whole file -> {run.read_file_refused}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": "fs_memory",
        "block_bytes": BLOCK,
        "window": args.window,
        "runs": [asdict(run) for run in runs],
    }
    RESULTS.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(REPO)}", file=sys.stderr)
    if any(run.error for run in runs):
        sys.exit(1)


if __name__ == "__main__":
    main()
