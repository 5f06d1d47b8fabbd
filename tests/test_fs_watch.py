"""``fs/watchMissing`` and ``fs/missingChanged`` over a real WebSocket, on a real filesystem.

The semantics were probed on the 0.169 reference (see ``exec_server.fs.watch``); which
registrations it accepts is compared with the reference directly.

"No notification" is checked after a barrier: two request round trips after the change. The
kernel queues an inotify event before the changing syscall returns, so the server's loop sees
the inotify fd ready no later than the first request, and anything it sends for it goes out
before the second reply (one connection keeps its order).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from exec_server.config import Limits
from exec_server.fs.inotify import available
from exec_server.fs.watch import PLAIN, MissingWatches

from .codex.reference import reference_server
from .support import Client, RpcFailure, open_fds, running_server, wait_until

pytestmark = pytest.mark.skipif(not available(), reason="inotify is Linux-only")


def uri(path: Path | str) -> str:
    return f"file://{path}"


async def watch(
    client: Client, watch_id: int, missing: list[Path], present: Path | None = None
) -> bool:
    result = await client.call(
        "fs/watchMissing",
        {
            "watchId": watch_id,
            "missing": [uri(p) for p in missing],
            "present": None if present is None else uri(present),
        },
    )
    return bool(result["watching"])


def changed(client: Client) -> list[int]:
    return [
        n["params"]["watchId"] for n in client.notifications if n["method"] == "fs/missingChanged"
    ]


async def barrier(client: Client) -> None:
    for _ in range(2):
        await client.call("environment/status")


async def after(client: Client, action: Callable[[], Any], expect: int | None) -> list[int]:
    """Do ``action``; wait for ``expect``'s notification, or check that none came."""
    before = len(changed(client))
    action()
    if expect is None:
        await barrier(client)
    else:
        assert await wait_until(lambda: len(changed(client)) > before, timeout=15)
    return changed(client)[before:]


def inotify_fds() -> int:
    """How many inotify instances this process holds open."""
    count = 0
    for fd in open_fds():
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify"
    return count


async def test_fires_once_when_the_first_missing_component_appears(
    client: Client, tmp_path: Path
) -> None:
    client = client
    assert await watch(client, 1, [tmp_path / "d1" / "d2" / "f"])
    assert await after(client, lambda: (tmp_path / "unrelated").touch(), None) == []
    assert await after(client, lambda: (tmp_path / "d1").mkdir(), 1) == [1]
    # one-shot: later changes under the same path say nothing
    assert await after(client, lambda: (tmp_path / "d1" / "d2").mkdir(), None) == []


@pytest.mark.parametrize(
    "appear",
    [
        lambda p: p.touch(),
        lambda p: p.mkdir(),
        lambda p: p.symlink_to(p.parent / "nowhere"),
        lambda p: (p.parent / "staged").touch() or os.rename(p.parent / "staged", p),
    ],
    ids=["file", "directory", "dangling-symlink", "renamed-into-place"],
)
async def test_any_kind_of_appearance_fires(
    client: Client, tmp_path: Path, appear: Callable[[Path], Any]
) -> None:
    target = tmp_path / "target"
    assert await watch(client, 7, [target])
    assert await after(client, lambda: appear(target), 7) == [7]


async def test_the_watched_directory_and_present_path_changing_fire(
    client: Client, tmp_path: Path
) -> None:
    client = client
    assert await watch(client, 1, [tmp_path / "a"])
    assert await after(client, lambda: tmp_path.chmod(0o755), 1) == [1]
    (tmp_path / "present").touch()
    assert await watch(client, 2, [tmp_path / "b"], present=tmp_path / "present")
    assert await after(client, lambda: (tmp_path / "present").unlink(), 2) == [2]


async def test_one_watch_per_session_and_ids_only_go_up(client: Client, tmp_path: Path) -> None:
    client = client
    assert await watch(client, 5, [tmp_path / "a"])
    assert not await watch(client, 3, [tmp_path / "b"])  # lower: refused, 5 still watched
    assert not await watch(client, 5, [tmp_path / "b"])  # the same id again: refused too
    assert await after(client, lambda: (tmp_path / "b").touch(), None) == []
    assert await after(client, lambda: (tmp_path / "a").touch(), 5) == [5]
    assert await watch(client, 6, [tmp_path / "c"])
    assert await watch(client, 7, [tmp_path / "d"])  # replaces 6
    assert await after(client, lambda: (tmp_path / "c").touch(), None) == []
    assert not await watch(client, 8, [tmp_path / "e", tmp_path / "a"])  # refused, still replaces 7
    assert await after(client, lambda: (tmp_path / "d").touch(), None) == []


