"""The /proc reading behind whole-tree kills (process/tree.py), on real process trees."""

from __future__ import annotations

import subprocess
import time

from exec_server.process.tree import Pid, kill_trees, members, with_living_members

from .support import pid_alive


def _start(script: str) -> tuple[subprocess.Popen[bytes], Pid, int]:
    """A shell in a session of its own that starts a `setsid sleep` and prints its pid."""
    shell = subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE, start_new_session=True)
    assert shell.stdout is not None
    escaped = int(shell.stdout.readline())
    root = Pid.of(shell.pid)
    assert root is not None
    return shell, root, escaped


def test_a_tree_with_a_living_descendant_is_kept_and_an_empty_one_dropped() -> None:
    shell, root, escaped = _start(
        "setsid sleep 1000 </dev/null >/dev/null & echo $!; exec sleep 1000"
    )
    done = subprocess.Popen(["true"], start_new_session=True)
    done.wait()
    gone = Pid(done.pid, 0)
    try:
        assert {p.pid for p in members([root])} >= {shell.pid}
        assert with_living_members([root, gone]) == [root]
        shell.kill()
        shell.wait()
        # The root is gone, and `setsid sleep` left its session and group: nothing of the
        # tree is found any more, so the root is dropped (the server keeps what it adopted
        # as separate roots, see exits.py).
        deadline = time.monotonic() + 10
        while with_living_members([root]) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert with_living_members([root]) == []
    finally:
        kill_trees([p for p in [Pid.of(escaped)] if p is not None])
        shell.kill()
        shell.wait()
    assert not pid_alive(escaped)


def test_a_session_member_keeps_a_dead_leader_s_tree() -> None:
    """The leader exited, but a background job is still in its session: the tree lives."""
    shell, root, job = _start("sleep 1000 </dev/null >/dev/null & echo $!")
    shell.wait()
    try:
        assert with_living_members([root]) == [root]
        assert {p.pid for p in members([root])} == {job}
    finally:
        kill_trees([root])
    deadline = time.monotonic() + 10
    while pid_alive(job) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not pid_alive(job)
    assert with_living_members([root]) == []
