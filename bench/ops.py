"""`python -m bench.ops`: what operating a fleet costs (issue 21), ours only.

    .venv/bin/python -m bench.ops [--quick] [--only scrape|pool] [--json PATH]

``scrape``
    A server holding 1,000 idle ``sleep`` children; ``GET /metrics`` 200 times in a row.
    The server's CPU per scrape (from /proc, over all of them) and the client-observed wall
    time per scrape (a new TCP connection each, as Prometheus does); then as many ``GET
    /readyz``, the same HTTP exchange without metrics, whose CPU is the part of a scrape
    that is not the metrics. Goal: < 1 ms of CPU.
``pool``
    1,000 ``true`` through ``exec_server.client.Pool``, 32 in flight: over three servers,
    then over one (the same client code). Wall time and runs per second for each.

Servers run on loopback (``--listen ws://127.0.0.1:0``), fresh for each row.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bench import report
from bench.__main__ import raise_fd_limit, run_on_fast_loop
from bench.probe import ServerProbe
from bench.servers import OURS
from exec_server.client import Pool, connect

RESULTS = Path(__file__).resolve().parent / "results"
IN_FLIGHT = 32


@contextlib.asynccontextmanager
async def server() -> AsyncIterator[tuple[str, int]]:
    """Our server on a free loopback port: (url, pid)."""
    proc = await asyncio.create_subprocess_exec(
        str(OURS),
        "--listen",
        "ws://127.0.0.1:0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        url = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        yield url, proc.pid
    finally:
        proc.terminate()  # no process left running by then: the drain ends at once
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def scrape_once(url: str, path: str = "/metrics") -> float:
    host, _, port = url.removeprefix("ws://").rpartition(":")
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    body = await reader.read()
    writer.close()
    if b" 200 " not in body.split(b"\r\n", 1)[0]:
        raise RuntimeError(f"{path} answered {body[:100]!r}")
    return time.perf_counter() - t0


async def scrape(children: int, scrapes: int) -> dict[str, float]:
    async with server() as (url, pid), connect(url) as client:
        held = [await client.start(["sleep", "600"]) for _ in range(children)]
        await asyncio.sleep(1.0)
        probe = ServerProbe(pid)
        walls = []
        cpu0 = probe.cpu_seconds()
        for _ in range(scrapes):
            walls.append(await scrape_once(url))
        cpu = probe.cpu_seconds() - cpu0
        cpu0 = probe.cpu_seconds()
        for _ in range(scrapes):
            await scrape_once(url, "/readyz")
        ready_cpu = probe.cpu_seconds() - cpu0
        for process in held:
            await process.terminate()
    return {
        "children": children,
        "scrape_cpu_ms": cpu / scrapes * 1000,
        "scrape_wall_median_ms": statistics.median(walls) * 1000,
        "readyz_cpu_ms": ready_cpu / scrapes * 1000,  # the same HTTP exchange, no metrics
    }


async def through_pool(urls: list[str], runs: int) -> float:
    """Seconds for ``runs`` ``true`` through a pool over ``urls``, IN_FLIGHT at a time."""
    async with Pool(urls) as pool:
        await pool.run(["true"])  # sessions open: their cost is not the row's
        queue = iter(range(runs))

        async def worker() -> None:
            for _ in queue:
                result = await pool.run(["true"])
                if result.returncode != 0:
                    raise RuntimeError(f"`true` exited {result.returncode}")

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
        return time.perf_counter() - t0


async def pool_row(runs: int) -> dict[str, float]:
    async with contextlib.AsyncExitStack() as stack:
        three = [(await stack.enter_async_context(server()))[0] for _ in range(3)]
        pool3 = await through_pool(three, runs)
        one = await through_pool(three[:1], runs)
    return {
        "runs": runs,
        "pool3_s": pool3,
        "one_s": one,
        "pool3_per_s": runs / pool3,
        "one_per_s": runs / one,
    }


async def run(args: argparse.Namespace) -> int:
    raise_fd_limit()
    children, scrapes, runs = (100, 50, 200) if args.quick else (1000, 200, 1000)
    rows: dict[str, Any] = {}
    if args.only in (None, "scrape"):
        rows["scrape"] = await scrape(children, scrapes)
        print("scrape:", json.dumps(rows["scrape"]), flush=True)
    if args.only in (None, "pool"):
        rows["pool"] = await pool_row(runs)
        print("pool:", json.dumps(rows["pool"]), flush=True)
    payload = {"host": report.host_info(), "quick": args.quick, "rows": rows}
    report.write_json(args.json, payload)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ops", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="100 children, 200 runs")
    parser.add_argument("--only", choices=("scrape", "pool"), help="one row only")
    parser.add_argument("--json", type=Path, default=RESULTS / "ops-latest.json")
    return run_on_fast_loop(run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
