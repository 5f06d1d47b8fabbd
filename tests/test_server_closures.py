"""Issue 17, the server's side: what a client or a sandboxed child must never get from the
server itself (its token, its control sockets, its descriptors). Real servers, real sockets,
real children; each test fails without the closure it names (docs/sandbox.md, "Server-side
closures (issue 17)")."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.asyncio.client import unix_connect
from websockets.exceptions import InvalidStatus

from exec_server.client import AuthenticationFailed
from exec_server.client import connect as client_connect

from .support import REPO, Client, server_command

INHERIT_ALL = {
    "inherit": "all",
    "ignoreDefaultExcludes": True,
    "exclude": [],
    "set": {},
    "includeOnly": [],
}


@contextlib.asynccontextmanager
async def cli(*args: str, env: dict[str, str] | None = None) -> AsyncIterator[str]:
    """The real command with ``env`` added to the test's environment; yields its URL."""
    proc = await asyncio.create_subprocess_exec(
        *server_command(*args),
        stdin=subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )
    try:
        assert proc.stdout is not None
        yield (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().rstrip("\n")
    finally:
        if proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 30)


# ---- item 2: the token leaves the server's environment ----------------------------------------


async def test_the_token_variable_never_reaches_a_child() -> None:
    token = "tok-" + os.urandom(8).hex()
    async with (
        cli(env={"EXEC_SERVER_TOKEN": token}) as url,
        Client.connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as client,
    ):
        await client.initialize()
        events = await client.run("env", ["env"], env={}, envPolicy=INHERIT_ALL)
        shown = events.data().decode()
        assert "PATH=" in shown  # the policy did inherit the server's environment
        assert "EXEC_SERVER_TOKEN" not in shown and token not in shown


# ---- item 1c: a Unix listener takes and requires the token ------------------------------------


async def test_a_unix_listener_requires_the_token(tmp_path: Path) -> None:
    path = tmp_path / "exec.sock"
    token = "tok-" + os.urandom(8).hex()
    async with cli("--listen", f"unix://{path}", env={"EXEC_SERVER_TOKEN": token}) as url:
        assert url == f"unix://{path}"
        with pytest.raises(InvalidStatus) as refused:
            async with unix_connect(str(path)):
                pass
        assert refused.value.response.status_code == 401
        with pytest.raises(AuthenticationFailed):
            async with client_connect(url, token="wrong", reconnect=False):
                pass
        async with client_connect(url, token=token, reconnect=False) as client:
            result = await client.run(["echo", "over unix"])
            assert result.stdout == b"over unix\n"
