"""The client library against real servers: ours (in-process and as a subprocess) and the
reference releases 0.128 and 0.169, over real sockets with real children.

Where the servers differ on purpose (signal deaths, which methods exist), the expectation
says so per server; everything else must hold for all of them.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path, PurePosixPath

import pytest

from exec_server.client import (
    Client,
    Closed,
    Exited,
    NotSupported,
    Output,
    ProcessError,
    ProcessTimeout,
    RemoteFileNotFound,
    RpcError,
    StdinClosed,
    connect,
)

from .client_support import SERVER_KINDS, server_process
from .support import running_server

# The exit code of a child killed by signal N: 128+N, except at the seed-era reference.
KILLED_BY_TERM = {"ref-0.128": -1}
KILLED_BY_KILL = {"ref-0.128": -1}


@pytest.fixture(scope="module", params=SERVER_KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def external_url(kind: str) -> Iterator[str | None]:
    """Servers that run as a child process are shared by the tests of this module."""
    if kind == "ours":
        yield None
        return
    with server_process(kind) as url:
        yield url


@pytest.fixture
async def client(kind: str, external_url: str | None) -> AsyncIterator[Client]:
    if external_url is not None:
        async with connect(external_url) as c:
            yield c
        return
    async with running_server() as (_, url), connect(url) as c:
        yield c


# ---- run ------------------------------------------------------------------------------------


async def test_run_returns_exit_code_stdout_and_stderr(client: Client) -> None:
    result = await client.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (result.returncode, result.stdout, result.stderr) == (3, b"out\n", b"err\n")
    assert result.argv == ["sh", "-c", "echo out; echo err >&2; exit 3"]


async def test_check_raises_process_error_carrying_the_output(client: Client) -> None:
    with pytest.raises(ProcessError) as failure:
        await client.run(["sh", "-c", "echo partial; echo why >&2; exit 4"], check=True)
    error = failure.value
    assert (error.returncode, error.stdout, error.stderr) == (4, b"partial\n", b"why\n")
    assert "exited with code 4" in str(error)
    assert (await client.run(["true"], check=True)).returncode == 0


async def test_input_reaches_stdin_followed_by_end_of_file(client: Client) -> None:
    data = os.urandom(300_000)
    result = await client.run(["cat"], input=data)
    assert result.stdout == data
    assert (await client.run(["wc", "-c"], input=b"")).stdout.strip() == b"0"


async def test_a_signal_death_is_reported(client: Client, kind: str) -> None:
    result = await client.run(["sh", "-c", "kill -TERM $$"])
    assert result.returncode == KILLED_BY_TERM.get(kind, 128 + 15)


async def test_run_in_a_pty(client: Client) -> None:
    result = await client.run(["sh", "-c", "tty; echo err >&2"], tty=True)
    assert result.stdout.startswith(b"/dev/pts/") and b"err\r\n" in result.stdout
    assert result.stderr == b""
    typed = await client.run(["sh", "-c", "read x; echo got $x"], tty=True, input=b"abc\n")
    assert typed.stdout.endswith(b"got abc\r\n") and typed.returncode == 0


async def test_cwd_and_environment(client: Client, tmp_path: Path) -> None:
    assert (await client.run(["pwd"], cwd=tmp_path)).stdout == f"{tmp_path}\n".encode()
    result = await client.run(["sh", "-c", 'echo "$GREETING $HOME"'], env={"GREETING": "hi"})
    assert result.stdout == f"hi {os.environ['HOME']}\n".encode()  # the rest is inherited
    exact = await client.run(["/usr/bin/env"], env={"ONLY": "this"}, inherit_env=False, cwd="/")
    assert exact.stdout == b"ONLY=this\n"


async def test_timeout_terminates_and_raises(client: Client) -> None:
    with pytest.raises(ProcessTimeout) as late:
        await client.run(["sh", "-c", "echo started; exec sleep 30"], timeout=0.2)
    assert "did not finish within 0.2 s" in str(late.value)


async def test_a_missing_program_is_an_rpc_error(client: Client) -> None:
    with pytest.raises(RpcError) as failure:
        await client.run(["/nonexistent/program"])
    assert failure.value.code == -32603 and "No such file" in failure.value.message
    assert "/nonexistent/program" in str(failure.value)


# ---- start ----------------------------------------------------------------------------------


async def test_events_come_once_each_in_seq_order(client: Client) -> None:
    process = await client.start(["sh", "-c", "echo a; echo b >&2; echo c; exit 5"])
    events = [event async for event in process.events()]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    outputs = [(e.stream, e.data) for e in events if isinstance(e, Output)]
    assert b"".join(d for s, d in outputs if s == "stdout") == b"a\nc\n"
    assert b"".join(d for s, d in outputs if s == "stderr") == b"b\n"
    assert [type(e) for e in events if not isinstance(e, Output)] == [Exited, Closed]
    assert await process.wait() == 5 and process.returncode == 5


async def test_concurrent_runs_each_get_their_own_output(client: Client) -> None:
    # The references often send a process's output and exit before the reply to its
    # process/start (here about half the time): none of it may be lost.
    results = await asyncio.gather(*(client.run(["echo", str(i)]) for i in range(60)))
    assert [r.stdout for r in results] == [f"{i}\n".encode() for i in range(60)]
    assert {r.returncode for r in results} == {0}


async def test_write_read_and_the_two_streams(client: Client) -> None:
    process = await client.start(
        ["sh", "-c", 'read x; echo "got $x"; echo oops >&2; read y; echo "$y"'], stdin=True
    )
    await process.write(b"hello\n")
    await process.write(b"second\n")
    assert await process.stdout.read() == b"got hello\nsecond\n"
    assert await process.stderr.read() == b"oops\n"
    assert await process.wait() == 0


async def test_read_returns_output_then_empty_at_close(client: Client) -> None:
    process = await client.start(["sh", "-c", "printf abc"])
    data = b""
    while chunk := await process.read():
        data += chunk
    assert data == b"abc" and await process.read() == b""


async def test_writing_without_stdin_is_stdin_closed(client: Client) -> None:
    process = await client.start(["sleep", "30"])
    with pytest.raises(StdinClosed, match="stdin=True"):
        await process.write(b"x")
    assert await process.terminate() is True


async def test_terminate_kills_the_process(client: Client, kind: str) -> None:
    process = await client.start(["sleep", "30"])
    assert await process.terminate() is True
    assert await process.wait() == KILLED_BY_KILL.get(kind, 128 + 9)


async def test_interrupt(client: Client, kind: str) -> None:
    in_pty = await client.start(["sleep", "30"], tty=True)
    await in_pty.signal("INT")  # 0.128 has no process/signal: Ctrl-C typed into the PTY
    # The references report any signal death in a PTY as 1.
    assert await in_pty.wait() == (1 if kind.startswith("ref-") else 128 + 2)
    piped = await client.start(["sleep", "30"])
    if kind == "ref-0.128":
        with pytest.raises(NotSupported, match="terminate"):
            await piped.signal("SIGINT")
        await piped.terminate()
    else:
        await piped.signal("SIGINT")
        assert await piped.wait() == 128 + 2


async def test_other_signals_need_the_signal_extension(client: Client) -> None:
    process = await client.start(["sleep", "30"])
    if client.supports("signal"):
        await process.signal("TERM")
        assert await process.wait() == 128 + 15
    else:
        with pytest.raises(NotSupported, match="SIGTERM"):
            await process.signal("TERM")
        await process.terminate()


async def test_window_size_at_start(client: Client) -> None:
    # With the resize extension it travels as `size`; without, `stty` sets it first.
    process = await client.start(["stty", "size"], tty=True, size=(33, 101))
    assert (await process.stdout.read()).strip() == b"33 101"


async def test_close_stdin(client: Client) -> None:
    process = await client.start(["cat"], stdin=True)
    await process.write(b"some")
    if client.supports("closeStdin"):
        await process.close_stdin()
        assert await process.stdout.read() == b"some"
    else:
        with pytest.raises(NotSupported, match="closeStdin"):
            await process.close_stdin()
        await process.terminate()
    sized = await client.start(["cat"], stdin_size=4)  # EOF after 4 bytes, on any server
    await sized.write(b"ab")
    await sized.write(b"cd")
    assert await sized.stdout.read() == b"abcd" and await sized.wait() == 0


async def test_resize(client: Client) -> None:
    process = await client.start(["sh", "-c", "read x; stty size"], tty=True)
    if not client.supports("resize"):
        with pytest.raises(NotSupported, match="resize"):
            await process.resize(40, 120)
        await process.terminate()
        return
    await process.resize(40, 120)
    await process.write(b"\n")
    assert (await process.stdout.read()).strip().endswith(b"40 120")


# ---- files ----------------------------------------------------------------------------------


async def test_files_round_trip(client: Client, tmp_path: Path) -> None:
    fs = client.fs
    await fs.mkdir(tmp_path / "a" / "b", parents=True)
    await fs.write_text(tmp_path / "a" / "b" / "note.txt", "héllo\n")
    assert await fs.read_text(str(tmp_path / "a/b/note.txt")) == "héllo\n"
    await fs.write_bytes(PurePosixPath(tmp_path, "bin"), b"\x00\xff")
    assert await fs.read_bytes(tmp_path / "bin") == b"\x00\xff"
    info = await fs.stat(tmp_path / "bin")
    assert info.is_file and not info.is_dir and info.size in (2, None)
    entries = await fs.iterdir(tmp_path)
    assert [(e.name, e.is_dir) for e in entries] == [("a", True), ("bin", False)]
    assert entries[0].path == PurePosixPath(tmp_path, "a")
    await fs.copy(tmp_path / "a", tmp_path / "copy", recursive=True)
    assert (tmp_path / "copy" / "b" / "note.txt").read_text() == "héllo\n"
    await fs.remove(tmp_path / "copy", recursive=True)
    assert not await fs.exists(tmp_path / "copy") and await fs.exists(tmp_path / "a")
    await fs.remove(tmp_path / "nothing", missing_ok=True)


async def test_missing_and_existing_paths_are_os_errors(client: Client, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as missing:
        await client.fs.read_bytes(tmp_path / "nope")
    assert isinstance(missing.value, RemoteFileNotFound) and missing.value.code == -32004
    assert str(tmp_path / "nope") in str(missing.value)
    with pytest.raises(FileNotFoundError):
        await client.fs.remove(tmp_path / "nope")
    with pytest.raises(FileExistsError):
        await client.fs.mkdir(tmp_path)
    await client.fs.mkdir(tmp_path, exist_ok=True)


async def test_streaming_a_large_file(client: Client, tmp_path: Path) -> None:
    data = os.urandom(700_000)  # three blocks and a bit
    async with client.fs.open(tmp_path / "big", "wb") as remote:
        for start in range(0, len(data), 100_000):
            await remote.write(data[start : start + 100_000])
    assert (tmp_path / "big").read_bytes() == data
    async with client.fs.open(tmp_path / "big") as remote:
        head = await remote.read(10)
        rest = b"".join([block async for block in remote])
        assert await remote.read() == b""
        remote.seek(500_000)
        assert await remote.read(3) == data[500_000:500_003] and remote.tell() == 500_003
    assert head + rest == data


async def test_relative_paths_start_at_the_servers_directory(client: Client) -> None:
    if client.environment_info is None:  # 0.128 does not say where it runs
        with pytest.raises(ValueError, match="absolute"):
            await client.fs.stat("pyproject.toml")
        return
    here = Path(str(client._server_cwd))
    assert await client.fs.exists("pyproject.toml") == (here / "pyproject.toml").exists()
    assert (await client.run(["pwd"])).stdout.strip() == str(here).encode()
