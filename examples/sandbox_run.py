"""Run one command the way a sandboxed ``process/start`` will: codex's workspace-write profile,
resolved for the current directory, enforced by bubblewrap, spawned as the server spawns.

Usage: python examples/sandbox_run.py [--tty] -- COMMAND [ARGS...]
Try:   python examples/sandbox_run.py -- bash -c 'echo ok > inside.txt; echo no > /etc/x; cat inside.txt'
"""

from __future__ import annotations

import os
import select
import sys

from exec_server.paths import to_file_uri
from exec_server.process.spawn import SpawnRequest, exit_code_from_status, spawn
from exec_server.sandbox.bwrap import SANDBOX_TYPE, wrap
from exec_server.sandbox.denial import is_sandbox_denied
from exec_server.sandbox.policy import process_context, resolve
from exec_server.sandbox.profile import parse_sandbox


def workspace_write(cwd: str) -> dict[str, object]:
    """The ``sandbox`` param codex 0.169 sends for ``codex exec -s workspace-write``."""
    special = [("root", "read"), ("project_roots", "write"), ("slash_tmp", "write")]
    entries: list[dict[str, object]] = [
        {"path": {"type": "special", "value": {"kind": kind}}, "access": access}
        for kind, access in special
    ]
    entries += [
        {
            "path": {"type": "special", "value": {"kind": "project_roots", "subpath": name}},
            "access": "read",
            "missing_path_behavior": "skip",
        }
        for name in (".git", ".agents", ".codex", ".aws")
    ]
    return {
        "permissions": {
            "type": "managed",
            "file_system": {"type": "restricted", "entries": entries},
            "network": "restricted",
        },
        "cwd": to_file_uri(cwd),
        "workspaceRoots": [to_file_uri(cwd)],
        "windowsSandboxLevel": "disabled",
    }


def main() -> int:
    args = sys.argv[1:]
    tty = "--tty" in args[: args.index("--")] if "--" in args else False
    argv = args[args.index("--") + 1 :] if "--" in args else args
    cwd = os.getcwd()
    env = dict(os.environ)
    request = parse_sandbox(workspace_write(cwd))
    assert request is not None
    policy = resolve(request.permissions, process_context(request, cwd, env))
    launch = wrap(policy, argv, cwd, env=env)
    print(f"# sandboxType {SANDBOX_TYPE}; writable {policy.writable_roots}", file=sys.stderr)
    try:
        child = spawn(launch.spawn_request(SpawnRequest(argv, cwd, env, tty, pipe_stdin=False)))
        launch.spawned()
        output = bytearray()
        open_fds = {
            fd: 1 if fd == child.stdout else 2
            for fd in (child.stdout, child.stderr)
            if fd is not None
        }
        while open_fds:
            for fd in select.select(list(open_fds), [], [])[0]:
                chunk = _read(fd)
                if not chunk:
                    del open_fds[fd]
                    continue
                output += chunk
                os.write(open_fds[fd], chunk)
        _, status = os.waitpid(child.pid, 0)
    finally:
        launch.release()  # after the exit: removes the placeholders kept for .codex & co
    code = exit_code_from_status(status)
    print(
        f"# exit {code}, sandboxDenied {is_sandbox_denied(True, code, [bytes(output)])}",
        file=sys.stderr,
    )
    return code


def _read(fd: int) -> bytes:
    """A chunk, or b"" at the end (select said it is readable, so this does not wait)."""
    try:
        return os.read(fd, 65536)
    except OSError:  # a PTY master reads EIO once the child is gone
        return b""


if __name__ == "__main__":
    sys.exit(main())
