"""An approved escalation under a profile with deny rules (codex 0.169's
``linuxApprovedRootWritePreservesRestrictions``): codex's auto-reviewer allows a command the
model asked to run with ``sandbox_permissions: "require_escalated"``, and codex sends it with
``/`` writable, the deny entry kept and ``sandboxOverride: "escalatedSandboxWithRestrictions"``.
Without the flag codex refuses it ("cannot safely escalate with denied reads").

On both servers the command writes outside the workspace, uses ``/dev/null`` and still cannot
read the denied directory. The reference's recording of that ``process/start``
(``tests/data/codex_escalation_reference.jsonl``, made again with ``EXEC_SERVER_E2E_RECORD=1``
on a reference run) is the contract: codex must send ours the same sandbox.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from . import relay
from .harness import Executor, ExecutorKind, Workspace, run_codex, write_config
from .model import ScriptedModel, Turn, exec_command, message

pytestmark = [pytest.mark.timeout(240), pytest.mark.sandbox]

CONTRACT = Path(__file__).parent.parent / "data" / "codex_escalation_reference.jsonl"
VERDICT = {"outcome": "allow", "risk_level": "low", "rationale": "a test"}
"""What the scripted model answers as codex's auto-reviewer."""


@pytest.fixture
def kind(kind: ExecutorKind) -> ExecutorKind:
    """conftest's ``kind``, ours skipped where bubblewrap cannot run."""
    if kind.impl == "ours":
        from exec_server.sandbox.bwrap import support

        if not support().usable:
            pytest.skip(f"bubblewrap cannot run here: {support().reason}")
    return kind


def configure(workspace: Workspace, base_url: str, secret: Path) -> None:
    """Approvals on request through the auto-reviewer, and a profile denying ``secret``."""
    write_config(workspace.home, base_url)
    config = workspace.home / "config.toml"
    text = config.read_text().replace('approval_policy = "never"', 'approval_policy = "on-request"')
    text = text.replace(
        'model = "gpt-5.5"',
        'model = "gpt-5.5"\napprovals_reviewer = "auto_review"\ndefault_permissions = "ws"',
    )
    text += '\n[permissions.ws]\nextends = ":workspace"\n[permissions.ws.filesystem]\n'
    text += f'{json.dumps(str(secret))} = "none"\n'
    config.write_text(text)


def starts(records: list[dict[str, Any]]) -> list[Any]:
    return [params["sandbox"] for params in relay.sent(records, "process/start")]


def test_an_approved_escalation_keeps_its_denials(
    codex: Path, workspace: Workspace, kind: ExecutorKind
) -> None:
    secret = workspace.outside / "secretdir"
    secret.mkdir()
    (secret / "file").write_text("the secret")
    log = workspace.root / "relay.jsonl"
    executor = Executor(
        kind, "unused", stdio_command=relay.recording_command(kind.command(codex, "stdio"), log)
    )
    command = (
        f"cat {secret}/file; echo x > /dev/null && echo devnull-ok; "
        f"touch {workspace.outside}/escalated && echo wrote-outside"
    )
    escalated = exec_command(
        "c1", command, sandbox_permissions="require_escalated", justification="write outside"
    )
    turns: list[Turn] = [[escalated], [message(json.dumps(VERDICT))]]
    with ScriptedModel(turns) as model:
        configure(workspace, model.base_url, secret)
        run = run_codex(codex, workspace, executor, sandbox=None, extra_env={"RUST_LOG": "error"})
    assert run.returncode == 0, run.stderr[-4000:]
    output = model.output_of("c1")
    assert "Process exited with code 0" in output, output
    assert f"{secret}/file: Permission denied" in output
    assert "the secret" not in output
    assert output.endswith("devnull-ok\nwrote-outside\n"), output
    assert (workspace.outside / "escalated").exists()

    records = relay.read_log(log, {str(workspace.root): "$ROOT"})
    sent = starts(records)
    assert [s["sandboxOverride"] for s in sent] == ["escalatedSandboxWithRestrictions"]
    if kind.impl == "reference" and os.environ.get("EXEC_SERVER_E2E_RECORD") == "1":
        kept = [r for r in records if r["message"].get("method") == "process/start"]
        CONTRACT.write_text("".join(json.dumps(r) + "\n" for r in kept))
    contract = [json.loads(line) for line in CONTRACT.read_text().splitlines()]
    assert sent == starts(contract)
