"""Shell snapshots (codex 0.169 ``shellSnapshotV2``): a login shell's state captured once per
scope and replayed, so ``bash -lc SCRIPT`` does not re-read the startup files every time.

A start asks for it with ``shellSnapshot {scopeId, shell: {name, path}}``; it applies only
when ``argv`` is ``[shell.path, "-lc", SCRIPT]``. The first such start of a scope runs the
capture (the same shell, ``-lc``, under the same sandbox, environment and cwd as the command):
the exported variables and the functions (what the reference restores, probed: not the
aliases, not the umask). Later starts run
``shell.path -c`` with that state restored first, then ``SCRIPT``. Variables the request names
in ``env`` keep the request's values (they win over the captured ones), and the command runs
in the requested cwd (a ``cd`` in a profile is not replayed).

Bounds: a capture has 10 s and 512 KiB; a scope's snapshots are kept in an LRU of 16 per
session. A capture that fails, times out or is too large leaves the scope's commands to run
as sent (the failure is kept: no second capture).
``bash`` and ``zsh`` keep variables and functions; ``sh`` (dash) keeps variables only, as it
cannot print its functions.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import json
import os
import selectors
import shlex
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import invalid_params
from .spawn import child_fd_limit, restore_child_fd_limit

SUPPORTED_SHELLS = ("bash", "zsh", "sh")
MAX_SCOPE_BYTES = 256
CAPTURE_TIMEOUT_S = 10.0
MAX_SNAPSHOT_BYTES = 512 * 1024
MAX_SNAPSHOTS = 16
CAPTURE_WORKERS = 2
"""Captures running at once, server-wide, on threads of their own (:func:`capture_executor`):
each may wait its whole timeout on a login profile, and must not hold the worker threads
every session's ``fs/*`` calls and sandbox preparations share."""
CHUNK_BYTES = 60 * 1024
"""The restore script travels in environment variables of at most this size each (the
kernel bounds one environment string to 128 KiB)."""
STATE_VARIABLE = "__CODEX_SHELL_SNAPSHOT_STATE_"

_NOT_RESTORED = frozenset({"PWD", "OLDPWD", "SHLVL", "_"})
"""Exported variables a snapshot never sets again: where the shell is and how deep."""

_MARK = "__exec_server_snapshot__"
_FUNCTIONS_MARK = "__exec_server_snapshot_functions__"
_FUNCTION_DUMPS = {"bash": "declare -f", "zsh": "typeset -f", "sh": ""}
"""How each shell prints its functions as code (``sh``, i.e. dash, cannot)."""
_REPLAY_FLAGS = {"bash": "-c", "zsh": "-fc", "sh": "-c"}
"""How each shell runs a script without its startup files (zsh reads ``.zshenv`` unless
``-f``)."""


def _capture_script(shell_name: str) -> str:
    """Prints a mark (a profile's own output comes before it and is dropped), the exported
    environment (``env -0``), a second mark, then the functions as code."""
    return (
        f"printf '\\n{_MARK}\\0'; env -0; printf '{_FUNCTIONS_MARK}\\0'; "
        f"{_FUNCTION_DUMPS[shell_name] or ':'}"
    )


def check_request(scope_id: str, shell_name: str) -> None:
    """-32602 with the reference's texts for a bad scope or an unsupported shell."""
    if not scope_id or len(scope_id.encode()) > MAX_SCOPE_BYTES:
        raise invalid_params(
            f"shell snapshot scope must be non-empty and at most {MAX_SCOPE_BYTES} bytes"
        )
    if shell_name not in SUPPORTED_SHELLS:
        raise invalid_params(f"shell snapshots are unsupported for shell `{shell_name}`")


def applies(argv: Sequence[str], shell_path: str) -> bool:
    """Whether ``argv`` is a login-shell script of the snapshot's shell."""
    return len(argv) == 3 and argv[0] == shell_path and argv[1] == "-lc"


@dataclass(frozen=True, slots=True)
class Replay:
    """How to run a command with a snapshot: the new argv and environment additions."""

    argv: list[str]
    env: dict[str, str]


def capture_argv(shell_name: str, shell_path: str) -> list[str]:
    """The command that captures a snapshot: the login shell, then the capture script."""
    return [shell_path, "-lc", _capture_script(shell_name)]


def restore_script(output: bytes, keep: frozenset[str]) -> str | None:
    """The shell code that restores a captured state (None when the capture is unusable);
    variables named in ``keep`` (the request's own ``env``) are left as they are."""
    at = output.find(f"\n{_MARK}\0".encode())
    split = output.find(f"{_FUNCTIONS_MARK}\0".encode(), at)
    if at < 0 or split < 0:
        return None
    lines: list[str] = []
    for record in output[at + len(_MARK) + 2 : split].split(b"\0"):
        name, equals, value = record.decode(errors="surrogateescape").partition("=")
        if not equals or name in _NOT_RESTORED or name in keep or not _is_name(name):
            continue  # also bash's exported functions (BASH_FUNC_f%%): restored as code
        lines.append(f"export {name}={shlex.quote(value)}")
    lines.append(output[split + len(_FUNCTIONS_MARK) + 1 :].decode(errors="surrogateescape"))
    return "\n".join(lines) + "\n"


