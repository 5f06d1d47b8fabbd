"""An HTTP MCP server run through the executor (``environment_id``) with its bearer token in
the **executor's** environment (``bearer_token_env_var``): with ``httpHeaderEnvVars`` codex
0.169 sends ``http/request`` headers ``{name: "authorization", value: "Bearer ",
valueEnvVar: "DEMO_TOKEN"}`` and the executor completes them, so the MCP server sees the
executor's token, never codex's, and the token never crosses the wire.

The reference's recording of what codex sent (``tests/data/codex_mcp_reference.jsonl``,
made again with ``EXEC_SERVER_E2E_RECORD=1`` on a reference run) is the contract: codex must
send ours the same header lists.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from . import relay
from .harness import Executor, ExecutorKind, Workspace, run_codex, write_config
from .mcp_server import McpServer
from .model import ScriptedModel

pytestmark = pytest.mark.timeout(240)

CONTRACT = Path(__file__).parent.parent / "data" / "codex_mcp_reference.jsonl"


def header_lists(records: list[dict[str, Any]]) -> list[Any]:
    return [params["headers"] for params in relay.sent(records, "http/request")]


def test_the_mcp_server_gets_the_executors_token(
    codex: Path, workspace: Workspace, kind: ExecutorKind
) -> None:
    log = workspace.root / "relay.jsonl"
    command = relay.recording_command(kind.command(codex, "stdio"), log, {"DEMO_TOKEN": "tok-exec"})
    executor = Executor(kind, "unused", stdio_command=command)
    with McpServer() as mcp, ScriptedModel([]) as model:
        write_config(workspace.home, model.base_url)
        with open(workspace.home / "config.toml", "a", encoding="utf-8") as config:
            config.write(
                f"\n[mcp_servers.demo]\nurl = {json.dumps(mcp.url)}\n"
                'bearer_token_env_var = "DEMO_TOKEN"\nenvironment_id = "e2e"\n'
            )
        run = run_codex(
            codex,
            workspace,
            executor,
            sandbox="danger-full-access",
            extra_env={"DEMO_TOKEN": "tok-client", "RUST_LOG": "error"},
        )
    assert run.returncode == 0, run.stderr[-4000:]
    assert "tools/list" in mcp.methods
    assert mcp.authorizations and set(mcp.authorizations) == {"Bearer tok-exec"}

    records = relay.read_log(log, {mcp.url: "$MCP_URL"})
    assert "tok-exec" not in log.read_text()  # the token stayed on the executor
    sent = header_lists(records)
    assert sent and all(
        {"name": "authorization", "value": "Bearer ", "valueEnvVar": "DEMO_TOKEN"} in headers
        for headers in sent
    )
    if kind.impl == "reference" and os.environ.get("EXEC_SERVER_E2E_RECORD") == "1":
        kept = [r for r in records if "http/request" in json.dumps(r)]
        CONTRACT.write_text("".join(json.dumps(r) + "\n" for r in kept))
    contract = [json.loads(line) for line in CONTRACT.read_text().splitlines()]
    assert sent == header_lists(contract)
