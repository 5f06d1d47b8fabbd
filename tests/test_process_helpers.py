"""Shared helpers for the process tests (no tests here).

``no_stray_children`` makes the test process a child subreaper for the duration of a test,
so a grandchild orphaned by a killed child is re-parented to us instead of init, and after
the server's shutdown checks that nothing the test started is still running.
"""

from __future__ import annotations

import asyncio
import base64
import ctypes
import ctypes.util
import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from .support import Client

_PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _set_subreaper(on: bool) -> None:
    if _libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _living_descendants() -> list[psutil.Process]:
    alive = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.NoSuchProcess:
            pass
    return alive


def _reap_zombie_children() -> None:
    for proc in psutil.Process().children():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(proc.pid, os.WNOHANG)
        except (psutil.NoSuchProcess, ChildProcessError):
            pass


@pytest.fixture(autouse=True)
def no_stray_children() -> Iterator[None]:
    """Fail a test that leaves any process running once its server has shut down.

    Autouse fixtures are set up first, so this one is torn down after the server fixtures.
    """
    _set_subreaper(True)
    try:
        yield
    finally:
        _set_subreaper(False)
    deadline = time.monotonic() + 5
    stray = _living_descendants()
    while stray and time.monotonic() < deadline:
        time.sleep(0.02)
        stray = _living_descendants()
    described = []
    for proc in stray:
        try:
            described.append(f"{proc.pid} {proc.cmdline()}")
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    if stray:
        psutil.wait_procs(stray, timeout=5)
    _reap_zombie_children()
    assert not described, f"children left running: {described}"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def seqs(events_order: list[tuple[str, int]]) -> list[int]:
    return [seq for _, seq in events_order]


async def fire(client: Client, calls: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """Send every request in order without waiting for any reply; return replies in call order.

    Each message is handed to the socket before the next is built, so the server receives
    them in exactly this order.
    """
    loop = asyncio.get_running_loop()
    futures = []
    for method, params in calls:
        client._next_id += 1
        request_id = client._next_id
        future: asyncio.Future[Any] = loop.create_future()
        client._pending[request_id] = future
        futures.append(future)
        await client.ws.send(json.dumps({"id": request_id, "method": method, "params": params}))
    return list(await asyncio.wait_for(asyncio.gather(*futures), 30))


async def error_of(client: Client, method: str, params: Any) -> dict[str, Any]:
    """The error object of a call that must fail."""
    reply = await client.request(method, params)
    assert "error" in reply, f"{method} {params!r} unexpectedly succeeded: {reply}"
    error: dict[str, Any] = reply["error"]
    return error


def reply_index(client: Client, request_reply: dict[str, Any]) -> int:
    """Where a reply sits among every message the client received."""
    return next(i for i, msg in enumerate(client.raw) if msg is request_reply)
