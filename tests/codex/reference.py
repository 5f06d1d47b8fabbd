"""The reference server (`codex exec-server` 0.169) for side-by-side answers in method tests."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import AsyncIterator, Mapping, Sequence

import pytest

from ..support import Client
from .harness import install_codex


@functools.cache
def _codex() -> tuple[str | None, str]:
    path, why = install_codex()
    return (None if path is None else str(path)), why


def codex_or_skip() -> str:
    path, why = _codex()
    if path is None:
        pytest.skip(why)
    return path


@contextlib.asynccontextmanager
async def reference_server(
    env: Mapping[str, str] | None = None, prefix: Sequence[str] = ()
) -> AsyncIterator[str]:
    """A reference server on a free loopback port, killed at the end; yields its URL.
    ``prefix`` runs it through another command (``setpriv`` to drop root, ...)."""
    async with listening([*prefix, codex_or_skip(), "exec-server"], env) as url:
        yield url


@contextlib.asynccontextmanager
async def listening(command: Sequence[str], env: Mapping[str, str] | None) -> AsyncIterator[str]:
    """``command --listen ws://127.0.0.1:0`` (a server printing its URL first), killed at
    the end with its process group; yields the URL."""
    proc = await asyncio.create_subprocess_exec(
        *command,
        "--listen",
        "ws://127.0.0.1:0",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        yield line.decode().strip()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        await proc.wait()


@contextlib.asynccontextmanager
async def reference_client(
    env: Mapping[str, str] | None = None, prefix: Sequence[str] = ()
) -> AsyncIterator[Client]:
    """An initialized client of a fresh reference server."""
    async with reference_server(env, prefix) as url, Client.connect(url) as client:
        await client.initialize()
        yield client
