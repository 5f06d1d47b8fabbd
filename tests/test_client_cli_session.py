"""``exec-server shell`` and ``run`` when the connection drops, as a person meets it: a real
server killed mid-session (or a real TCP proxy cutting the connection), the CLI in a real
pseudo-terminal that we type into, or behind real pipes."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from exec_server.client.terminal import EscapeScanner

from .client_support import CLI, WAIT, CuttableProxy, cli, server_argv, spawn_in_terminal
from .support import REPO


class KillableServer:
    """Our server as a child process (its own process group) that a test kills."""

    def __init__(self) -> None:
        self.child = subprocess.Popen(
            server_argv("ours-subprocess"),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        assert self.child.stdout is not None
        self.url = self.child.stdout.readline().decode().strip()

    def kill(self) -> None:
        if self.child.poll() is None:
            os.killpg(self.child.pid, signal.SIGKILL)
        self.child.wait()


@pytest.fixture
def server() -> Iterator[KillableServer]:
    found = KillableServer()
    try:
        yield found
    finally:
        found.kill()


def watched_shell(url: str, tmp_path: Path, *extra: str) -> pexpect.spawn:
    """``exec-server shell`` running ``sh`` in a terminal, inside a shell that records the
    terminal's modes before and after, and then keeps whatever input is left for the
    local shell (it must be nothing) in ``leftover``."""
    command = shlex.join([*CLI, "shell", "--url", url, *extra, "--env", "PS1=$ ", "--", "sh"])
    line = (
        f"cd {shlex.quote(str(tmp_path))} && stty -g > modes.before; {command}; code=$?; "
        "stty -g > modes.after; timeout 1 cat > leftover; exit $code"
    )
    return spawn_in_terminal(line)


def finish(child: pexpect.spawn) -> str:
    """Wait for the end; everything printed since the last expect."""
    child.expect(pexpect.EOF)
    child.close()
    return child.before.decode(errors="replace")


def final_messages(output: str, command: str) -> int:
    """How many complaints were printed (the retry notice, in brackets, is not one)."""
    return len(re.findall(rf"(?<!\[)exec-server {command}: ", output))


def assert_terminal_clean(tmp_path: Path) -> None:
    assert (tmp_path / "modes.after").read_text() == (tmp_path / "modes.before").read_text()
    assert (tmp_path / "leftover").read_bytes() == b""  # nothing typed reached the local shell


# ---- the server dies --------------------------------------------------------------------------


def test_a_dead_server_is_said_at_once_and_ctrl_c_leaves(
    server: KillableServer, tmp_path: Path
) -> None:
    child = watched_shell(server.url, tmp_path, "--reconnect-timeout", "60")
    child.expect_exact("$ ")
    server.kill()
    child.expect_exact("connection lost")  # at once, not after the 60 s
    child.expect(r"reconnecting, (\d+) s left; ~\. or Ctrl-C leaves")
    assert 50 <= int(child.match.group(1)) <= 60
    child.send("touch leaked\r")  # typed meanwhile: kept for the remote shell, never local
    child.expect(r"reconnecting, \d+ s left")  # the countdown goes on
    child.sendcontrol("c")
    rest = finish(child)
    assert child.exitstatus == 255
    assert rest.count("exec-server shell: gave up reconnecting (Ctrl-C)") == 1
    assert final_messages(rest, "shell") == 1
    assert not (tmp_path / "leaked").exists()
    assert_terminal_clean(tmp_path)


def test_tilde_dot_leaves_while_reconnecting(server: KillableServer, tmp_path: Path) -> None:
    child = watched_shell(server.url, tmp_path, "--reconnect-timeout", "60")
    child.expect_exact("$ ")
    server.kill()
    child.expect_exact("connection lost")
    child.send("\r~.")
    rest = finish(child)
    assert child.exitstatus == 255
    assert rest.count("exec-server shell: connection closed (~.)") == 1
    assert_terminal_clean(tmp_path)


def test_giving_up_prints_one_final_message(server: KillableServer, tmp_path: Path) -> None:
    child = watched_shell(server.url, tmp_path, "--reconnect-timeout", "1")
    child.expect_exact("$ ")
    server.kill()
    child.expect_exact("connection lost")
    rest = finish(child)
    assert child.exitstatus == 255
    assert rest.count("could not be re-established within 1 s") == 1
    assert final_messages(rest, "shell") == 1
    assert_terminal_clean(tmp_path)


def test_tilde_dot_leaves_a_live_session(server: KillableServer, tmp_path: Path) -> None:
    child = watched_shell(server.url, tmp_path)
    child.expect_exact("$ ")
    child.send("echo ~~home ~.\r")  # mid-line, a ~ is typed as is
    child.expect_exact("~~home ~.")
    child.expect_exact("$ ")
    child.send("~~x\r")  # at a line start, ~~ sends one ~
    child.expect_exact("~x: not found")
    child.expect_exact("$ ")
    child.send("~?")
    child.expect_exact("[escapes, after Enter: ~. leave; ~? this help; ~~ type one ~]")
    child.send("~.")
    rest = finish(child)
    assert child.exitstatus == 255
    assert "connection closed (~.)" in rest
    assert_terminal_clean(tmp_path)


def test_ctrl_c_while_reconnecting_ends_run_without_a_terminal(server: KillableServer) -> None:
    argv = [*CLI[1:], "run", "--url", server.url, "--", "sh", "-c", "echo ready; exec sleep 60"]
    child = pexpect.spawn(CLI[0], argv, cwd=REPO, timeout=WAIT)
    child.expect_exact("ready")
    server.kill()
    child.expect_exact("connection lost")
    child.sendintr()
    rest = finish(child)
    assert child.exitstatus == 255
    assert rest.count("exec-server run: gave up reconnecting (Ctrl-C)") == 1


def test_escape_scanner() -> None:
    helped: list[bool] = []
    scanner = EscapeScanner(lambda: helped.append(True))
    assert scanner.feed(b"~") == (b"", False)  # held: it may start ~.
    assert scanner.feed(b"~a~.b\r~") == (b"~a~.b\r", False)
    assert scanner.feed(b"x\n~?~") == (b"~x\n", False)
    assert helped == [True]
    assert scanner.feed(b".ignored") == (b"", True)


# ---- a connection that drops and comes back -----------------------------------------------------


async def test_a_resumed_connection_is_transparent(tmp_path: Path) -> None:
    """Output that crosses a cut arrives whole and once; the notice comes and goes."""
    server = KillableServer()
    try:
        async with CuttableProxy(server.url) as proxy:
            script = "for i in $(seq 1 40); do echo line$i; sleep 0.05; done; exit 5"
            child = await asyncio.create_subprocess_exec(
                *CLI, "run", "--url", proxy.url, "--", "sh", "-c", script,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=REPO,
            )  # fmt: skip
            assert child.stdout is not None
            assert await child.stdout.readline() == b"line1\n"
            proxy.cut()
            out, err = await child.communicate()
    finally:
        server.kill()
    assert child.returncode == 5
    lines = (b"line1\n" + out).decode().split()
    assert lines == [f"line{i}" for i in range(1, 41)]
    assert "connection lost" in err.decode() and "reconnected" in err.decode()


def test_typed_input_during_a_reconnect_reaches_the_remote_shell(tmp_path: Path) -> None:
    """Keys typed while the connection is down are sent once it is back, in order."""
    server = KillableServer()
    proxy_ready = tmp_path / "proxy.url"
    proxy = subprocess.Popen(
        [sys.executable, "-c", _PROXY_SCRIPT, server.url, str(proxy_ready)],
        stdin=subprocess.PIPE,
        cwd=REPO,
    )
    try:
        while not proxy_ready.exists():
            time.sleep(0.05)
        child = watched_shell(proxy_ready.read_text().strip(), tmp_path)
        child.expect_exact("$ ")
        assert proxy.stdin is not None
        proxy.stdin.write(b"refuse\n")  # cut, and refuse new connections for a while
        proxy.stdin.flush()
        child.expect_exact("connection lost")
        child.send("echo typed-while-down\r")
        proxy.stdin.write(b"accept\n")
        proxy.stdin.flush()
        child.expect_exact("typed-while-down\r\n")  # the output of the echo, after resuming
        child.expect_exact("$ ")
        child.send("exit 4\r")
        finish(child)
        assert child.exitstatus == 4
        assert_terminal_clean(tmp_path)
    finally:
        proxy.kill()
        proxy.wait()
        server.kill()


_PROXY_SCRIPT = """
import asyncio, sys
from tests.client_support import CuttableProxy

