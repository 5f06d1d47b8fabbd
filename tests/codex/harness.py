"""Running the real `codex exec` 0.169 against an executor: ours or the reference.

An executor is one of four: the reference (`codex exec-server` from the same install) or
ours (`.venv/bin/exec-server`), each over WebSocket (`CODEX_EXEC_SERVER_URL`) or stdio
(`environments.toml` in `$CODEX_HOME` naming a `program`, which codex starts itself). A
WebSocket executor may also require a bearer token, which codex then finds beside the
executor's `url` in `environments.toml` (:func:`remote_environments_toml`).
Every process started here runs in a process group of its own and is killed with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..support import REPO
from .model import ScriptedModel, Turn

CODEX_VERSION = "0.169.0"
INSTALLER = (
    Path(os.environ.get("EXEC_SERVER_SHARED") or Path(REPO).parent / "shared")
    / "peer"
    / "install-codex.sh"
)
"""``EXEC_SERVER_SHARED`` names the shared folder when it is not beside the clone (a worktree)."""
OUR_SERVER = Path(REPO) / ".venv" / "bin" / "exec-server"
SCRATCH = Path.home() / ".cache" / "exec-server-codex-e2e"
"""Where each run's CODEX_HOME and workspace live: codex refuses a CODEX_HOME under /tmp,
and a folder outside any git checkout keeps the repository's own files out of the turn."""

EXECUTOR_MARK = "EXEC_SERVER_E2E_EXECUTOR"
"""Set in the executor's environment only: a command that prints it proves where it ran."""

CODEX_TIMEOUT_S = 120


def install_codex() -> tuple[Path | None, str]:
    """The codex binary, or None and why not (no shared/ beside the clone, npm unreachable)."""
    if not INSTALLER.exists():
        return None, f"{INSTALLER} not found (../shared beside the repository)"
    try:
        done = subprocess.run(
            ["sh", str(INSTALLER), CODEX_VERSION],
            capture_output=True,
            text=True,
            timeout=600,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return None, f"installing codex {CODEX_VERSION} timed out"
    if done.returncode != 0:
        detail = f": {done.stderr.strip()}" if done.stderr.strip() else ""
        return None, (
            f"installing codex {CODEX_VERSION} with {INSTALLER} failed (exit "
            f"{done.returncode}){detail}; is the npm registry reachable?"
        )
    return Path(done.stdout.strip().splitlines()[-1]), ""


@dataclass
class Workspace:
    """One run's folders: CODEX_HOME, the workspace codex works in, and a folder outside both."""

    root: Path
    groups: list[int] = field(default_factory=list)
    """Process groups started for this run, killed when it ends (a stdio executor, strays)."""
    home: Path = field(init=False)
    work: Path = field(init=False)
    outside: Path = field(init=False)

    def __post_init__(self) -> None:
        self.home = self.root / "home"
        self.work = self.root / "work"
        self.outside = self.root / "outside"
        for folder in (self.home, self.work, self.outside):
            folder.mkdir(parents=True)

    @classmethod
    @contextlib.contextmanager
    def create(cls) -> Iterator[Workspace]:
        root = SCRATCH / uuid.uuid4().hex
        workspace = cls(root)
        try:
            yield workspace
        finally:
            for group in workspace.groups:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, signal.SIGKILL)
            shutil.rmtree(root, ignore_errors=True)


def write_config(home: Path, model_base_url: str, top: str = "", tables: str = "") -> None:
    """A config.toml pointing codex at the scripted model, with nothing that phones home;
    ``top`` adds top-level keys (put first; its ``approval_policy`` replaces ours), ``tables``
    adds tables (put last)."""
    approval = "" if "approval_policy" in top else 'approval_policy = "never"\n'
    (home / "config.toml").write_text(
        f"""{top}
model = "gpt-5.5"
model_provider = "scripted"
{approval}check_for_update_on_startup = false

[analytics]
enabled = false

[model_providers.scripted]
name = "scripted"
base_url = {json.dumps(model_base_url)}
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
{tables}"""
    )


@dataclass(frozen=True)
class ExecutorKind:
    """Which executor (``reference`` or ``ours``) over which transport (``ws`` or ``stdio``)."""

    impl: str
    transport: str

    @property
    def id(self) -> str:
        return f"{self.impl}-{self.transport}"

    def command(self, codex: Path, listen: str, token_file: Path | None = None) -> list[str]:
        """The executor's command line; with ``token_file``, every WebSocket client must
        present that file's token (each implementation has its own option for it)."""
        if self.impl == "reference":
            command = [str(codex), "exec-server", "--listen", listen]
            auth = ["--ws-auth", "capability-token", "--ws-token-file", str(token_file)]
        else:
            command = [str(OUR_SERVER), "--listen", listen]
            auth = ["--auth-token-file", str(token_file)]
        return command + auth if token_file is not None else command


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@dataclass
class Executor:
    """A running WebSocket executor (``url``), or the settings for codex to start a stdio one."""

    kind: ExecutorKind
    mark: str
    url: str | None = None
    stdio_command: list[str] | None = None
    environments_toml: str | None = None
    """When set, codex is pointed at the executor by this `environments.toml` rather than
    by ``CODEX_EXEC_SERVER_URL`` (which cannot carry a token)."""

    def codex_env(self, workspace: Workspace) -> dict[str, str]:
        """Environment additions for codex, writing environments.toml where it is used."""
        if self.environments_toml is not None:
            (workspace.home / "environments.toml").write_text(self.environments_toml)
            return {}
        if self.url is not None:
            return {"CODEX_EXEC_SERVER_URL": self.url}
        assert self.stdio_command is not None
        program, *args = self.stdio_command
        (workspace.home / "environments.toml").write_text(
            f"""default = "e2e"

[[environments]]
id = "e2e"
program = {json.dumps(program)}
args = {json.dumps(args)}
env = {{ {EXECUTOR_MARK} = {json.dumps(self.mark)} }}
"""
        )
        return {}


