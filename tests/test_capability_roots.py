"""``capabilityRoots/discoverV1``: the same answers as the reference's recording on the same
tree (``tests/discovery_cases.py`` makes both)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .discovery_cases import RECORDING, answers, build_tree
from .support import Client
from .walk_cases import tree_in


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return tree_in(tmp_path, build_tree)


def comparable(answer: dict[str, Any]) -> Any:
    """-32602 texts are serde's in the reference and msgspec's here: only the code counts."""
    if "error" in answer and answer["error"][0] == -32602:
        return {"error": -32602}
    return answer


async def test_answers_equal_the_reference_recording(client: Client, tree: Path) -> None:
    recorded = json.loads(RECORDING.read_text())
    ours = await answers(client, tree)
    # Part A §A1: every path may be a plain absolute path as well as a file:// URI
    plain = ours.pop("plain_path")["result"]["roots"][0]
    assert [s["instructions"]["path"] for s in plain["skills"]] == [
        "ROOT/plain/one/SKILL.md",
        "ROOT/plain/two/deeper/SKILL.md",
    ]
    recorded.pop("plain_path")
    assert set(ours) == set(recorded)
    for name in recorded:
        assert comparable(ours[name]) == comparable(recorded[name]), name
