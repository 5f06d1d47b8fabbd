"""``exec-server --listen stdio`` with every kind of thing on either end: pipes, files,
sockets, terminals and ``/dev/null``, on both event loops (issue 11: a file or /dev/null as
stdout used to abort the server before it wrote a reply)."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import socket
import subprocess
import termios
import tty
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .support import REPO, server_command

REQUESTS = [
    {"id": 1, "method": "initialize", "params": {"clientName": "ends"}},
    {"method": "initialized"},
    {"id": 2, "method": "environment/status"},
]
INPUT = b"".join(json.dumps(r).encode() + b"\n" for r in REQUESTS)


class End:
    """One end of the server: the fd to hand it, and how the test feeds or drains it."""

    def __init__(self, fd: int, other: int | None = None, path: Path | None = None) -> None:
        self.fd = fd  # given to the server
        self.other = other  # the test's side, if any
        self.path = path


def _pipe_in(data: bytes, _: Path) -> End:
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    return End(r)


def _file_in(data: bytes, tmp: Path) -> End:
    path = tmp / "requests.jsonl"
    path.write_bytes(data)
    return End(os.open(path, os.O_RDONLY))


def _socket_in(data: bytes, _: Path) -> End:
    ours, theirs = socket.socketpair()
    ours.sendall(data)
    ours.shutdown(socket.SHUT_WR)
    return End(theirs.detach(), ours.detach())


def _tty_in(data: bytes, _: Path) -> End:
    master, slave = pty.openpty()
    tty.setraw(slave, termios.TCSANOW)  # no echo, no line editing: the bytes as written
    os.write(master, data)
    return End(slave, master)


def _pipe_out(tmp: Path) -> End:
    r, w = os.pipe()
    return End(w, r)


def _file_out(tmp: Path) -> End:
    path = tmp / "replies.jsonl"
    return End(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), path=path)


def _devnull_out(tmp: Path) -> End:
    return End(os.open(os.devnull, os.O_WRONLY))


def _socket_out(tmp: Path) -> End:
    ours, theirs = socket.socketpair()
    return End(theirs.detach(), ours.detach())


def _tty_out(tmp: Path) -> End:
    master, slave = pty.openpty()
    tty.setraw(slave, termios.TCSANOW)
    return End(slave, master)


INS: dict[str, Callable[[bytes, Path], End]] = {
    "pipe": _pipe_in,
    "file": _file_in,
    "socket": _socket_in,
    "tty": _tty_in,
}
OUTS: dict[str, Callable[[Path], End]] = {
    "pipe": _pipe_out,
    "file": _file_out,
    "devnull": _devnull_out,
    "socket": _socket_out,
    "tty": _tty_out,
}
CASES = [
    ("file", "file"),
    ("file", "devnull"),
    ("pipe", "file"),
    ("file", "pipe"),
    ("socket", "socket"),
    ("tty", "tty"),
    ("pipe", "tty"),
    ("tty", "pipe"),
]


def _read_replies(fd: int, want: int) -> list[dict[str, Any]]:
    data = b""
    while data.count(b"\n") < want:
        ready, _, _ = select.select([fd], [], [], 15)
        assert ready, f"no reply within 15 s; got {data!r}"
        try:
            more = os.read(fd, 65536)
        except OSError:  # a terminal whose other side closed
            break
        if not more:
            break
        data += more
    return [json.loads(line) for line in data.splitlines() if line.strip()]


@pytest.fixture(params=["uvloop", "asyncio"])
def loop_flag(request: pytest.FixtureRequest) -> list[str]:
    return ["--loop", str(request.param)]


@pytest.fixture
def fds() -> Iterator[list[int]]:
    opened: list[int] = []
    yield opened
    for fd in opened:
        with contextlib.suppress(OSError):
            os.close(fd)


@pytest.mark.parametrize(("stdin", "stdout"), CASES, ids=[f"{i}-to-{o}" for i, o in CASES])
def test_every_kind_of_end_works(
    stdin: str, stdout: str, loop_flag: list[str], tmp_path: Path, fds: list[int]
) -> None:
    source = INS[stdin](INPUT, tmp_path)
    sink = OUTS[stdout](tmp_path)
    fds += [x for x in (source.fd, source.other, sink.fd, sink.other) if x is not None]
    proc = subprocess.Popen(
        server_command("--listen", "stdio", *loop_flag),
        stdin=source.fd,
        stdout=sink.fd,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    try:
        os.close(source.fd)
        os.close(sink.fd)
        replies = _read_replies(sink.other, 2) if sink.other is not None else []
        if stdin == "tty":
            assert source.other is not None
            os.close(source.other)  # hang up the terminal: the end of input
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr.decode()
    if sink.path is not None:
        replies = [json.loads(line) for line in sink.path.read_bytes().splitlines()]
    if stdout != "devnull":
        assert [r["id"] for r in replies] == [1, 2]
        assert replies[1]["result"] == {"status": "ready"}
