"""The real `codex exec` 0.169 driving an executor through a scripted agent turn.

Each scenario scripts the model's tool calls, runs `codex exec` once against one executor
(the reference or ours, over WebSocket or stdio), and asserts what codex reported back to the
model for each call and what is on disk. The reference runs validate the harness: whatever
they show is what "the same result" means for ours.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..support import wait_until_sync
from .harness import EXECUTOR_MARK, Executor, Workspace, run_agent
from .model import apply_patch, exec_command, write_stdin

pytestmark = pytest.mark.timeout(240)

SESSION_ID = re.compile(r"Process running with session ID (\d+)")


def session_of(output: str) -> int:
    """The unified-exec session id codex gave a process still running."""
    found = SESSION_ID.search(output)
    assert found, f"no running session in {output!r}"
    return int(found.group(1))


def session_from(body: dict[str, Any], call_id: str) -> int:
    for item in body["input"]:
        if item.get("call_id") == call_id and item.get("type") == "function_call_output":
            return session_of(item["output"])
    raise AssertionError(f"no output for {call_id} yet")


# ---- commands ------------------------------------------------------------------------------


def test_shell_command(codex: Path, workspace: Workspace, executor: Executor) -> None:
    model = run_agent(
        codex,
        workspace,
        executor,
        [[exec_command("c1", f"echo hello; pwd; echo ${EXECUTOR_MARK}")]],
    )
    output = model.output_of("c1")
    assert "Process exited with code 0" in output
    # pwd is the workspace, and the marker only the executor's environment has proves where it ran
    assert output.endswith(f"Output:\nhello\n{workspace.work}\n{executor.mark}\n"), output


def test_failing_command(codex: Path, workspace: Workspace, executor: Executor) -> None:
    model = run_agent(codex, workspace, executor, [[exec_command("c1", "echo oops >&2; exit 3")]])
    output = model.output_of("c1")
    assert "Process exited with code 3" in output
    assert output.endswith("Output:\noops\n"), output


def test_streamed_output(codex: Path, workspace: Workspace, executor: Executor) -> None:
    """Output reaches codex while the process runs: the first line before the process can go
    on (it waits for a file the next call creates), the second after."""
    # bounded, so a run that fails before creating the file leaves nothing behind for long
    waiter = (
        "echo first; i=0; while [ ! -e go ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done; "
        "echo second"
    )
    model = run_agent(
        codex,
        workspace,
        executor,
        [
            [exec_command("c1", waiter, yield_time_ms=2000)],
            [exec_command("c2", "touch go")],
            lambda body: [write_stdin("c3", session_from(body, "c1"), "")],
        ],
    )
    first = model.output_of("c1")
    session_of(first)
    assert first.endswith("Output:\nfirst\n"), first
    assert "Process exited with code 0" in model.output_of("c2")
    last = model.output_of("c3")
    assert "Process exited with code 0" in last
    assert last.endswith("Output:\nsecond\n"), last


def test_pty_session_with_write_stdin(
    codex: Path, workspace: Workspace, executor: Executor
) -> None:
    """A PTY process typed into with write_stdin; ^D ends it. Output that misses one call's
    wait shows in the next, so the assertions look at the calls together."""
    model = run_agent(
        codex,
        workspace,
        executor,
        [
            [exec_command("c1", "tty; exec cat", tty=True, yield_time_ms=1000)],
            lambda body: [write_stdin("c2", session_from(body, "c1"), "ping-pty-42\n")],
            lambda body: [write_stdin("c3", session_from(body, "c1"), "\u0004")],
        ],
    )
    outputs = [model.output_of(call) for call in ("c1", "c2", "c3")]
    session_of(outputs[0])
    session_of(outputs[1])
    assert "Process exited with code 0" in outputs[2]
    together = "".join(outputs)
    assert "/dev/pts/" in together
    assert together.count("ping-pty-42\r\n") == 2, together  # the terminal's echo, then cat's


# ---- apply_patch ---------------------------------------------------------------------------

ADD = """*** Begin Patch
*** Add File: hello.txt
+line one
+keep me
*** Add File: sub/dir/nested.txt
+nested
*** End Patch
"""
EDIT_AND_DELETE = """*** Begin Patch
*** Update File: hello.txt
@@
-line one
+line ONE
 keep me
