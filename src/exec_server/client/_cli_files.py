"""``ls``, ``stat``, ``cat``, ``put``, ``get``, ``mkdir`` and ``rm``: the server's files from
the command line, with ``cp``'s and ``scp``'s habits (``-r`` for trees, ``-p`` to keep modes
and modification times, a progress line on a terminal for a copy that takes a while)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import stat
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any, BinaryIO

from ._cli_common import LOCAL_ERROR, Leave
from .client import Client
from .fs import FileStat

FILE_BLOCK = 256 * 1024
PROGRESS_AFTER_S = 1.0
"""A copy shows a progress line (on a terminal) once it has taken this long."""
PROGRESS_EVERY_S = 0.25
_TOUCH_BATCH = 200
"""Files whose mode and time one remote command sets (`put -p`)."""


# ---- listing ------------------------------------------------------------------------------


def _stat_json(path: str, info: FileStat) -> dict[str, Any]:
    kind = "directory" if info.is_dir else "file" if info.is_file else "other"
    return {
        "path": path,
        "type": kind,
        "symlink": info.is_symlink,
        "size": info.size,
        "modifiedAtMs": info.modified_at_ms,
        "createdAtMs": info.created_at_ms,
    }


def _long_line(name: str, info: FileStat) -> str:
    kind = "d" if info.is_dir else "l" if info.is_symlink else "-" if info.is_file else "?"
    when = datetime.fromtimestamp(info.modified_at_ms / 1000).strftime("%Y-%m-%d %H:%M")
    size = "-" if info.size is None else str(info.size)
    return f"{kind} {size:>12} {when} {name}{'/' if info.is_dir else ''}"


async def ls(client: Client, args: argparse.Namespace) -> int:
    """List directories (a file lists as itself): names, ``-l`` long lines, ``--json``."""
    paths = args.paths or ["."]
    rows: list[dict[str, Any]] = []
    for index, path in enumerate(paths):
        info = await client.fs.stat(path)
        entries = [(path, path, False)]
        if info.is_dir:
            entries = [(e.name, str(e.path), e.is_dir) for e in await client.fs.iterdir(path)]
            if len(paths) > 1 and not args.json:
                print(f"{'' if index == 0 else chr(10)}{path}:")
        wanted = args.long or args.json
        details = await _stats([full for _, full, _ in entries], client) if wanted else {}
        for name, full, is_dir in entries:
            if args.json:
                rows.append({"name": name, **_stat_json(full, details[full])})
            elif args.long:
                print(_long_line(name, details[full]))
            else:
                print(name + ("/" if is_dir else ""))
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


async def _stats(paths: list[str], client: Client) -> dict[str, FileStat]:
    infos = await asyncio.gather(*(client.fs.stat(p) for p in paths))
    return dict(zip(paths, infos, strict=True))


async def stat_(client: Client, args: argparse.Namespace) -> int:
    """Kind, size and times of each path; ``--json`` for a harness."""
    infos = await _stats(list(args.paths), client)
    if args.json:
        print(json.dumps([_stat_json(p, i) for p, i in infos.items()], indent=2))
        return 0
    for path, info in infos.items():
        kind = "directory" if info.is_dir else "file" if info.is_file else "other"
        link = " (symlink)" if info.is_symlink else ""
        when = datetime.fromtimestamp(info.modified_at_ms / 1000).isoformat(timespec="seconds")
        print(
            f"{path}: {kind}{link}, {info.size if info.size is not None else '?'} bytes, "
            f"modified {when}"
        )
    return 0


async def cat(client: Client, args: argparse.Namespace) -> int:
    """Print remote files, byte for byte."""
    out = sys.stdout.buffer
    for path in args.paths:
        async with client.fs.open(path) as remote:
            async for block in remote:
                out.write(block)
        out.flush()
    return 0


async def mkdir(client: Client, args: argparse.Namespace) -> int:
    """Create directories; ``-p``: parents too, and no error if it exists."""
    for path in args.paths:
        await client.fs.mkdir(path, parents=args.parents, exist_ok=args.parents)
    return 0


async def rm(client: Client, args: argparse.Namespace) -> int:
    """Remove files (``-r``: trees; ``-f``: a missing path is fine)."""
    for path in args.paths:
        info = None
        with contextlib.suppress(FileNotFoundError):
            info = await client.fs.stat(path)
        if info is not None and info.is_dir and not info.is_symlink and not args.recursive:
            raise Leave(LOCAL_ERROR, f"{path}: is a directory (use rm -r)")
        await client.fs.remove(path, recursive=args.recursive, missing_ok=args.force)
    return 0


# ---- copying ------------------------------------------------------------------------------


class Progress:
    """One line on stderr, on a terminal only, once a copy has run for a second."""

    def __init__(self) -> None:
        self.enabled = os.isatty(2)
        self.started = time.monotonic()
        self.last = 0.0
        self.done = 0
        self.shown = False

    def add(self, name: str, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if not self.enabled or now - self.started < PROGRESS_AFTER_S:
            return
        if now - self.last < PROGRESS_EVERY_S:
            return
        self.last = now
        rate = self.done / max(now - self.started, 1e-6)
        sys.stderr.write(f"\r\x1b[K{name}  {_size(self.done)}  {_size(rate)}/s")
        sys.stderr.flush()
        self.shown = True

    def finish(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"  # pragma: no cover


@dataclass
class _Copied:
    """A file copied, for ``-p``: where it went, its mode and its modification time."""

    target: str
    mode: int
    mtime_ns: int


async def put(client: Client, args: argparse.Namespace) -> int:
    """Copy local files (``-r``: trees) to the server."""
    progress = Progress()
    copied: list[_Copied] = []
    try:
        for local in args.local:
            await _put_one(client, args, local, copied, progress)
    finally:
        progress.finish()
    if args.preserve and copied:
        await _set_remote_times(client, copied)
    return 0


async def _put_one(
    client: Client, args: argparse.Namespace, local: str, copied: list[_Copied], progress: Progress
) -> None:
    name, is_dir = _local_kind(local)
    target = PurePosixPath(args.remote or ".")
    into_dir = (args.remote or ".").endswith("/") or len(args.local) > 1
    if into_dir or await client.fs.is_dir(target):
        target = target / name
    if is_dir:
        if not args.recursive:
            raise Leave(LOCAL_ERROR, f"{local}: is a directory (use put -r)")
        await _put_tree(client, local, target, copied, progress)
        return
    await _put_file(client, local, target, copied, progress)


async def _put_tree(
    client: Client, local: str, target: PurePosixPath, copied: list[_Copied], progress: Progress
) -> None:
    directories: list[_Copied] = []
    for root, parts, files in _local_walk(local):
        base = target.joinpath(*parts)
        await client.fs.mkdir(base, parents=True, exist_ok=True)
        info = os.stat(root)
        directories.append(_Copied(str(base), stat.S_IMODE(info.st_mode), info.st_mtime_ns))
        for name in files:
            await _put_file(client, os.path.join(root, name), base / name, copied, progress)
    copied.extend(reversed(directories))  # deepest first: filling a directory changes its time


def _local_kind(local: str) -> tuple[str, bool]:
    """The name a local source gets remotely, and whether it is a directory."""
    if local == "-":
        return "stdin", False
    return os.path.basename(os.path.normpath(local)), os.path.isdir(local)


def _local_walk(local: str) -> list[tuple[str, tuple[str, ...], list[str]]]:
    """Each directory of a local tree, top first: its path, its parts below ``local``, and
    its files (other entries, such as sockets, are left out)."""
    found = []
    for root, dirs, files in os.walk(local):
        dirs.sort()
        relative = os.path.relpath(root, local)
        parts = () if relative == "." else tuple(relative.split(os.sep))
        regular = [f for f in sorted(files) if os.path.isfile(os.path.join(root, f))]
        found.append((root, parts, regular))
    return found


async def _put_file(
    client: Client, local: str, target: PurePosixPath, copied: list[_Copied], progress: Progress
) -> None:
    with _local_source(local) as source:
        async with client.fs.open(target, "wb") as remote:
            while block := await _read_local(source):
                await remote.write(block)
                progress.add(str(target), len(block))
        if local != "-":
            info = os.fstat(source.fileno())
            copied.append(_Copied(str(target), stat.S_IMODE(info.st_mode), info.st_mtime_ns))


async def _set_remote_times(client: Client, copied: list[_Copied]) -> None:
    """``put -p``: the file protocol sets neither mode nor time, so `chmod` and `touch`
    do, on the server, a batch of files at a time (directories last, as their own
    times change while they fill)."""
    script = (
        'while [ "$#" -ge 3 ]; do chmod "$1" -- "$3" && touch -m -d "@$2" -- "$3" || exit 1; '
        "shift 3; done"
    )
    for start in range(0, len(copied), _TOUCH_BATCH):
        batch = copied[start : start + _TOUCH_BATCH]
        argv = ["/bin/sh", "-c", script, "sh"]
        for item in batch:
            seconds, nanos = divmod(item.mtime_ns, 1_000_000_000)
            argv += [f"{item.mode:o}", f"{seconds}.{nanos:09d}", item.target]
        done = await client.run(argv)
        if done.returncode != 0:
            problem = done.stderr.decode(errors="replace").strip() or f"exit {done.returncode}"
            raise Leave(LOCAL_ERROR, f"-p: could not set modes and times: {problem}")


async def get(client: Client, args: argparse.Namespace) -> int:
    """Copy remote files (``-r``: trees) here."""
    progress = Progress()
    try:
        remote = PurePosixPath(args.remote)
        info = await client.fs.stat(remote)
        local = _local_target(args.local, remote.name or "root")
        if info.is_dir:
            if not args.recursive:
                raise Leave(LOCAL_ERROR, f"{remote}: is a directory (use get -r)")
            if local == "-":
                raise Leave(LOCAL_ERROR, "a directory cannot be written to stdout")
            await _get_tree(client, remote, local, args.preserve, progress)
        else:
            await _get_file(client, remote, local, info if args.preserve else None, progress)
    finally:
        progress.finish()
    return 0


async def _get_tree(
    client: Client, remote: PurePosixPath, local: str, preserve: bool, progress: Progress
) -> None:
    os.makedirs(local, exist_ok=True)
    for entry in await client.fs.iterdir(remote):
        target = os.path.join(local, entry.name)
        if entry.is_dir:
            await _get_tree(client, entry.path, target, preserve, progress)
        elif entry.is_file:
            info = await client.fs.stat(entry.path) if preserve else None
            await _get_file(client, entry.path, target, info, progress)
    if preserve:
        await _copy_remote_modes(client, remote, local)
        info = await client.fs.stat(remote)
        os.utime(local, ns=(info.modified_at_ms * 1_000_000,) * 2)


async def _get_file(
    client: Client,
    remote_path: PurePosixPath,
    local: str,
    preserve: FileStat | None,
    progress: Progress,
) -> None:
    async with client.fs.open(remote_path) as remote:
        with _local_sink(local) as sink:
            async for block in remote:
                sink.write(block)
                progress.add(str(remote_path), len(block))
    if preserve is not None and local != "-":
        await _copy_remote_modes(client, remote_path, local)
        os.utime(local, ns=(preserve.modified_at_ms * 1_000_000,) * 2)


async def _copy_remote_modes(client: Client, remote: PurePosixPath, local: str) -> None:
    """``get -p``: the mode comes from `stat` on the server (the file protocol has none)."""
    done = await client.run(["stat", "-c", "%a", "--", str(remote)])
    text = done.stdout.decode().strip()
    if done.returncode == 0 and text.isdigit():
        os.chmod(local, int(text, 8))


def _local_target(local: str | None, name: str) -> str:
    """Where ``get`` writes: LOCAL, LOCAL/NAME if it is a directory, or ./NAME."""
    if local is None:
        return name
    return os.path.join(local, name) if local != "-" and os.path.isdir(local) else local


@contextlib.contextmanager
def _local_source(path: str) -> Iterator[BinaryIO]:
    if path == "-":
        yield sys.stdin.buffer
    else:
        with open(path, "rb") as file:
            yield file


@contextlib.contextmanager
def _local_sink(path: str) -> Iterator[BinaryIO]:
    if path == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
    else:
        with open(path, "wb") as file:
            yield file


async def _read_local(source: BinaryIO) -> bytes:
    """The next block, or what has come so far from a pipe (which a full read would wait
    on until the block is full): each goes on at once."""
    read = getattr(source, "read1", source.read)
    data: bytes = await asyncio.get_running_loop().run_in_executor(None, read, FILE_BLOCK)
    return data
