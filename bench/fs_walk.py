"""Server memory and time for ``fs/walk`` over one directory of many names: bounded?

    .venv/bin/python -m bench.fs_walk [--files 1000000] [--dir PATH] [--no-reference]

Makes (once, kept for reruns) a directory of ``--files`` empty files, then for each server
(ours; the 0.169 reference when installed) starts it fresh and sends one ``fs/walk`` of that
directory with the largest limits (50 000 entries): the walk must sort every name to return
the smallest 50 000. Shows the server's RSS before and its peak during the walk (sampled every
20 ms), the walk's wall time and the entries returned. Results go to
``bench/results/fs_walk.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from .fs_memory import (
    REPO,
    Rpc,
    RssSampler,
    _mib,
    add_reference_flag,
    compared_servers,
    print_markdown,
    started,
)

RESULTS = REPO / "bench" / "results" / "fs_walk.json"
OPTIONS = {
    "maxDepth": 0,
    "maxDirectories": 1,
    "maxEntries": 50_000,
    "followDirectorySymlinks": False,
    "pruneHiddenDirectories": False,
}


def make_tree(directory: Path, files: int) -> None:
    """``files`` empty files named so their order is not the creation order."""
    directory.mkdir(parents=True, exist_ok=True)
    have = sum(1 for _ in os.scandir(directory))
    for index in range(have, files):
        name = f"{(index * 7919) % files:07d}-{index}"
        os.close(os.open(directory / name, os.O_CREAT | os.O_WRONLY, 0o644))


async def measure(name: str, argv: list[str], directory: Path) -> dict[str, Any]:
    async with started(argv) as (pid, url), connect(url, max_size=None) as ws:
        rpc = Rpc(ws)
        await rpc.call("initialize", {"clientName": "bench-fs-walk"})
        await ws.send(json.dumps({"method": "initialized", "params": {}}))
        sampler = RssSampler(pid)
        sampler.reset()
        before = sampler.now()
        began = time.perf_counter()
        reply = await rpc.call("fs/walk", {"path": f"file://{directory}", "options": OPTIONS})
        elapsed = time.perf_counter() - began
        sampler.stop()
        rpc.close()
        return {
            "server": name,
            "rss_before_mib": _mib(before),
            "rss_peak_mib": _mib(sampler.peak),
            "seconds": round(elapsed, 2),
            "entries": len(reply["entries"]),
            "truncated": reply["truncated"],
        }


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    directory = Path(args.dir) / f"exec-server-bench-walk-{args.files}"
    print(f"making {args.files} files in {directory} (kept for reruns)...", file=sys.stderr)
    make_tree(directory, args.files)
    servers = compared_servers(args.reference)
    return [await measure(name, argv, directory) for name, argv in servers]


def main() -> None:
    """Run the benchmark, print the rows, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1_000_000, help="names (default 1000000)")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the tree goes")
    add_reference_flag(parser)
    args = parser.parse_args()
    runs = asyncio.run(main_async(args))
    head = ["server", "files", "RSS before", "peak during walk", "wall time", "entries"]
    rows = [
        [
            str(run["server"]),
            str(args.files),
            f"{run['rss_before_mib']} MiB",
            f"{run['rss_peak_mib']} MiB",
            f"{run['seconds']} s",
            str(run["entries"]),
        ]
        for run in runs
    ]
    print_markdown(head, rows)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"benchmark": "fs_walk", "files": args.files, "runs": runs}))


if __name__ == "__main__":
    main()