*** Delete File: sub/dir/nested.txt
*** End Patch
"""


def _patch_files(codex: Path, workspace: Workspace, executor: Executor, sandbox: str) -> None:
    model = run_agent(
        codex,
        workspace,
        executor,
        [[apply_patch("c1", ADD)], [apply_patch("c2", EDIT_AND_DELETE)]],
        sandbox=sandbox,
    )
    assert model.output_of("c1").endswith(
        "Output:\nSuccess. Updated the following files:\nA hello.txt\nA sub/dir/nested.txt\n"
    ), model.output_of("c1")
    assert model.output_of("c2").endswith(
        "Output:\nSuccess. Updated the following files:\nM hello.txt\nD sub/dir/nested.txt\n"
    ), model.output_of("c2")
    assert (workspace.work / "hello.txt").read_text() == "line ONE\nkeep me\n"
    assert not (workspace.work / "sub" / "dir" / "nested.txt").exists()
    assert (workspace.work / "sub" / "dir").is_dir()


def test_apply_patch(codex: Path, workspace: Workspace, executor: Executor) -> None:
    _patch_files(codex, workspace, executor, "danger-full-access")


@pytest.mark.sandbox
def test_apply_patch_workspace_write(codex: Path, workspace: Workspace, executor: Executor) -> None:
    """Under -s workspace-write codex sends a restricted profile with every fs/* mutation."""
    _patch_files(codex, workspace, executor, "workspace-write")


# ---- the sandbox ---------------------------------------------------------------------------


@contextlib.contextmanager
def loopback_listener() -> Iterator[socket.socket]:
    listener = socket.socket()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        yield listener
    finally:
        listener.close()


@pytest.mark.sandbox
def test_sandbox_escape_denied(codex: Path, workspace: Workspace, executor: Executor) -> None:
    """Under -s workspace-write: a write inside the workspace works; a write outside it and a
    TCP connect to loopback are denied."""
    probe = workspace.outside / "probe"
    with loopback_listener() as listener:
        port = listener.getsockname()[1]
        command = (
            "echo in > inside.txt && echo wrote-inside; "
            f"if echo out > {probe} 2>/dev/null; then echo wrote-outside; else echo denied-outside; fi; "
            f"if (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null; then echo net-open; else echo net-denied; fi"
        )
        model = run_agent(
            codex, workspace, executor, [[exec_command("c1", command)]], sandbox="workspace-write"
        )
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected
    output = model.output_of("c1")
    assert "Process exited with code 0" in output
    assert "wrote-inside\n" in output
    assert "denied-outside\n" in output, output
    assert "net-denied\n" in output, output
    assert (workspace.work / "inside.txt").read_text() == "in\n"
    assert not probe.exists()


# ---- the end of the turn -------------------------------------------------------------------


def _processes_named(marker: str) -> list[int]:
    """Pids whose argv[0] is ``marker`` (seen the same from any PID namespace)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{name}/cmdline", "rb") as f:
                if f.read().split(b"\0", 1)[0] == marker.encode():
                    found.append(int(name))
    return found


def test_process_left_running_ends_with_codex(
    codex: Path, workspace: Workspace, executor: Executor
) -> None:
    """A process still running when the turn ends is gone once codex has exited, while the
    executor itself is still up (over WebSocket)."""
    marker = f"e2e-left-running-{uuid.uuid4().hex[:12]}"
    try:
        model = run_agent(
            codex,
            workspace,
            executor,
            [
                [
                    exec_command(
                        "c1", f"echo started; exec -a {marker} sleep 1000", yield_time_ms=1000
                    )
                ]
            ],
        )
        output = model.output_of("c1")
        session_of(output)
        assert output.endswith("Output:\nstarted\n"), output
        assert wait_until_sync(lambda: not _processes_named(marker), timeout=30), (
            f"{marker} still running after codex exited"
        )
    finally:
        for pid in _processes_named(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
