"""Authentication with the real `codex exec` 0.169: the token right, wrong and missing.

The executor runs as its real command with a token file (ours: `exec-server
--auth-token-file`; the reference: `codex exec-server --ws-auth capability-token
--ws-token-file`, whose runs validate the harness). codex finds it through
`$CODEX_HOME/environments.toml`, a `url` with an `auth_bearer_token`, which codex 0.169 sends
in the WebSocket handshake as `authorization: Bearer <token>`. Each scenario is one scripted
turn whose command writes a file and prints where it ran.

`include_local = false` everywhere but in the scenario about it: with codex's default (true),
a turn whose executor refused codex runs its commands on codex's own side, so "nothing ran"
could not be told from "ran somewhere else".
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from websockets.http11 import Response
from websockets.sync.client import connect

from ..support import self_signed
from .harness import (
    EXECUTOR_MARK,
    Executor,
    ExecutorKind,
    Workspace,
    remote_environments_toml,
    run_turn,
    start_executor,
)
from .model import exec_command

pytestmark = pytest.mark.timeout(240)

WS_KINDS = [ExecutorKind("reference", "ws"), ExecutorKind("ours", "ws")]
OURS = [ExecutorKind("ours", "ws")]

CODEX_LOG = {"RUST_LOG": "error,codex_core::environment_selection=warn"}
"""codex's own level (errors) and the warning that says why a turn's environment failed."""

MARKER = "marker.txt"
COMMAND = f"echo ran-on=${EXECUTOR_MARK} > {MARKER}; cat {MARKER}"
"""Prints, and leaves on disk, the mark that only the executor's environment has."""

NO_ENVIRONMENT = (
    "No usable execution environment is available. "
    "Wait for an environment to become available before using this tool."
)
"""What codex 0.169 reports to the model for a tool call when its environment is not there."""


@dataclasses.dataclass(frozen=True)
class Guarded:
    """A running executor that requires ``token``."""

    executor: Executor
    token: str

    def seen_by_codex(self, token: str | None, *, include_local: bool = False) -> Executor:
        """The executor as codex is told of it: the URL with ``token`` (or none)."""
        assert self.executor.url is not None
        toml = remote_environments_toml(self.executor.url, token, include_local=include_local)
        return dataclasses.replace(self.executor, environments_toml=toml)


@pytest.fixture
def guarded(executor_kind: ExecutorKind, codex: Path, workspace: Workspace) -> Iterator[Guarded]:
    token = secrets.token_urlsafe(32)
    token_file = workspace.root / "token"
    token_file.write_text(f"{token}\n")
    token_file.chmod(0o600)
    with start_executor(executor_kind, codex, token_file=token_file) as executor:
        yield Guarded(executor, token)


def wrong(token: str) -> str:
    """A near miss: the right token with its last character changed."""
    return token[:-1] + ("A" if token[-1] != "A" else "B")


def bearer(token: str | None) -> dict[str, str]:
    """The handshake header codex sends for ``token`` (its own spelling, lower case)."""
    return {} if token is None else {"authorization": f"Bearer {token}"}


def initialize(url: str, headers: dict[str, str]) -> dict[str, Any]:
    """A raw WebSocket client's `initialize` reply."""
    with connect(url, additional_headers=headers, open_timeout=10) as ws:
        ws.send(json.dumps({"id": 1, "method": "initialize", "params": {"clientName": "auth"}}))
        reply: dict[str, Any] = json.loads(ws.recv(timeout=10))
        return reply


def refusal(url: str, headers: dict[str, str]) -> Response:
    """The HTTP answer to a handshake that must not upgrade: no WebSocket, so no JSON-RPC."""
    with (
        pytest.raises(InvalidStatus) as refused,
        connect(url, additional_headers=headers, open_timeout=10),
    ):
        pass
    return refused.value.response


@pytest.mark.parametrize("executor_kind", WS_KINDS, indirect=True, ids=lambda kind: kind.id)
def test_right_token_runs_the_command_on_the_executor(
    codex: Path, workspace: Workspace, guarded: Guarded
) -> None:
    executor = guarded.seen_by_codex(guarded.token)
    model, run = run_turn(
        codex, workspace, executor, [[exec_command("c1", COMMAND)]], extra_env=CODEX_LOG
    )
    assert run.returncode == 0, run.stderr[-4000:]
    assert not model.errors, model.errors
    output = model.output_of("c1")
    assert "Process exited with code 0" in output, output
    assert output.endswith(f"Output:\nran-on={executor.mark}\n"), output
    assert (workspace.work / MARKER).read_text() == f"ran-on={executor.mark}\n"
    assert "failed to start" not in run.stderr, run.stderr[-4000:]
    # the header exactly as codex sends it opens a session for a raw client too
    assert "sessionId" in initialize(executor.url or "", bearer(guarded.token))["result"]


