"""The server raises its own soft limit on open files; its children must start with the one
it was given (the hard limit unchanged), through both spawn paths, in pipe and PTY mode,
sandboxed or not: a soft limit of a million breaks programs that loop over every possible
descriptor or ``select()`` past 1024."""

from __future__ import annotations

import re
import resource
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import pytest

from exec_server.process import spawn
from exec_server.sandbox.bwrap import support

from .client_support import server_process
from .sandbox_support import home_places, local_workspace_write
from .support import PATH_ENV, Client

HARD = min(4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
SOFT = min(512, HARD // 2)
"""The limits the test starts its server with: a soft one below the hard one, to be raised."""

REPORT = ["sh", "-c", "ulimit -Sn; ulimit -Hn; grep 'open files' /proc/$PPID/limits"]
"""The child's soft and hard limits, then its parent's limits line."""


def _low_soft_limit() -> None:  # runs in the server's process before it execs
    resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT, HARD))


@pytest.fixture(scope="module", params=["native", "popen"])
def server_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A real server started with the soft limit SOFT, through each spawn path."""
    if request.param == "native" and not spawn.native_spawn_available():
        pytest.skip("the vfork extension is not built here")
    extra = ["--no-native-spawn"] if request.param == "popen" else []
    with server_process("ours-subprocess", extra=extra, preexec_fn=_low_soft_limit) as url:
        yield url


@pytest.fixture
async def client(server_url: str) -> AsyncIterator[Client]:
    async with Client.connect(server_url) as connected:
        await connected.initialize()
        yield connected


def _limits(output: bytes) -> tuple[int, int]:
    lines = output.decode().replace("\r\n", "\n").splitlines()
    return int(lines[0]), int(lines[1])


@pytest.mark.parametrize("tty", [False, True], ids=["pipe", "pty"])
async def test_a_child_starts_with_the_soft_limit_the_server_was_given(
    client: Client, tty: bool
) -> None:
    events = await client.run("limits", REPORT, tty=tty)
    output = events.data()
    assert _limits(output) == (SOFT, HARD), output
    # The server (the child's parent) did raise its own: without the fix the child would
    # have inherited HARD.
    parent = re.search(rb"open files\s+(\d+)\s+(\d+)", output)
    assert parent is not None and (int(parent[1]), int(parent[2])) == (HARD, HARD), output


@pytest.mark.skipif(not support().usable, reason=f"bubblewrap cannot run here: {support().reason}")
async def test_a_sandboxed_child_starts_with_it_too(client: Client) -> None:
    with home_places("fdlimit-t") as (work, _):
        sandbox = local_workspace_write(work, network="enabled")
        argv = ["sh", "-c", "ulimit -Sn; ulimit -Hn"]
        await client.start("boxed", argv, cwd=str(work), env=PATH_ENV, sandbox=sandbox)
        events = await client.wait_closed("boxed")
    assert _limits(events.data()) == (SOFT, HARD), events.data()


def test_a_server_that_raised_nothing_leaves_children_alone() -> None:
    """In this test process nothing raised the limit: children inherit ours unchanged."""
    assert spawn.child_fd_limit() is None


CAPTURE = """
from exec_server.process import shell_snapshot, spawn
spawn.raise_fd_limit()
print(shell_snapshot.run_capture(["sh", "-c", "ulimit -Sn"], "/", {"PATH": "/usr/bin:/bin"}, {}))
"""


def test_a_shell_snapshot_capture_starts_with_it_too() -> None:
    """Captures run the user's login shell through ``subprocess``, not the spawn paths."""
    done = subprocess.run(
        [sys.executable, "-c", CAPTURE],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        preexec_fn=_low_soft_limit,
    )
    assert done.stdout.strip() == repr(f"{SOFT}\n".encode()), done
