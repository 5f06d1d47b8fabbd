"""``exec-server run|shell|ls|cat|put|get`` as a person uses them: real processes, and for
the interactive parts a real pseudo-terminal (pexpect) that we type into and read from."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from exec_server.client import sync as blocking

from .client_support import CLI, WAIT, cli, server_process, shell_line, spawn_in_terminal
from .support import REPO


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with server_process("ours-subprocess") as found:
        yield found


# ---- run ------------------------------------------------------------------------------------


def test_run_streams_both_streams_and_exits_with_the_remote_code(url: str) -> None:
    done = cli("run", "--", "sh", "-c", "echo out; echo err >&2; exit 7", url=url)
    assert (done.returncode, done.stdout, done.stderr) == (7, b"out\n", b"err\n")


def test_run_forwards_stdin_to_its_end(url: str, tmp_path: Path) -> None:
    data = os.urandom(200_000)
    assert cli("run", "--", "cat", url=url, stdin=data).stdout == data  # from a pipe
    (tmp_path / "in").write_bytes(data)
    with open(tmp_path / "in", "rb") as file:  # from a regular file
        counted = cli("run", "--", "wc", "-c", url=url, stdin_file=file)
    assert counted.stdout.strip() == b"200000"
    assert cli("run", "--", "cat", url=url, stdin=b"").stdout == b""


def test_run_options(url: str, tmp_path: Path) -> None:
    done = cli(
        "run",
        "--cwd",
        str(tmp_path),
        "-e",
        "A=1",
        "--env",
        "B=x=y",
        "--",
        "sh",
        "-c",
        'echo "$A $B $(pwd)"',
        url=url,
    )
    assert done.stdout == f"1 x=y {tmp_path}\n".encode()
    tty = cli("run", "--tty", "--", "sh", "-c", "tty; stty size", url=url)
    assert tty.stdout.startswith(b"/dev/pts/") and tty.returncode == 0


def test_ctrl_c_interrupts_the_remote_command(url: str) -> None:
    argv = [*CLI[1:], "run", "--url", url, "--", "sh", "-c", "echo ready; exec sleep 30"]
    child = pexpect.spawn(CLI[0], argv, cwd=REPO, timeout=WAIT)
    child.expect_exact("ready")
    child.sendintr()  # Ctrl-C at our terminal: SIGINT to the CLI, which interrupts remotely
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 128 + 2


def test_failures_are_one_line_and_non_zero(url: str, tmp_path: Path) -> None:
    free = cli("run", "--url", "ws://127.0.0.1:9", "--", "true", url=None)
    assert free.returncode == 255
    assert free.stderr.decode() == (
        "exec-server run: cannot connect to ws://127.0.0.1:9: connection refused (is the server running?)\n"
    )
    missing = cli("run", "--", "/nonexistent/program", url=url)
    assert missing.returncode == 127
    assert missing.stderr.decode() == (
        "exec-server run: /nonexistent/program: command not found on the server\n"
    )
    nothing = cli("cat", "/nonexistent/file", url=url)
    assert nothing.returncode == 1 and b"/nonexistent/file: No such file" in nothing.stderr
    nowhere = {"XDG_RUNTIME_DIR": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    no_url = cli("ls", url=None, extra_env=nowhere)
    assert no_url.returncode == 2 and b"EXEC_SERVER_URL" in no_url.stderr
    for done in (free, missing, nothing, no_url):
        assert b"Traceback" not in done.stderr


async def test_authentication_failure_is_said_plainly() -> None:
    def refuse(connection: ServerConnection, request: Request) -> Response:
        return connection.respond(401, "no\n")

    async def never(connection: ServerConnection) -> None:  # pragma: no cover
        await connection.close()

    async with serve(never, "127.0.0.1", 0, process_request=refuse) as server:
        port = server.sockets[0].getsockname()[1]
        child = await asyncio.create_subprocess_exec(
            *CLI,
            "ls",
            "--url",
            f"ws://127.0.0.1:{port}",
            "--token",
            "wrong",
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
        )
        _, err = await child.communicate()
    assert child.returncode == 255
    assert err.decode() == (
        f"exec-server ls: ws://127.0.0.1:{port} refused the connection: the token was not accepted (HTTP 401)\n"
    )


def test_serve_stays_the_default_and_has_a_name() -> None:
    for args in (["--listen", "ws://127.0.0.1:0"], ["serve", "--listen", "ws://127.0.0.1:0"]):
        server = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, cwd=REPO)
        try:
            assert server.stdout is not None
            assert server.stdout.readline().startswith(b"ws://127.0.0.1:")
        finally:
            server.terminate()
            server.wait()


# ---- files ----------------------------------------------------------------------------------


def test_ls_cat_put_get(url: str, tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("alpha\n")
    listed = cli("ls", str(tmp_path), url=url)
    assert listed.stdout == b"a.txt\nsub/\n"
    assert (
        cli("cat", str(tmp_path / "a.txt"), str(tmp_path / "a.txt"), url=url).stdout
        == b"alpha\nalpha\n"
    )
    data = os.urandom(300_000)
    assert cli("put", "-", str(tmp_path / "up.bin"), url=url, stdin=data).returncode == 0
    assert (tmp_path / "up.bin").read_bytes() == data
    assert cli("put", str(tmp_path / "a.txt"), str(tmp_path / "sub"), url=url).returncode == 0
    assert (tmp_path / "sub" / "a.txt").read_text() == "alpha\n"
    assert cli("get", str(tmp_path / "up.bin"), "-", url=url).stdout == data
    local = tmp_path / "local"
    local.mkdir()
    assert cli("get", str(tmp_path / "up.bin"), str(local), url=url).returncode == 0
    assert (local / "up.bin").read_bytes() == data


# ---- shell ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ours-subprocess", "ref-0.169", "ref-0.128"])
def test_shell_is_an_interactive_terminal(kind: str, tmp_path: Path) -> None:
    with server_process(kind) as server_url:
        line = shell_line(server_url, "--env", "PS1=$ ", "--", "sh")
        child = spawn_in_terminal(f"cd {tmp_path} && {line}", rows=33, cols=101)
        child.expect_exact("$ ")
        child.send("stty size; echo $TERM\r")
        child.expect_exact("33 101")  # the window size went along
        child.expect_exact("xterm-test")  # and so did TERM
        child.send("sh -c 'echo sleep\"\"ing; exec sleep 30'\r")
        child.expect_exact("sleeping")  # not the typed line's echo: it is running
        child.sendcontrol("c")  # a keystroke: the remote terminal interrupts it
        child.send("echo status:$?\r")
        child.expect(r"status:(\d+)")
        assert child.match.group(1) == b"130"
        child.send("exit 3\r")
        child.expect(pexpect.EOF)
        child.close()
    assert child.exitstatus == 3
    assert (tmp_path / "modes.after").read_text() == (tmp_path / "modes.before").read_text()


def test_shell_follows_window_changes_when_the_server_can_resize(url: str, tmp_path: Path) -> None:
    with blocking.connect(url) as client:
        if not client.supports("resize"):
            pytest.skip("the server does not announce the resize extension yet")
    child = spawn_in_terminal(f"cd {tmp_path} && {shell_line(url, '--env', 'PS1=$ ', '--', 'sh')}")
    child.expect_exact("$ ")
    child.setwinsize(41, 91)  # SIGWINCH to the CLI, which resizes the remote PTY
    child.send("stty size\r")
    child.expect_exact("41 91")
    child.send("exit\r")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert (tmp_path / "modes.after").read_text() == (tmp_path / "modes.before").read_text()


def test_terminal_is_restored_when_the_connection_is_lost(tmp_path: Path) -> None:
    with server_process("ours-subprocess") as server_url:
        line = shell_line(server_url, "--reconnect-timeout", "1", "--env", "PS1=$ ", "--", "sh")
        child = spawn_in_terminal(f"cd {tmp_path} && {line}")
        child.expect_exact("$ ")
    # The server is gone, and its children with it: the CLI gives up after a second.
    child.expect_exact("exec-server shell: the connection to")
    child.expect_exact("could not be re-established")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 255
    assert (tmp_path / "modes.after").read_text() == (tmp_path / "modes.before").read_text()
