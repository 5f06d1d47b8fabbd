"""The ``capabilityRoots/discoverV1`` fixture tree and requests, shared by the test that
compares our answers with the reference's recording (``tests/data/discover_v1_reference.json``)
and by the script that makes that recording against the reference binary:

    .venv/bin/python -m tests.discovery_cases record   # needs codex 0.169

Paths in answers are written relative to the tree (``ROOT``), as in ``tests/walk_cases.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from .support import Client, RpcFailure
from .walk_cases import denying_profile, relative

RECORDING = Path(__file__).parent / "data" / "discover_v1_reference.json"
METHOD = "capabilityRoots/discoverV1"


def _write(root: Path, files: dict[str, str | bytes]) -> None:
    for name, contents in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(contents, bytes):
            path.write_bytes(contents)
        else:
            path.write_text(contents)


def skill(name: str) -> str:
    return f"---\nname: {name}\ndescription: The {name} skill.\n---\n\nDo {name}.\n"


def build_tree(root: Path) -> None:
    """A plugin with declared MCP and apps files, skills with and without metadata, a nested
    plugin (a namespace), a plain skills folder, plugins with bad declarations, too big and
    undecodable files, a hidden skill, a symlinked skill folder and a denied folder."""
    manifest = {"name": "demo", "mcpServers": "./config/mcp.json", "apps": "./apps.json"}
    _write(
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
    _write(
        root / "plain",
        {
            "one/SKILL.md": skill("one"),
            "two/deeper/SKILL.md": skill("two"),
            "big/SKILL.md": "x" * (1024 * 1024 + 1),
            "bad/SKILL.md": b"---\nname: bad\n\xff\xfe\n",
        },
    )
    _write(
        root / "inline",
        {
            ".claude-plugin/plugin.json": json.dumps(
                {"mcpServers": {"x": {"command": "y"}}, "apps": "apps.json"}
            ),
            ".mcp.json": "{}",
            "apps.json": "{}",
        },
    )
    _write(
        root / "escape",
        {".codex-plugin/plugin.json": json.dumps({"mcpServers": "./../x.json", "apps": "./"})},
    )
    _write(root / "broken", {".codex-plugin/plugin.json": "{not json", ".mcp.json": "{}"})
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
    found: dict[str, Any] = {}
    for name, params in cases(root).items():
        try:
            found[name] = {"result": await client.call(METHOD, params)}
        except RpcFailure as failure:
            found[name] = {"error": [failure.code, failure.message]}
    return relative(found, f"file://{root}")


async def _record() -> None:
    from .codex.reference import reference_client

    with tempfile.TemporaryDirectory(dir=os.environ.get("WALK_TREE_DIR")) as place:
        root = Path(place) / "tree"
        root.mkdir()
        build_tree(root)
        async with reference_client() as reference:
            found = await answers(reference, root)
    RECORDING.write_text(json.dumps(found, indent=1, sort_keys=True) + "\n")
    print(f"recorded {len(found)} answers in {RECORDING}")


if __name__ == "__main__" and sys.argv[1:] == ["record"]:
    asyncio.run(_record())