async def test_watches_end_with_the_session(tmp_path: Path) -> None:
    """The session's inotify instance is closed when the session ends (here: at disconnect)."""
    before = inotify_fds()
    async with running_server(Limits(detach_grace_s=0)) as (_, url):
        async with Client.connect(url) as client:
            await client.initialize()
            assert await watch(client, 1, [tmp_path / "a"])
            assert inotify_fds() == before + 1
        assert await wait_until(lambda: inotify_fds() == before)


async def test_bad_params(client: Client, tmp_path: Path) -> None:
    for params, field in [
        ({"watchId": 1}, "missing"),
        ({"watchId": "one", "missing": []}, "watchId"),
        ({"watchId": -1, "missing": []}, "watchId"),
        ({"watchId": 2**64, "missing": []}, "watchId"),
        ({"watchId": 1, "missing": ["relative"]}, "missing"),
        ({"watchId": 1, "missing": [], "present": [uri(tmp_path)]}, "present"),
    ]:
        with pytest.raises(RpcFailure) as failure:
            await client.call("fs/watchMissing", params)
        assert failure.value.code == -32602
        assert field in failure.value.message


# ---- the same answers as the reference -----------------------------------------------------


def _registrations(tmp: Path) -> list[tuple[int, list[Path], Path | None]]:
    """Registrations whose ``watching`` answers depend on nothing but the files below."""
    return [
        (0, [tmp / "a"], None),  # ids start above 0
        (1, [tmp / "a", tmp / "b" / "c"], None),
        (1, [tmp / "x"], None),
        (2, [], None),
        (3, [tmp / "exists"], None),
        (4, [tmp / "exists" / "under-a-file"], None),
        (5, [tmp / "r"], tmp / "not-there"),
        (6, [tmp / "r"], tmp / "exists"),
        (9, [Path("/nonexistent-e2e-root") / "q"], None),
        (8, [tmp / "s"], None),
        (2**64 - 1, [tmp / "t"], None),
    ]


async def _answers(url: str, tmp: Path) -> list[bool]:
    async with Client.connect(url) as client:
        await client.initialize()
        return [
            await watch(client, i, missing, present) for i, missing, present in _registrations(tmp)
        ]


async def test_accepts_and_refuses_as_the_reference(server_url: str, tmp_path: Path) -> None:
    (tmp_path / "exists").touch()
    ours = await _answers(server_url, tmp_path)
    async with reference_server() as reference_url:
        theirs = await _answers(reference_url, tmp_path)
    assert ours == theirs
    assert ours == [False, True, False, False, False, False, False, True, True, False, True]


class CountingView:
    """The real filesystem (``PLAIN``), counting how many paths the watch looked at."""

    def __init__(self) -> None:
        self.looked_at = 0

    def mode(self, path: str) -> int | None:
        self.looked_at += 1
        return PLAIN.mode(path)

    def watch(self, path: str, add: Callable[[str], Any]) -> Any:
        return PLAIN.watch(path, add)


async def test_a_watch_past_the_bound_is_refused_before_any_path_is_looked_at(
    tmp_path: Path,
) -> None:
    """Each missing path costs stat calls on the event loop (and its ancestors' too): a
    request naming millions of them (a 64 MiB message holds that many) must be refused by
    its count, not after looking at each one."""
    watches = MissingWatches(asyncio.get_running_loop(), lambda _watch_id: None, max_paths=3)
    view = CountingView()
    try:
        missing = [str(tmp_path / f"never-{i}" / "deeper") for i in range(4)]
        assert not watches.register(1, missing, None, view)
        assert view.looked_at == 0
        assert not watches.register(2, missing[:3], str(tmp_path), view)  # 3 + present
        assert view.looked_at == 0
        assert watches.register(3, missing[:3], None, view)
        assert view.looked_at > 0
    finally:
        watches.release()
