"""The reference server (`codex exec-server` 0.169) for side-by-side answers in method tests."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import AsyncIterator, Mapping

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
async def reference_server(env: Mapping[str, str] | None = None) -> AsyncIterator[str]:
    """A reference server on a free loopback port, killed at the end; yields its URL."""
    proc = await asyncio.create_subprocess_exec(
        codex_or_skip(),
        "exec-server",
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
async def reference_client(env: Mapping[str, str] | None = None) -> AsyncIterator[Client]:
    """An initialized client of a fresh reference server."""
    async with reference_server(env) as url, Client.connect(url) as client:
        await client.initialize()
        yield client
