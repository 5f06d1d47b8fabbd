"""The executor's own skills reach the model (codex 0.169's ``capabilityDiscoveryV2``): with
``[features] executor_capability_discovery_v2 = true`` codex calls ``capabilities/discoverV2``
once per session and offers the skills the executor found in its own ``$CODEX_HOME/skills``
and ``~/.agents/skills``, which codex's side does not have.

The reference's recording of the call and its answer (``tests/data/codex_discovery_reference.jsonl``,
made again with ``EXEC_SERVER_E2E_RECORD=1`` on a reference run) is the contract: codex must ask
ours the same and get the same answer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from . import relay
from .harness import Executor, ExecutorKind, Workspace, run_codex, write_config
from .model import ScriptedModel

pytestmark = pytest.mark.timeout(240)

CONTRACT = Path(__file__).parent.parent / "data" / "codex_discovery_reference.jsonl"
SKILL = "---\nname: executor-skill\ndescription: Lives only on the executor e2e-v2-marker.\n---\n"
LISTED = "- executor-skill: Lives only on the executor e2e-v2-marker."


def discovery(records: list[dict[str, Any]]) -> list[Any]:
    """Each discoverV2 request codex sent, with the executor's answer."""
    asked = {
        r["message"]["id"]: r["message"]["params"]
        for r in records
        if r["from"] == "codex" and r["message"].get("method") == "capabilities/discoverV2"
    }
    return [
        [asked[r["message"]["id"]], r["message"].get("result", r["message"].get("error"))]
        for r in records
        if r["from"] == "executor" and r["message"].get("id") in asked
    ]


def test_the_executors_skills_reach_the_model(
    codex: Path, workspace: Workspace, kind: ExecutorKind
) -> None:
    executor_home = workspace.root / "executor-home"
    skill = executor_home / "codex" / "skills" / "executor-skill"
    skill.mkdir(parents=True)
    (skill / "SKILL.md").write_text(SKILL)
    log = workspace.root / "relay.jsonl"
    env = {"CODEX_HOME": str(executor_home / "codex"), "HOME": str(executor_home)}
    command = relay.recording_command(kind.command(codex, "stdio"), log, env)
    executor = Executor(kind, "unused", stdio_command=command)
    with ScriptedModel([]) as model:
        write_config(workspace.home, model.base_url)
        with open(workspace.home / "config.toml", "a", encoding="utf-8") as config:
            config.write("\n[features]\nexecutor_capability_discovery_v2 = true\n")
        run = run_codex(
            codex, workspace, executor, sandbox="read-only", extra_env={"RUST_LOG": "error"}
        )
    assert run.returncode == 0, run.stderr[-4000:]
    assert json.dumps(LISTED)[1:-1] in json.dumps(model.requests[0])

    records = relay.read_log(log, {str(workspace.root): "$ROOT"})
    exchanged = discovery(records)
    assert len(exchanged) == 1
    if kind.impl == "reference" and os.environ.get("EXEC_SERVER_E2E_RECORD") == "1":
        kept = [r for r in records if "capabilities/discoverV2" in json.dumps(r)]
        answers = [
            r for r in records if r["from"] == "executor" and "discoveryRoot" in json.dumps(r)
        ]
        CONTRACT.write_text("".join(json.dumps(r) + "\n" for r in kept + answers))
    contract = [json.loads(line) for line in CONTRACT.read_text().splitlines()]
    assert exchanged == discovery(contract)
