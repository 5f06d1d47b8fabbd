from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from exec_server.config import Limits, Runtime

from .support import Client, running_server


@pytest.fixture
def limits() -> Limits:
    """Override in a test module to shorten constants."""
    return Limits()


@pytest.fixture
def runtime() -> Runtime:
    """Override in a test module to run the server with other native or loop choices."""
    return Runtime()


@pytest.fixture
async def server_url(limits: Limits, runtime: Runtime) -> AsyncIterator[str]:
    async with running_server(limits, runtime=runtime) as (_, url):
        yield url


@pytest.fixture
async def client(server_url: str) -> AsyncIterator[Client]:
    async with Client.connect(server_url) as c:
        await c.initialize()
        yield c
