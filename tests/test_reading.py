"""``gather`` on real pipes and real PTYs, and the reader end to end."""

from __future__ import annotations

import errno
import os
import pty
import select
import termios
import tty
from collections.abc import Iterator

import pytest

from exec_server.process.reading import gather

from .support import Client, os_pipe


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    with os_pipe(nonblocking="r") as fds:
        yield fds


def test_nothing_there_yet_is_none(pipe: tuple[int, int]) -> None:
    r, _ = pipe
    assert gather(r, 65536) is None


def test_takes_everything_there_up_to_the_limit(pipe: tuple[int, int]) -> None:
    r, w = pipe
    payload = bytes(range(256)) * 40  # 10,240 bytes
    os.write(w, payload)
    assert gather(r, 4000) == payload[:4000]
    assert gather(r, 65536) == payload[4000:]
    assert gather(r, 65536) is None


def test_end_of_file_is_empty_bytes(pipe: tuple[int, int]) -> None:
    r, w = pipe
    os.write(w, b"last words")
    os.close(w)
    assert gather(r, 65536) == b"last words"
    assert gather(r, 65536) == b""


def test_other_errors_raise(pipe: tuple[int, int]) -> None:
    r, _ = pipe
    os.close(r)
    with pytest.raises(OSError) as info:
        gather(r, 65536)
    assert info.value.errno == errno.EBADF


def test_a_pty_byte_exact_then_end_of_file() -> None:
    """A PTY master hands out ~4 KiB per read; gathers take it all, byte-exact, and report
    the closed slave (EIO) as end of file."""
    master, slave = pty.openpty()
    try:
        os.set_blocking(master, False)
        os.set_blocking(slave, False)
        tty.setraw(slave, termios.TCSANOW)  # no translation: the bytes come back as written
        payload = bytes(i % 251 for i in range(20000))
        received = bytearray()
        written = 0
        while len(received) < len(payload):
            want_write = [slave] if written < len(payload) else []
            readable, writable, _ = select.select([master], want_write, [], 5.0)
            assert readable or writable, "the PTY made no progress for 5 s"
            if writable:
                written += os.write(slave, payload[written:])
            data = gather(master, 65536)
            if data is not None:
                assert data, "end of file before the payload was read"
                received += data
        assert bytes(received) == payload
        os.close(slave)
        slave = -1
        assert gather(master, 65536) == b""
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)


# ---- through the process manager, end to end ---------------------------------------------------


@pytest.mark.parametrize("use_pty", [False, True], ids=["pipe", "pty"])
async def test_a_megabyte_arrives_byte_exact(client: Client, use_pty: bool) -> None:
    # No newline, so a PTY's output processing leaves the bytes as they are.
    script = "yes 0123456789abcdef | tr -d '\\n' | head -c 1048576"
    events = await client.run("big", ["sh", "-c", script], tty=use_pty)
    assert events.data() == b"0123456789abcdef" * 65536
    assert events.exited is not None and events.exited["exitCode"] == 0


@pytest.mark.parametrize("use_pty", [False, True], ids=["pipe", "pty"])
async def test_output_written_just_before_exit_comes_before_it(
    client: Client, use_pty: bool
) -> None:
    events = await client.run(
        "last", ["sh", "-c", "head -c 200000 /dev/zero | tr '\\0' y"], tty=use_pty
    )
    assert events.data() == b"y" * 200000
    kinds = [method for method, _ in events.order]
    assert kinds[-2:] == ["process/exited", "process/closed"]
    assert "process/output" not in kinds[kinds.index("process/exited") :]
