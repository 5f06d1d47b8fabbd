"""Both ways of starting a child (the vfork extension and the Popen fallback) behave alike.

These drive ``exec_server.process.spawn`` directly with real children and real PTYs.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from exec_server.process import spawn as spawn_module
from exec_server.process.spawn import Child, SpawnRequest, exit_code_from_status, spawn

from .support import PATH_ENV, pid_alive

native_available = spawn_module.native_spawn_available()

Start = Callable[[SpawnRequest], Child]


@pytest.fixture(params=["native", "popen"])
def start(request: pytest.FixtureRequest) -> Start:
    """``spawn`` through one of the two paths."""
    native = request.param == "native"
    if native and not native_available:
        pytest.skip("the C extension is not built here")
    return functools.partial(spawn, native=native)


def _collect(child: Child) -> tuple[bytes, int]:
    """Read the child's stdout to EOF (PTY: EIO) and reap it; returns (output, exit code)."""
    os.set_blocking(child.stdout, True)
    out = bytearray()
    while True:
        try:
            data = os.read(child.stdout, 65536)
        except OSError:
            break
        if not data:
            break
        out += data
    _, status = os.waitpid(child.pid, 0)
    for fd in {child.stdout, child.stderr, child.stdin} - {None}:
        assert fd is not None
        os.close(fd)
    return bytes(out), exit_code_from_status(status)


def test_pipe_child_output_arg0_and_cwd(start: Start, tmp_path: object) -> None:
    child = start(
        SpawnRequest(
            ["sh", "-c", 'echo "$0 $(pwd)"'], "/tmp", PATH_ENV, False, False, arg0="renamed"
        )
    )
    out, code = _collect(child)
    assert (out, code) == (b"renamed /tmp\n", 0)


def test_pty_child_has_controlling_terminal_and_own_session(start: Start) -> None:
    child = start(
        SpawnRequest(
            ["sh", "-c", "tty; stty size; ps -o sid= -p $$; echo $$"], "/", PATH_ENV, True, False
        )
    )
    out, code = _collect(child)
    lines = out.decode().split("\r\n")
    assert code == 0
    assert lines[0].startswith("/dev/pts/")
    assert lines[1] == "24 80"
    assert lines[2].strip() == lines[3].strip()  # session leader: sid == pid


def test_pipe_child_is_session_leader_with_default_sigpipe(start: Start) -> None:
    # Python ignores SIGPIPE; a child must get the default back, so `yes | head` ends.
    child = start(
        SpawnRequest(
            ["sh", "-c", "yes | head -c 5 >/dev/null; ps -o sid=,pgid= -p $$"],
            "/",
            PATH_ENV,
            False,
            False,
        )
    )
    out, code = _collect(child)
    sid, pgid = out.split()
    assert code == 0 and sid == pgid == str(child.pid).encode()


def test_missing_program_names_it(start: Start) -> None:
    with pytest.raises(FileNotFoundError) as info:
        start(SpawnRequest(["no-such-program-xyz"], "/tmp", PATH_ENV, False, False))
    assert info.value.filename == "no-such-program-xyz"


def test_missing_cwd_names_the_directory(start: Start) -> None:
    with pytest.raises(FileNotFoundError) as info:
        start(SpawnRequest(["true"], "/no/such/dir", PATH_ENV, True, False))
    assert info.value.filename == "/no/such/dir"


def test_not_executable_is_permission_denied(start: Start) -> None:
    with pytest.raises(PermissionError):
        start(SpawnRequest(["/etc/passwd"], "/tmp", PATH_ENV, False, False))


def test_no_path_uses_default_search_path(start: Start) -> None:
    out, code = _collect(start(SpawnRequest(["sh", "-c", "echo ok"], "/", {}, False, False)))
    assert (out, code) == (b"ok\n", 0)


def test_env_is_exact(start: Start) -> None:
    child = start(SpawnRequest(["/usr/bin/env"], "/", {"ONLY": "this"}, False, False))
    assert _collect(child) == (b"ONLY=this\n", 0)


