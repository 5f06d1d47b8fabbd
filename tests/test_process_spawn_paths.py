"""What a child starts with, through both ways of starting one: the vfork extension and the
portable ``subprocess.Popen`` fallback must give children the same world."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from exec_server.config import Runtime
from exec_server.process import spawn

from .support import Client
from .test_process_helpers import error_of, no_stray_children

__all__ = ["no_stray_children"]

MODES = [pytest.param(False, id="pipe"), pytest.param(True, id="pty")]


@pytest.fixture(
    params=[
        pytest.param(("native", True), id="native"),
        pytest.param(("popen", True), id="popen"),
        pytest.param(("native", False), id="native-no-pidfd"),
        pytest.param(("popen", False), id="popen-no-pidfd"),
    ]
)
def runtime(request: pytest.FixtureRequest) -> Runtime:
    """Both spawn paths, each with exits seen through a pidfd and without one (kernels
    before 5.3, or a failed ``pidfd_open``: a thread waits for the child instead)."""
    path, pidfd = request.param
    if path == "native" and not spawn.native_spawn_available():
        pytest.skip("the vfork extension is not built here")
    return Runtime(native_spawn=path == "native", pidfd=pidfd)


def _lines(data: bytes) -> list[str]:
    return data.decode().replace("\r\n", "\n").splitlines()


@pytest.fixture
def server_ignores_signals() -> Iterator[None]:
    """The server itself runs with some signals ignored (as under nohup, or as a background
    job of a non-interactive shell, which ignores SIGINT and SIGQUIT)."""
    ignored = (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in ignored}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@pytest.mark.parametrize("tty", MODES)
async def test_child_starts_with_default_signals(
    client: Client, tty: bool, server_ignores_signals: None
) -> None:
    events = await client.run("sigs", ["grep", "^Sig[BI]", "/proc/self/status"], tty=tty)
    status = {k: int(v, 16) for k, v in (line.split(":\t") for line in _lines(events.data()))}
    # Signals 32 and 33 belong to glibc (thread cancellation, setxid): neither libc nor Python
    # lets a process change them, so they stay as the server inherited them (CI may start us
    # with them ignored). Every signal a program can handle must be back at its default.
    glibc_reserved = (1 << 31) | (1 << 32)
    assert {k: v & ~glibc_reserved for k, v in status.items()} == {"SigBlk": 0, "SigIgn": 0}
    # And so "interrupt" interrupts.
    await client.start("int", ["sleep", "100"], tty=tty)
    await client.call("process/signal", {"processId": "int", "signal": "interrupt"})
    events = await client.wait_closed("int")
    assert events.exited is not None and events.exited["exitCode"] == 130


@pytest.mark.parametrize("tty", MODES)
async def test_child_has_only_its_three_standard_fds(client: Client, tty: bool) -> None:
    await client.start("other", ["sleep", "100"], pipeStdin=True)  # its pipes must not leak
    events = await client.run("fds", ["sh", "-c", "ls -1 /proc/$$/fd"], tty=tty, pipeStdin=True)
    assert _lines(events.data()) == ["0", "1", "2"]
    await client.call("process/terminate", {"processId": "other"})
    await client.wait_closed("other")


@pytest.mark.parametrize("tty", MODES)
async def test_child_world(client: Client, tmp_path: Path, tty: bool) -> None:
    script = 'echo "$0"; pwd; ps -o sid= -o pgid= -p $$; echo "$PATH|$ONLY"; tty || true'
    events = await client.run(
        "world",
        ["sh", "-c", script],
        tty=tty,
        arg0="name",
        cwd=str(tmp_path),
        env={"PATH": "/usr/bin:/bin", "ONLY": "this"},
    )
    argv, cwd, ids, env, terminal = _lines(events.data())
    pid = ids.split()[0]
    assert argv == "name"
    assert cwd == str(tmp_path)
    assert ids.split() == [pid, pid]  # a session and group leader
    assert env == "/usr/bin:/bin|this"
    assert terminal.startswith("/dev/pts/") if tty else terminal == "not a tty"


@pytest.mark.parametrize("tty", MODES)
async def test_lookup_and_errors(client: Client, tmp_path: Path, tty: bool) -> None:
    events = await client.run("nopath", ["true"], env={}, tty=tty)
    assert events.exited is not None and events.exited["exitCode"] == 0
    base = {"processId": "bad", "cwd": "/tmp", "env": {"PATH": "/usr/bin:/bin"}, "tty": tty}
    error = await error_of(client, "process/start", {**base, "argv": ["no-such-program-xyz"]})
    assert error["code"] == -32603 and "No such file or directory" in error["message"]
    missing = tmp_path / "missing"
    params = {**base, "argv": ["true"], "cwd": str(missing)}
    error = await error_of(client, "process/start", params)
    assert error["code"] == -32603 and str(missing) in error["message"]
    error = await error_of(client, "process/start", {**base, "argv": ["true"], "env": {"A=": ""}})
    assert error["code"] == -32602
    error = await error_of(client, "process/start", {**base, "argv": ["tr\0ue"]})
    assert error["code"] == -32602
    nul_bytes = [
        {"cwd": "/tmp\0/x"},
        {"cwd": "file:///tmp%00/nope"},  # a NUL once percent-decoded
        {"arg0": "a\0b"},
        {"env": {"PATH": "/usr/bin:/bin", "A": "x\0y"}},
        {"env": {"PATH": "/usr/bin:/bin", "A\0B": "x"}},
    ]
    for extra in nul_bytes:
        error = await error_of(client, "process/start", {**base, "argv": ["true"], **extra})
        assert error["code"] == -32602 and "NUL" in error["message"], extra
    await client.run("bad", ["true"], tty=tty)  # nothing left reserved
