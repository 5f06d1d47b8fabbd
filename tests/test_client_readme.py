"""The README and docs/client.md are a contract.

Each Python example, run against a live server, prints exactly the text block that follows
it. Each console block of the README runs as written in one new shell, as a person would
type it after `make run` and `make install`: the server is started as `make run` starts it
(no --listen; it writes its URL file, which the commands find with no URL given), working
in a folder standing for the clone, which the examples must leave empty; the output of the
block's `$ ` lines (stdout and stderr) is what the block shows under them."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .client_support import server_process
from .support import REPO

README = Path(REPO, "README.md").read_text()
CLIENT_DOC = Path(REPO, "docs", "client.md").read_text()
EXAMPLE = r"```python\n(.*?)```\n```text\n(.*?)```"
PYTHON = re.findall(EXAMPLE, README, re.DOTALL) + re.findall(EXAMPLE, CLIENT_DOC, re.DOTALL)
CONSOLE = re.findall(r"```console\n(.*?)```", README, re.DOTALL)
BIN = os.path.dirname(sys.executable)  # where `exec-server` is installed (`make install`)


def commands(block: str) -> list[tuple[str, str]]:
    """``$ `` lines and the output under each."""
    found: list[tuple[str, str]] = []
    for line in block.splitlines(keepends=True):
        if line.startswith("$ "):
            found.append((line[2:].strip(), ""))
        else:
            command, output = found[-1]
            found[-1] = (command, output + line)
    return found


def test_the_docs_have_examples() -> None:
    assert len(PYTHON) >= 7 and len(CONSOLE) >= 2


@pytest.mark.parametrize("code, expected", PYTHON, ids=[f"python-{i}" for i in range(len(PYTHON))])
def test_python_example(code: str, expected: str, tmp_path: Path) -> None:
    with server_process("ours-subprocess", cwd=tmp_path) as url:
        env = {**os.environ, "EXEC_SERVER_URL": url, "PATH": f"{BIN}:{os.environ['PATH']}"}
        env.pop("EXEC_SERVER_TOKEN", None)
        done = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=60,
        )
    assert done.stderr == ""
    assert done.stdout == expected


@contextlib.contextmanager
def as_make_run(clone: Path, env: dict[str, str]) -> Iterator[None]:
    """A server started as `make run` starts it, working in ``clone``; until it has written
    its URL file."""
    server = subprocess.Popen(
        [os.path.join(BIN, "exec-server")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=clone,
        env=env,
        start_new_session=True,
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline().startswith(b"ws://127.0.0.1:")
        yield
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


@pytest.mark.parametrize("block", CONSOLE, ids=[f"console-{i}" for i in range(len(CONSOLE))])
def test_console_example(block: str, tmp_path: Path) -> None:
    clone, home, runtime = tmp_path / "clone", tmp_path / "home", tmp_path / "run"
    for folder in (clone, home, runtime):
        folder.mkdir(mode=0o700)
    env = {
        "PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "XDG_RUNTIME_DIR": str(runtime),
        "TMPDIR": str(tmp_path),
        "LANG": "C.UTF-8",
    }
    steps = commands(block)
    with as_make_run(clone, env):
        done = subprocess.run(
            ["sh", "-c", "\n".join(command for command, _ in steps)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=home,
            timeout=120,
        )
    assert done.stdout == "".join(output for _, output in steps)
    assert list(clone.iterdir()) == []  # nothing written into the clone
