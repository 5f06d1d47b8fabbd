"""``run -d``, ``ps``, ``logs`` and ``kill``: processes that outlive one command.

A process belongs to the session that started it, and a session outlives its connection
only for the server's ``--detach-grace`` (30 s by default), after which its processes are
killed. So these commands share one session per server: ``run -d`` starts the process in
it and detaches (printing the process id); ``ps``, ``logs`` and ``kill`` take it up again.
Each of them restarts the grace period; for work that must outlive a pause longer than
that, start the server with a longer ``--detach-grace``. The session id is kept, mode
0600, beside the URL file (url_file.py).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from datetime import datetime
from typing import Any

from ._cli_common import LOCAL_ERROR, Leave
from .client import Client
from .errors import NotSupported
from .process import Output

SIGNAL_DEFAULT = "TERM"


async def run_detached(
    client: Client, argv: list[str], cwd: str | None, env: dict[str, str]
) -> int:
    """Start ``argv`` with no stdin and print its id; its output is kept for ``logs``."""
    process = await client.start(argv, cwd=cwd, env=env)
    print(process.id)
    return 0


async def ps(client: Client, args: argparse.Namespace) -> int:
    """The processes of the shared session: id, pid, state, exit code, command."""
    if not client.supports("list"):
        raise NotSupported("this server cannot list processes (no process/list)")
    listed: dict[str, Any] = await client.request("process/list", {})
    rows: list[dict[str, Any]] = listed.get("processes", [])
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'ID':<24} {'PID':>7} {'STATE':<8} {'EXIT':>4} {'STARTED':<19} COMMAND")
    for row in rows:
        code = row.get("exitCode")
        started = datetime.fromtimestamp(row.get("startedAtMs", 0) / 1000)
        print(
            f"{row['processId']:<24} {row.get('pid') or '-':>7} {row['state']:<8} "
            f"{'-' if code is None else code:>4} {started:%Y-%m-%d %H:%M:%S} "
            f"{' '.join(row.get('argv', []))}"
        )
    return 0


async def logs(client: Client, args: argparse.Namespace) -> int:
    """The output the server retained for a process; ``-f`` goes on with it live until
    it closes, then exits with its code."""
    if args.follow:
        process = client.follow(args.id)
        async for event in process.events():
            if isinstance(event, Output):
                _stream(event.stream).write(event.data)
                _stream(event.stream).flush()
        return process.returncode if process.returncode is not None else 0
    after = 0
    while True:
        read: dict[str, Any] = await client.request(
            "process/read", {"processId": args.id, "afterSeq": after}
        )
        chunks = read.get("chunks", [])
        for chunk in chunks:
            _stream(chunk["stream"]).write(base64.b64decode(chunk["chunk"]))
        sys.stdout.buffer.flush()
        sys.stderr.buffer.flush()
        if not chunks:
            return 0
        after = chunks[-1]["seq"]


def _stream(name: str) -> Any:
    return sys.stderr.buffer if name == "stderr" else sys.stdout.buffer


async def kill(client: Client, args: argparse.Namespace) -> int:
    """Signal processes of the shared session (default TERM; KILL ends the whole tree)."""
    name = args.signal.upper().removeprefix("SIG")
    for process_id in args.ids:
        if name == "KILL" or not client.supports("signal"):
            if name not in ("KILL", "TERM"):
                raise Leave(LOCAL_ERROR, f"this server cannot send SIG{name}; only KILL")
            await client.request("process/terminate", {"processId": process_id})
        else:
            await client.request("process/signal", {"processId": process_id, "signal": name})
    return 0
