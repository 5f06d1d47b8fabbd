"""A Pool across three hosts without a cluster: three servers in three network namespaces,
300 processes through the pool, one server killed mid-run. Every process is either completed
or reported lost (naming the dead executor), and new work lands on the survivors."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

from .netns import hosts
from .support import REPO

Process = asyncio.subprocess.Process

PORT = 8765


async def read_message(driver: asyncio.subprocess.Process) -> dict[str, object]:
    assert driver.stdout is not None
    line = await asyncio.wait_for(driver.stdout.readline(), 45)
    assert line, "the pool driver ended early"
    message: dict[str, object] = json.loads(line)
    return message


async def start_server(namespace: str, address: str, token_file: Path) -> Process:
    """Our server in that namespace, listening on its address with the token."""
    return await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", namespace,
        sys.executable, "-m", "exec_server",
        "--listen", f"ws://{address}:{PORT}",
        "--auth-token-file", str(token_file),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=REPO,
    )  # fmt: skip


async def test_pool_over_three_namespaces_survives_a_killed_executor(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("netns-secret\n")
    with hosts(3) as (hub, members):
        servers = []
        try:
            for host in members:
                servers.append(await start_server(host.namespace, host.address, token_file))
            urls = []
            for server in servers:
                assert server.stdout is not None
                urls.append((await asyncio.wait_for(server.stdout.readline(), 30)).decode().strip())
            assert urls == [f"ws://{h.address}:{PORT}" for h in members]
            driver = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", hub.namespace,
                sys.executable, "-m", "tests.pool_driver", "netns-secret", *urls,
                stdout=subprocess.PIPE, cwd=REPO,
            )  # fmt: skip
            try:
                started = await read_message(driver)
                assert started["phase"] == "started"
                by_executor = started["by_executor"]
                assert isinstance(by_executor, dict)
                assert sorted(by_executor) == sorted(urls)  # spread over all three
                assert sum(by_executor.values()) == 300
                victim = urls[1]
                servers[1].send_signal(signal.SIGKILL)  # mid-run: every process sleeps 4 s
                done = await read_message(driver)
            finally:
                if driver.returncode is None:
                    driver.kill()
                await driver.wait()
        finally:
            for server in servers:
                if server.returncode is None:
                    server.kill()
                await server.wait()
    assert done["phase"] == "done"
    assert done["problems"] == []
    completed, lost, new_work = done["completed"], done["lost"], done["new_work"]
    assert isinstance(completed, dict) and isinstance(lost, dict) and isinstance(new_work, dict)
    assert sum(completed.values()) + sum(lost.values()) == 300
    # Killed 4 s before its processes were due to end: they are reported lost (a process
    # that had ended before the kill would count as completed, never as both).
    assert list(lost) == [victim] and lost[victim] >= 1
    assert completed.get(victim, 0) + lost[victim] == by_executor[victim]
    assert victim not in new_work and sum(new_work.values()) == 30
