"""The ``capabilityRoots/discoverV1`` fixture tree and requests, shared by the test that
compares our answers with the reference's recording (``tests/data/discover_v1_reference.json``)
and by the script that makes that recording against the reference binary:

    .venv/bin/python -m tests.discovery_cases record   # needs codex 0.169

Paths in answers are written relative to the tree (``ROOT``), as in ``tests/walk_cases.py``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from .support import Client, write_files
from .walk_cases import case_answers, denying_profile, record_tree

RECORDING = Path(__file__).parent / "data" / "discover_v1_reference.json"
METHOD = "capabilityRoots/discoverV1"


def skill(name: str) -> str:
    return f"---\nname: {name}\ndescription: The {name} skill.\n---\n\nDo {name}.\n"


def build_tree(root: Path) -> None:
    """A plugin with declared MCP and apps files, skills with and without metadata, a nested
    plugin (a namespace), a plain skills folder, plugins with bad declarations, too big and
    undecodable files, a hidden skill, a symlinked skill folder and a denied folder."""
    manifest = {"name": "demo", "mcpServers": "./config/mcp.json", "apps": "./apps.json"}
    write_files(
        root / "plugin",
        {
            ".codex-plugin/plugin.json": json.dumps(manifest),
            ".claude-plugin/plugin.json": json.dumps({"name": "claude-twin"}),
            "config/mcp.json": '{"mcpServers": {}}',
            "apps.json": '{"apps": {}}',
            ".mcp.json": '{"unused": true}',
            "skills/alpha/SKILL.md": skill("alpha"),
            "skills/alpha/agents/openai.yaml": "interface:\n  display_name: Alpha\n",
            "skills/beta/SKILL.md": skill("beta"),
            "nested/.cursor-plugin/plugin.json": json.dumps({"name": "inner"}),
            "nested/skills/gamma/SKILL.md": skill("gamma"),
            ".hidden/skills/delta/SKILL.md": skill("delta"),
            "denied/skills/eps/SKILL.md": skill("eps"),
        },
    )
    (root / "plugin" / "skills" / "linked").symlink_to(root / "plugin" / "nested" / "skills")
    write_files(
        root / "plain",
        {
            "one/SKILL.md": skill("one"),
            "two/deeper/SKILL.md": skill("two"),
            "big/SKILL.md": "x" * (1024 * 1024 + 1),
            "bad/SKILL.md": b"---\nname: bad\n\xff\xfe\n",
        },
    )
    write_files(
        root / "inline",
        {
            ".claude-plugin/plugin.json": json.dumps(
                {"mcpServers": {"x": {"command": "y"}}, "apps": "apps.json"}
            ),
            ".mcp.json": "{}",
            "apps.json": "{}",
        },
    )
    write_files(
        root / "escape",
        {".codex-plugin/plugin.json": json.dumps({"mcpServers": "./../x.json", "apps": "./"})},
    )
    write_files(root / "broken", {".codex-plugin/plugin.json": "{not json", ".mcp.json": "{}"})
    (root / "afile").write_text("not a directory")


def cases(root: Path) -> dict[str, dict[str, Any]]:
    """Each request by name (params of ``capabilityRoots/discoverV1``)."""

    def at(root_id: str, name: str, **extra: Any) -> dict[str, Any]:
        return {"id": root_id, "path": f"file://{root / name}", **extra}

    denied = denying_profile(root, root / "plugin" / "denied")
    return {
        "everything": {
            "roots": [
                at("plugin", "plugin"),
                at("plain", "plain"),
                at("inline", "inline"),
                at("escape", "escape"),
                at("broken", "broken"),
                at("missing", "missing"),
                at("file", "afile"),
            ]
        },
        "inside_a_plugin": {"roots": [at("skills", "plugin/skills"), at("deep", "plugin/nested")]},
        "sandboxed": {"roots": [at("plugin", "plugin", sandbox=denied)]},
        "empty": {"roots": []},
        "too_many": {"roots": [at(f"r{index}", "plain") for index in range(129)]},
        "no_id": {"roots": [{"path": f"file://{root}"}]},
        "plain_path": {"roots": [{"id": "p", "path": str(root / "plain")}]},
    }


async def answers(client: Client, root: Path) -> dict[str, Any]:
    """Every case's answer (``{"result": ...}`` or ``{"error": [code, message]}``)."""
    return await case_answers(client, METHOD, cases(root), root)


if __name__ == "__main__" and sys.argv[1:] == ["record"]:
    asyncio.run(record_tree(RECORDING, build_tree, answers))
