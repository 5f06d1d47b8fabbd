"""The README's Client section is a contract: each Python example, run against a live
server, prints exactly the text block that follows it, and each `$ ` line of a console
block prints the lines under it. Each block gets a server of its own working in a fresh
directory (written `/…` in the README), which is also where its commands run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .client_support import server_process
from .support import REPO

README = Path(REPO, "README.md").read_text()
SECTION = README[
    README.index("\n## Client\n") : README.index("\n## ", README.index("\n## Client\n") + 1)
]
PYTHON = re.findall(r"```python\n(.*?)```\n```text\n(.*?)```", SECTION, re.DOTALL)
CONSOLE = re.findall(r"```console\n(.*?)```", SECTION, re.DOTALL)
BIN = os.path.dirname(sys.executable)  # where `exec-server` is installed


def environment(url: str) -> dict[str, str]:
    env = {**os.environ, "EXEC_SERVER_URL": url, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    env.pop("EXEC_SERVER_TOKEN", None)
    return env


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


def test_the_section_has_examples() -> None:
    assert len(PYTHON) >= 6 and len(CONSOLE) >= 2


@pytest.mark.parametrize("code, expected", PYTHON, ids=[f"python-{i}" for i in range(len(PYTHON))])
def test_python_example(code: str, expected: str, tmp_path: Path) -> None:
    with server_process("ours-subprocess", cwd=tmp_path) as url:
        done = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env=environment(url),
            cwd=tmp_path,
            timeout=60,
        )
    assert done.stderr == ""
    assert done.stdout == expected


@pytest.mark.parametrize("block", CONSOLE, ids=[f"console-{i}" for i in range(len(CONSOLE))])
def test_console_example(block: str, tmp_path: Path) -> None:
    with server_process("ours-subprocess", cwd=tmp_path) as url:
        for command, expected in commands(block):
            done = subprocess.run(
                ["sh", "-c", command],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=environment(url),
                cwd=tmp_path,
                timeout=60,
            )
            assert done.stdout.replace(str(tmp_path), "/…") == expected, command