@pytest.mark.parametrize("executor_kind", WS_KINDS, indirect=True, ids=lambda kind: kind.id)
@pytest.mark.parametrize("presented", ["wrong", "missing"])
def test_wrong_or_missing_token_runs_nothing(
    codex: Path, workspace: Workspace, guarded: Guarded, presented: str
) -> None:
    token = wrong(guarded.token) if presented == "wrong" else None
    executor = guarded.seen_by_codex(token)
    model, run = run_turn(
        codex, workspace, executor, [[exec_command("c1", COMMAND)]], extra_env=CODEX_LOG
    )
    assert not (workspace.work / MARKER).exists()
    # codex finishes its turn (exit 0): the refusal goes to the model and to stderr
    assert run.returncode == 0, run.stderr[-4000:]
    assert model.output_of("c1") == NO_ENVIRONMENT
    assert "turn environment `executor` failed to start" in run.stderr, run.stderr[-4000:]
    assert "HTTP error: 401 Unauthorized" in run.stderr, run.stderr[-4000:]
    assert NO_ENVIRONMENT in run.stderr
    # a raw client presenting the same gets the 401, and no WebSocket to send JSON-RPC on
    assert executor.url is not None
    response = refusal(executor.url, bearer(token))
    assert response.status_code == 401
    if executor.kind.impl == "ours":
        assert response.headers["WWW-Authenticate"].startswith("Bearer ")


@pytest.mark.parametrize("executor_kind", OURS, indirect=True, ids=lambda kind: kind.id)
def test_refused_codex_runs_the_command_itself_when_include_local_is_left_on(
    codex: Path, workspace: Workspace, guarded: Guarded
) -> None:
    """Why the README says `include_local = false`: with codex's default, a codex that the
    executor refused runs the command on its own side (without the executor's mark)."""
    executor = guarded.seen_by_codex(None, include_local=True)
    model, run = run_turn(codex, workspace, executor, [[exec_command("c1", COMMAND)]])
    assert run.returncode == 0, run.stderr[-4000:]
    assert model.output_of("c1").endswith("Output:\nran-on=\n"), model.output_of("c1")
    assert (workspace.work / MARKER).read_text() == "ran-on=\n"


def test_codex_sends_a_token_only_over_wss_or_to_loopback(
    codex: Path, workspace: Workspace
) -> None:
    """Why the README says wss:// for a server elsewhere: codex 0.169 will not start with a
    token for a plain ws:// URL that is not loopback (`.invalid` never resolves, and codex
    refuses before it would look it up)."""
    toml = remote_environments_toml("ws://executor.invalid:8765", "t", include_local=False)
    executor = Executor(ExecutorKind("ours", "ws"), "", environments_toml=toml)
    model, run = run_turn(codex, workspace, executor, [[exec_command("c1", COMMAND)]])
    assert run.returncode == 1
    assert "exec-server WebSocket headers require wss:// or a loopback destination" in run.stderr
    assert not model.requests


@pytest.mark.parametrize("trusted", [True, False], ids=["trusted", "untrusted"])
def test_codex_reaches_ours_over_wss_with_the_token(
    codex: Path, workspace: Workspace, trusted: bool
) -> None:
    """The README's advice for a server elsewhere, taken whole: `wss://` (our --tls-cert and
    --tls-key) with the token. codex trusts the certificate through SSL_CERT_FILE; one it
    does not trust gets it nowhere, and nothing runs."""
    cert, key = self_signed(workspace.root)
    token = secrets.token_urlsafe(32)
    token_file = workspace.root / "token"
    token_file.write_text(token)
    listen = ["--listen", "wss://127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key)]
    with start_executor(OURS[0], codex, token_file=token_file, listen=listen) as executor:
        assert executor.url is not None and executor.url.startswith("wss://"), executor.url
        toml = remote_environments_toml(executor.url, token, include_local=False)
        seen = dataclasses.replace(executor, environments_toml=toml)
        trust = {"SSL_CERT_FILE": str(cert)} if trusted else {}
        model, run = run_turn(
            codex,
            workspace,
            seen,
            [[exec_command("c1", COMMAND)]],
            extra_env={**CODEX_LOG, **trust},
        )
    assert run.returncode == 0, run.stderr[-4000:]
    if trusted:
        assert model.output_of("c1").endswith(f"Output:\nran-on={executor.mark}\n"), run.stderr[
            -3000:
        ]
        assert (workspace.work / MARKER).read_text() == f"ran-on={executor.mark}\n"
    else:
        assert model.output_of("c1") == NO_ENVIRONMENT
        assert not (workspace.work / MARKER).exists()
