"""``capabilities/discoverV2``: the executor's skills and plugins, the same answers as the
reference's recording on the same trees (``tests/discovery_v2_cases.py`` makes both), our
server run with each tree's ``CODEX_HOME`` and ``HOME``."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

from .codex.reference import listening
from .discovery_v2_cases import RECORDING, answer, answers, environment, tree_skills
from .support import Client, server_command
from .walk_cases import denying_profile


@contextlib.asynccontextmanager
async def ours(env: dict[str, str]) -> AsyncIterator[Client]:
    async with listening(server_command(), env) as url, Client.connect(url) as client:
        await client.initialize()
        yield client


async def test_answers_equal_the_reference_recording(tmp_path: Path) -> None:
    recorded = json.loads(RECORDING.read_text())
    found = await answers(ours, tmp_path)
    assert found.keys() == recorded.keys()
    for name in recorded:
        assert found[name] == recorded[name], name
    skills = recorded["skills"]["result"]
    assert [s["name"] for s in skills["skills"]][:3] == ["sys", "atroot", "deep5"]  # path order
    assert "deep7" not in json.dumps(skills)  # deeper than 6 levels
    assert skills["warnings"] == [
        "some capability metadata could not be loaded; discovery may be incomplete"
    ]
    versions = {p["id"]: p["version"] for p in recorded["plugins"]["result"]["plugins"]}
    assert versions == {
        "loc@mkt": "local",
        "plug@mkt": "2.0.0",
        "renamed@mkt": "1.0",
        "ver@mkt": "1.10.0",
    }


async def test_discovery_honours_the_request_profile(tmp_path: Path) -> None:
    """A skill folder the profile hides is not read (the reference's sandboxed discovery
    cannot run here: its helper, codex-linux-sandbox, is not installed beside it)."""
    root = tmp_path / "skills"
    for folder in ("ch", "home"):
        (root / folder).mkdir(parents=True)
    tree_skills(root)
    hidden = denying_profile(root, root / "home/.agents/skills/dup")
    async with ours(environment(root)) as client:
        open_answer = await answer(client, root)
        sandboxed = await answer(client, root, hidden)
    paths = [s["path"] for s in sandboxed["result"]["skills"]]
    assert "ROOT/home/.agents/skills/dup/SKILL.md" not in paths
    assert [s["path"] for s in open_answer["result"]["skills"]] == [
        *paths[:-1],
        "ROOT/home/.agents/skills/dup/SKILL.md",
        paths[-1],
    ]
