"""The ``capabilities/discoverV2`` fixture trees (a ``CODEX_HOME`` and a ``HOME`` each),
shared by the test that compares our answers with the reference's recording
(``tests/data/discover_v2_reference.json``) and by the script that makes it:

    .venv/bin/python -m tests.discovery_v2_cases record   # needs codex 0.169

Each server runs with the tree's ``CODEX_HOME`` and ``HOME``; paths are written ``ROOT``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from .support import Client, write_files
from .walk_cases import outcome, relative, save_recording

RECORDING = Path(__file__).parent / "data" / "discover_v2_reference.json"
METHOD = "capabilities/discoverV2"


def skill(name: str | None, description: str | None, extra: str = "") -> str:
    lines = ["---"]
    lines += [f"name: {name}"] if name is not None else []
    lines += [f"description: {description}"] if description is not None else []
    return "\n".join([*lines, *([extra] if extra else []), "---", "", "Body."]) + "\n"


OPENAI_YAML = """interface:
  display_name: Full
  short_description: not used
policy:
  allow_implicit_invocation: false
  products: [codex]
dependencies:
  tools:
    - type: env_var
      value: FOO
    - type: mcp
      value: srv
      transport: streamable_http
      url: http://127.0.0.1:9/mcp
"""


def tree_skills(root: Path) -> None:
    """Skills in both roots: sorting, fallbacks, limits, metadata, failures."""
    home_skills, agent_skills = "ch/skills", "home/.agents/skills"
    write_files(
        root,
        {
            f"{home_skills}/zeta/SKILL.md": skill("aaa-first", '"  spaced\n  out  "'),
            f"{home_skills}/alpha/SKILL.md": skill("zzz-last", "d"),
            f"{home_skills}/noname/SKILL.md": skill(None, "no name here"),
            f"{home_skills}/full/SKILL.md": skill(
                "full", "d", "metadata:\n  short-description: s x"
            ),
            f"{home_skills}/full/agents/openai.yaml": OPENAI_YAML,
            f"{home_skills}/badyaml/SKILL.md": skill("badyaml", "d"),
            f"{home_skills}/badyaml/agents/openai.yaml": ": : :\n  - [\n",
            f"{home_skills}/.system/sys/SKILL.md": skill("sys", "d"),
            f"{home_skills}/SKILL.md": skill("atroot", "d"),
            f"{home_skills}/a/b/c/d/e/deep5/SKILL.md": skill("deep5", "d"),
            f"{home_skills}/a/b/c/d/e/f/g/deep7/SKILL.md": skill("deep7", "d"),
            f"{home_skills}/crlf/SKILL.md": "---\r\nname: crlf\r\ndescription: d\r\n---\r\n",
            f"{agent_skills}/dup/SKILL.md": skill("zzz-last", "dup in agents"),
            f"{agent_skills}/nodesc/SKILL.md": skill("nodesc", None),
            f"{agent_skills}/long/SKILL.md": skill("n" * 65, "d"),
            f"{agent_skills}/nofront/SKILL.md": "no front matter\n",
            "home/outside/linked/SKILL.md": skill("linked", "d"),
        },
    )
    (root / agent_skills / "linked").symlink_to(root / "home/outside/linked")


def tree_plugins(root: Path) -> None:
    """Installed plugins: version choice, names, files, skills, failures."""
    cache = "ch/plugins/cache"
    write_files(
        root,
        {
            f"{cache}/mkt/plug/1.0.0/.codex-plugin/plugin.json": '{"name":"plug"}',
            f"{cache}/mkt/plug/2.0.0/.codex-plugin/plugin.json": json.dumps(
                {"name": "plug", "version": "2.0.0", "interface": {"displayName": "Pretty"}}
            ),
            f"{cache}/mkt/plug/2.0.0/.mcp.json": '{"mcpServers":{}}',
            f"{cache}/mkt/plug/2.0.0/skills/ps/SKILL.md": skill("ps", "plugin skill"),
            f"{cache}/mkt/plug/2.0.0/other/SKILL.md": skill(None, "o"),
            f"{cache}/mkt/plug/2.0.0/bad/SKILL.md": "nope\n",
            f"{cache}/mkt/loc/local/.claude-plugin/plugin.json": '{"name":"loc"}',
            f"{cache}/mkt/loc/9.9.9/.codex-plugin/plugin.json": '{"name":"loc"}',
            f"{cache}/mkt/ver/1.9.0/.codex-plugin/plugin.json": '{"name":"ver"}',
            f"{cache}/mkt/ver/1.10.0/.codex-plugin/plugin.json": '{"name":"ver"}',
            f"{cache}/mkt/renamed/1.0/.codex-plugin/plugin.json": '{"name":"other-name"}',
            f"{cache}/mkt/renamed/1.0/skills/r/SKILL.md": skill("r", "d"),
            f"{cache}/aaa/nomanifest/1.0/README": "",
            f"{cache}/aaa/badjson/1.0/.codex-plugin/plugin.json": "not json",
        },
    )


TREES: dict[str, Callable[[Path], None]] = {"skills": tree_skills, "plugins": tree_plugins}


def environment(root: Path) -> dict[str, str]:
    return {"CODEX_HOME": str(root / "ch"), "HOME": str(root / "home")}


async def answer(client: Client, root: Path, sandbox: Any = None) -> Any:
    (root / "cwd").mkdir(exist_ok=True)
    params = {"cwd": f"file://{root}/cwd", "sandbox": sandbox}
    return relative(await outcome(client, METHOD, params), f"file://{root}")


Starter = Callable[[dict[str, str]], AbstractAsyncContextManager[Client]]


async def answers(start: Starter, place: Path) -> dict[str, Any]:
    """Each tree's answer from a server ``start(env)`` gives."""
    found = {}
    for name, build in TREES.items():
        root = place / name
        for folder in ("ch", "home"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        build(root)
        async with start(environment(root)) as client:
            found[name] = await answer(client, root)
    return found


async def _record() -> None:
    from .codex.reference import reference_client

    with tempfile.TemporaryDirectory(dir=os.environ.get("WALK_TREE_DIR")) as place:
        found = await answers(reference_client, Path(place))
    save_recording(RECORDING, found)


if __name__ == "__main__" and sys.argv[1:] == ["record"]:
    asyncio.run(_record())