def _is_name(name: str) -> bool:
    return name.isascii() and name.isidentifier()


def replay(shell_name: str, shell_path: str, script: str, restore: str) -> Replay:
    """Run ``script`` without startup files after ``restore`` (carried in the environment)."""
    data = restore.encode(errors="surrogateescape")
    chunks = [data[i : i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)] or [b""]
    names = [f"{STATE_VARIABLE}{index}" for index in range(len(chunks))]
    env = {
        name: chunk.decode(errors="surrogateescape")
        for name, chunk in zip(names, chunks, strict=True)
    }
    joined = "".join(f"${{{name}}}" for name in names)
    prelude = (
        f'if ! eval "{joined}" >/dev/null 2>&1; then '
        "printf 'failed to restore shell snapshot\\n' >&2; fi\n"
        f"unset {' '.join(names)}\n"
    )
    return Replay([shell_path, _REPLAY_FLAGS[shell_name], prelude + script], env)


@functools.cache
def capture_executor() -> concurrent.futures.ThreadPoolExecutor:
    """The threads captures run on (:data:`CAPTURE_WORKERS` of them, made on first use)."""
    return concurrent.futures.ThreadPoolExecutor(
        CAPTURE_WORKERS, thread_name_prefix="shell-snapshot"
    )


def run_capture(
    argv: list[str], cwd: str, env: Mapping[str, str], popen_options: Mapping[str, Any]
) -> bytes | None:
    """Run a capture to its end (blocking): its output, or None when it failed, printed more
    than :data:`MAX_SNAPSHOT_BYTES` or ran past :data:`CAPTURE_TIMEOUT_S` (its process group
    is then killed: the output is never held past the bound).
    ``popen_options`` are a sandbox launch's (its environment, seccomp descriptor, cgroup),
    else empty: ``env`` is then the capture's environment."""
    options: dict[str, Any] = {"env": dict(env), **popen_options}
    if "preexec_fn" not in options and child_fd_limit() is not None:
        options["preexec_fn"] = restore_child_fd_limit  # what spawn.py gives every child
    deadline = time.monotonic() + CAPTURE_TIMEOUT_S
    try:
        child = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            **options,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    with child:
        try:
            output = _bounded_output(child, deadline)
            if output is not None:
                child.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            output = None
        finally:
            # Cut off, an error, or a clean end: nothing of the group stays. A profile's
            # `cmd &` is in the shell's group (no job control) and outlives the reaped shell.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    return output if child.returncode == 0 else None


def _bounded_output(child: subprocess.Popen[bytes], deadline: float) -> bytes | None:
    """``child``'s stdout to its end, or None once it passes the bound or the deadline."""
    assert child.stdout is not None
    fd = child.stdout.fileno()
    chunks: list[bytes] = []
    size = 0
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while size <= MAX_SNAPSHOT_BYTES:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                return None
            chunk = os.read(fd, 64 * 1024)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
    return None


class SnapshotCache:
    """A session's snapshots: at most :data:`MAX_SNAPSHOTS`, least recently used first out;
    concurrent starts of one scope share one capture."""

    def __init__(self) -> None:
        self._entries: collections.OrderedDict[str, asyncio.Future[bytes | None]] = (
            collections.OrderedDict()
        )

    async def get(self, key: str, capture: Callable[[], Awaitable[bytes | None]]) -> bytes | None:
        """The captured output for ``key``, capturing it on first use. A failed capture is
        kept too (None): later starts of the scope run as sent without trying again, as the
        reference does (probed: a profile that exits 1 runs once for the capture, then once
        per command)."""
        future = self._entries.get(key)
        if future is not None:
            self._entries.move_to_end(key)
            return await asyncio.shield(future)
        future = asyncio.get_running_loop().create_future()
        self._entries[key] = future
        while len(self._entries) > MAX_SNAPSHOTS:
            self._entries.popitem(last=False)
        output = None
        try:
            output = await capture()
        finally:
            future.set_result(output)
        return output

    def release(self) -> None:
        """Forget every snapshot (the session ends)."""
        self._entries.clear()


def cache_key(
    scope_id: str, shell: tuple[str, str], cwd: str, env_policy: object, sandbox: object
) -> str:
    """One snapshot per scope, shell, cwd, environment policy and sandbox profile, as the
    reference keys it: not the request's own ``env``, which codex changes with every call
    (``CODEX_TOOL_CALL_ID``) and which wins over the snapshot anyway."""
    return json.dumps([scope_id, shell, cwd, env_policy, sandbox], sort_keys=True)