def test_illegal_env_name_is_value_error(start: Start) -> None:
    with pytest.raises(ValueError):
        start(SpawnRequest(["true"], "/", {"A=B": "x"}, False, False))


def test_no_fd_leaks_into_child(start: Start) -> None:
    leaked = os.open("/dev/null", os.O_RDONLY)
    os.set_inheritable(leaked, True)  # even an inheritable fd must not reach the child
    try:
        child = start(SpawnRequest(["sh", "-c", "ls /proc/self/fd"], "/", PATH_ENV, False, False))
        out, _ = _collect(child)
    finally:
        os.close(leaked)
    fds = {int(x) for x in out.split()}
    assert fds <= {0, 1, 2, 3}  # 3: the fd ls uses to read /proc/self/fd


@pytest.mark.parametrize("native", [True, False], ids=["native", "popen"])
def test_sigkilled_server_leaves_no_child(native: bool) -> None:
    """The parent-death signal: SIGKILL the server, its direct children die with it."""
    if native and not native_available:
        pytest.skip("the C extension is not built here")
    env = dict(os.environ)
    code = (
        "import asyncio, sys\n"
        "from exec_server.process.spawn import spawn, SpawnRequest\n"
        f"c = spawn(SpawnRequest(['sleep', '100'], '/', {{'PATH': '/usr/bin:/bin'}}, False, False), native={native})\n"
        "print(c.pid, flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
    )
    try:
        assert proc.stdout is not None
        child_pid = int(proc.stdout.readline())
        assert pid_alive(child_pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while pid_alive(child_pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not pid_alive(child_pid)
    finally:
        proc.kill()
        proc.wait()


def test_script_without_shebang_runs_through_sh(start: Start, tmp_path: Path) -> None:
    """As execvp does: an executable with no ``#!`` line is handed to /bin/sh."""
    script = tmp_path / "plain-script"
    script.write_text('echo "ran with $# args: $*"\n')
    script.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin"}
    out, code = _collect(start(SpawnRequest(["plain-script", "a", "b c"], "/", env, False, False)))
    assert (out, code) == (b"ran with 2 args: a b c\n", 0)


def test_a_nul_byte_is_refused_before_anything_starts(start: Start) -> None:
    for request in (
        SpawnRequest(["true"], "/tmp\0/x", PATH_ENV, False, False),
        SpawnRequest(["true", "a\0b"], "/tmp", PATH_ENV, False, False),
        SpawnRequest(["true"], "/tmp", {**PATH_ENV, "A": "x\0y"}, False, False),
        SpawnRequest(["true"], "/tmp", PATH_ENV, False, False, arg0="a\0b"),
    ):
        with pytest.raises(ValueError, match="NUL"):
            start(request)


def test_the_extension_itself_refuses_a_nul_in_cwd() -> None:
    """The C helper checks too: it must never hand chdir a path cut at the NUL."""
    if not native_available:
        pytest.skip("the C extension is not built here")
    from exec_server.process import _spawn

    with pytest.raises(ValueError, match="cwd"):
        _spawn.spawn([b"/bin/true"], [b"true"], [], b"/tmp\0/x", -1, -1, -1, False, 0, False)


def test_the_extension_keeps_what_it_points_into(start: Start) -> None:
    """Arguments given as one-shot iterables: the helper must keep the list it makes of
    them alive until the child has exec'd (the bytes must arrive intact)."""
    if not native_available:
        pytest.skip("the C extension is not built here")
    from exec_server.process import _spawn

    read_end, write_end = os.pipe()
    try:
        argv = (arg.encode() for arg in ["sh", "-c", "printf %s " + "x" * 4000])
        env = iter([b"PATH=/usr/bin:/bin"])
        pid = _spawn.spawn([b"/bin/sh"], argv, env, b"/", -1, write_end, -1, False, 0, False)
        os.close(write_end)
        write_end = -1
        output = b""
        while chunk := os.read(read_end, 65536):
            output += chunk
        _, status = os.waitpid(pid, 0)
        assert exit_code_from_status(status) == 0
        assert output == b"x" * 4000
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