def remote_environments_toml(url: str, token: str | None, *, include_local: bool) -> str:
    """An `environments.toml` (codex 0.169's schema) whose default environment is the
    WebSocket executor at ``url``; codex sends ``token`` as `authorization: Bearer <token>`.

    ``include_local`` is codex's own default (true): then a turn whose executor refused
    codex runs its commands on codex's side instead; false leaves the turn no environment.
    """
    token_line = f"auth_bearer_token = {json.dumps(token)}\n" if token is not None else ""
    return f"""default = "executor"
include_local = {json.dumps(include_local)}

[[environments]]
id = "executor"
url = {json.dumps(url)}
{token_line}"""


@contextlib.contextmanager
def start_executor(
    kind: ExecutorKind,
    codex: Path,
    *,
    token_file: Path | None = None,
    listen: list[str] | None = None,
) -> Iterator[Executor]:
    """A WebSocket executor running until the block ends (requiring the token in
    ``token_file`` when given; ``listen``: other listening options than plain ws:// on
    loopback, for ours); over stdio, codex starts it."""
    mark = f"{kind.id}-{uuid.uuid4().hex[:8]}"
    if kind.transport == "stdio":
        yield Executor(kind, mark, stdio_command=kind.command(codex, "stdio"))
        return
    command = kind.command(codex, "ws://127.0.0.1:0", token_file)
    if listen is not None:
        at = command.index("--listen")
        command[at : at + 2] = listen
    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, EXECUTOR_MARK: mark},
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = _first_line(proc)
        if not line.startswith(("ws://", "wss://")):
            raise RuntimeError(f"{kind.id} printed {line!r} instead of its URL")
        yield Executor(kind, mark, url=line)
    finally:
        _kill_group(proc)


def _first_line(proc: subprocess.Popen[bytes], timeout: float = 30) -> str:
    """The first stdout line, read on a thread so a silent server cannot hang the test."""
    lines: list[bytes] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    return lines[0].decode().strip() if lines else ""


@dataclass
class CodexRun:
    returncode: int
    stdout: str
    stderr: str


def run_codex(
    codex: Path,
    workspace: Workspace,
    executor: Executor,
    *,
    sandbox: str | None,
    prompt: str = "go",
    extra_env: Mapping[str, str] | None = None,
    prefix: Sequence[str] = (),
) -> CodexRun:
    """`codex exec` once, no stdin, in its own process group (killed with everything it
    started if it has not ended by :data:`CODEX_TIMEOUT_S`); ``extra_env`` adds to its environment.
    ``sandbox`` None passes no ``-s``: the config's ``default_permissions`` profile applies;
    ``prefix`` runs codex through another command (e.g. a private mount namespace)."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CODEX_", "OPENAI_"))},
        "CODEX_HOME": str(workspace.home),
        **executor.codex_env(workspace),
        **(extra_env or {}),
    }
    proc = subprocess.Popen(
        [
            *prefix,
            str(codex),
            "exec",
            "--skip-git-repo-check",
            "--ephemeral",
            "--color",
            "never",
            *(["-s", sandbox] if sandbox is not None else []),
            "-C",
            str(workspace.work),
            prompt,
        ],
        cwd=workspace.work,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    workspace.groups.append(proc.pid)
    try:
        stdout, stderr = proc.communicate(timeout=CODEX_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        stdout, stderr = proc.communicate()
        print(stderr.decode(errors="replace")[-4000:], file=sys.stderr)
        raise
    return CodexRun(
        proc.returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace")
    )


def run_turn(
    codex: Path,
    workspace: Workspace,
    executor: Executor,
    turns: list[Turn],
    *,
    sandbox: str | None = "danger-full-access",
    extra_env: Mapping[str, str] | None = None,
    config: tuple[str, str] = ("", ""),
    prefix: Sequence[str] = (),
) -> tuple[ScriptedModel, CodexRun]:
    """One `codex exec` whose model makes the scripted tool calls, whatever its outcome: the
    model (its recorded requests hold what codex reported back) and how codex ended.
    ``config`` is (top-level keys, tables) added to config.toml (:func:`write_config`)."""
    with ScriptedModel(turns) as model:
        write_config(workspace.home, model.base_url, *config)
        run = run_codex(
            codex, workspace, executor, sandbox=sandbox, extra_env=extra_env, prefix=prefix
        )
    return model, run


def run_agent(
    codex: Path,
    workspace: Workspace,
    executor: Executor,
    turns: list[Turn],
    *,
    sandbox: str = "danger-full-access",
) -> ScriptedModel:
    """:func:`run_turn`, failing if codex did not finish its turn; returns the model."""
    model, run = run_turn(codex, workspace, executor, turns, sandbox=sandbox)
    detail = f"codex exited {run.returncode}; stderr:\n{run.stderr[-4000:]}"
    assert run.returncode == 0, detail
    assert not model.errors, model.errors
    assert len(model.requests) == len(turns) + 1, detail  # every scripted turn, then "done"
    return model