async def main():
    async with CuttableProxy(sys.argv[1]) as proxy:
        with open(sys.argv[2] + ".tmp", "w") as f:
            f.write(proxy.url + "\\n")
        import os
        os.replace(sys.argv[2] + ".tmp", sys.argv[2])
        loop = asyncio.get_running_loop()
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            if line.strip() == "refuse":
                proxy.refusing = True
                proxy.cut()
            else:
                proxy.refusing = False

asyncio.run(main())
"""


# ---- shell and run without a terminal ------------------------------------------------------------


def test_shell_without_a_terminal_runs_the_script_from_stdin(server: KillableServer) -> None:
    done = cli("shell", "--", "sh", url=server.url, stdin=b"tty || echo no-tty; exit 6\n")
    assert done.returncode == 6
    assert done.stdout.endswith(b"no-tty\n")
    forced = cli("shell", "-t", "--", "sh", "-c", "tty", url=server.url, stdin=b"")
    assert forced.stdout.startswith(b"/dev/pts/")


def test_run_stdin_follows_docker_from_a_terminal(server: KillableServer) -> None:
    """From a terminal, stdin goes only with -i; -t alone gives a terminal, not input."""
    quoted = shlex.join([*CLI, "run", "--url", server.url])
    child = spawn_in_terminal(f"{quoted} -- sh -c 'read x; echo got:$x:'; echo code:$?")
    child.send("typed\r")
    child.expect(r"code:(\d+)")  # it got end of file at once, not what we typed
    assert b"got:typed:" not in child.before
    finish(child)
    child = spawn_in_terminal(f"{quoted} -i -- sh -c 'read x; echo got:$x:'")
    child.send("typed\r")
    child.expect_exact("got:typed:")
    finish(child)
    child = spawn_in_terminal(f"{quoted} -it -- sh -c 'stty size; read x; echo got:$x:'")
    child.expect_exact("30 100")  # a terminal of our size
    child.send("abc\r")
    child.expect_exact("got:abc:")
    finish(child)
    assert child.exitstatus == 0


def test_a_slow_copy_shows_progress_on_a_terminal_only(
    server: KillableServer, tmp_path: Path
) -> None:
    """The second block comes more than a second after the copy began: a terminal gets a progress line
    (erased at the end); a pipe gets nothing."""
    target = tmp_path / "copied"
    feed = "(echo first; sleep 2.5; echo second)"
    put = shlex.join([*CLI, "put", "--url", server.url, "-", str(target)])
    child = spawn_in_terminal(f"{feed} | {put}; echo code:$?")
    child.expect(r"\r\x1b\[K\S*copied  \d+ B  [\d.]+ B/s")
    child.expect_exact("\r\x1b[K")  # erased once done
    child.expect_exact("code:0")
    finish(child)
    assert target.read_bytes() == b"first\nsecond\n"
    piped = subprocess.run(
        ["sh", "-c", f"{feed} | {put}"], capture_output=True, cwd=REPO, timeout=60
    )
    assert (piped.returncode, piped.stderr) == (0, b"")
