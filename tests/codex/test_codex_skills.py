"""A repository's skills (``.agents/skills/<name>/SKILL.md``) reach the model through the
executor: `codex exec` 0.169 finds them with ``fs/walk`` and reads each ``SKILL.md``.

The executor runs over stdio behind ``relay.py``, which records what codex and the executor
said to each other. The reference's recording, with the run's folders written ``$ROOT`` and
``$HOME``, is the contract (``tests/data/codex_skills_reference.jsonl``; made again with
``EXEC_SERVER_E2E_RECORD=1`` on a reference run): codex must ask ours the same ``fs/*``
questions and get the same answers, and the skill must reach the model with no "failed to
walk skills root".
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from . import relay
from .harness import Executor, ExecutorKind, Workspace, run_turn

pytestmark = pytest.mark.timeout(240)

CONTRACT = Path(__file__).parent.parent / "data" / "codex_skills_reference.jsonl"
SKILL_MD = "---\nname: hello-skill\ndescription: Greets in the e2e-skill-marker way.\n---\n\nHi.\n"
LISTED = "- hello-skill: Greets in the e2e-skill-marker way."
"""How codex 0.169 lists the skill to the model (its developer instructions)."""

COMPARED = ("fs/walk", "fs/readFile", "fs/canonicalize", "fs/getMetadata")
VOLATILE = ("createdAtMs", "modifiedAtMs")


def exchanges(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Each compared request codex sent (method and params, as JSON) with the answer."""
    requests = {
        r["message"]["id"]: r["message"]
        for r in records
        if r["from"] == "codex" and r["message"].get("method") in COMPARED
    }
    answered: dict[str, Any] = {}
    for record in records:
        message = record["message"]
        if record["from"] != "executor" or message.get("id") not in requests:
            continue
        request = requests[message["id"]]
        if "error" in message:  # ours adds the path the OS named to its texts: cut here
            error = message["error"]
            answer = {"code": error["code"], "message": error["message"].split(": ")[0]}
        else:
            answer = {k: v for k, v in message["result"].items() if k not in VOLATILE}
        key = json.dumps([request["method"], request["params"]], sort_keys=True)
        answered[key] = answer
    return answered


def test_repository_skills_reach_the_model(
    codex: Path, workspace: Workspace, kind: ExecutorKind
) -> None:
    skill = workspace.work / ".agents" / "skills" / "hello-skill"
    skill.mkdir(parents=True)
    (skill / "SKILL.md").write_text(SKILL_MD)
    log = workspace.root / "relay.jsonl"
    command = relay.recording_command(kind.command(codex, "stdio"), log)
    executor = Executor(kind, "unused", stdio_command=command)
    model, run = run_turn(codex, workspace, executor, [], extra_env={"RUST_LOG": "error"})
    assert run.returncode == 0, run.stderr[-4000:]
    assert "failed to walk skills root" not in run.stderr
    instructions = json.dumps(model.requests[0])
    assert json.dumps(LISTED)[1:-1] in instructions

    records = relay.read_log(log, {str(workspace.root): "$ROOT", str(Path.home()): "$HOME"})
    walks = [r["message"] for r in records if r["message"].get("method") == "fs/walk"]
    assert len(walks) == 1 and walks[0]["params"]["path"] == "file://$ROOT/work/.agents/skills"
    if kind.impl == "reference" and os.environ.get("EXEC_SERVER_E2E_RECORD") == "1":
        CONTRACT.write_text("".join(json.dumps(r) + "\n" for r in records))
    contract = [json.loads(line) for line in CONTRACT.read_text().splitlines()]
    assert exchanges(records) == exchanges(contract)
    walk_answer = next(
        answer for key, answer in exchanges(contract).items() if key.startswith('["fs/walk"')
    )
    assert walk_answer == {
        "entries": [
            {"path": "file://$ROOT/work/.agents/skills/hello-skill", "kind": "directory"},
            {"path": "file://$ROOT/work/.agents/skills/hello-skill/SKILL.md", "kind": "file"},
        ],
        "errors": [],
        "truncated": False,
    }
