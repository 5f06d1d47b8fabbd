"""Shell snapshots through the real codex (``shellSnapshotV2``): with ``[features]
shell_snapshot_v2 = true`` and ``login`` commands, codex sends ``shellSnapshot`` with each
``bash -lc`` and the executor's ``.bash_profile`` (counting its runs) is sourced once for three
commands, its variables and functions present each time, on both servers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from . import relay
from .harness import Executor, ExecutorKind, Workspace, run_codex, write_config
from .model import ScriptedModel, Turn, function_call

pytestmark = pytest.mark.timeout(240)

PROFILE = 'echo ran >> "$HOME/profile-runs"\nexport FOO=from-profile\nf() { echo fn-ok; }\n'


def test_the_profile_runs_once_for_three_commands(
    codex: Path, workspace: Workspace, kind: ExecutorKind
) -> None:
    executor_home = workspace.root / "executor-home"
    executor_home.mkdir()
    (executor_home / ".bash_profile").write_text(PROFILE)
    log = workspace.root / "relay.jsonl"
    env = {"HOME": str(executor_home), "SHELL": "/bin/bash"}
    command = relay.recording_command(kind.command(codex, "stdio"), log, env)
    executor = Executor(kind, "unused", stdio_command=command)
    turns: list[Turn] = [
        [function_call(f"c{n}", "exec_command", cmd="echo $FOO; f", login=True)] for n in range(3)
    ]
    with ScriptedModel(turns) as model:
        write_config(workspace.home, model.base_url)
        with open(workspace.home / "config.toml", "a", encoding="utf-8") as config:
            config.write("\n[features]\nshell_snapshot_v2 = true\n")
        run = run_codex(
            codex,
            workspace,
            executor,
            sandbox="danger-full-access",
            extra_env={"RUST_LOG": "error"},
        )
    assert run.returncode == 0, run.stderr[-4000:]
    for n in range(3):
        assert model.output_of(f"c{n}").endswith("from-profile\nfn-ok\n"), model.output_of(f"c{n}")
    assert (executor_home / "profile-runs").read_text().count("ran") == 1
    records = relay.read_log(log, {})
    sent = relay.sent(records, "process/start")
    assert len(sent) == 3 and all(p["shellSnapshot"]["shell"]["name"] == "bash" for p in sent)
    assert all(p["argv"][:2] == ["/bin/bash", "-lc"] for p in sent), json.dumps(sent[0])[:500]
