"""Fixtures of the end-to-end suite: the codex binary, a run's folders, one executor."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import (
    OUR_SERVER,
    Executor,
    ExecutorKind,
    Workspace,
    install_codex,
    start_executor,
)

EXECUTORS = [
    ExecutorKind(impl, transport) for impl in ("reference", "ours") for transport in ("ws", "stdio")
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Sandbox scenarios against our server need bubblewrap to run here: without it the
    server refuses a restricted profile (as it must), so there is nothing to compare."""
    from exec_server.sandbox.bwrap import support

    if support().usable:
        return
    for item in items:
        callspec = getattr(item, "callspec", None)
        kind = callspec.params.get("executor_kind") if callspec else None
        if (
            isinstance(kind, ExecutorKind)
            and kind.impl == "ours"
            and item.get_closest_marker("sandbox")
        ):
            item.add_marker(
                pytest.mark.skip(reason=f"bubblewrap cannot run here: {support().reason}")
            )


@pytest.fixture(scope="session")
def codex() -> Path:
    """codex 0.169.0, installed by ../shared/peer/install-codex.sh; skips when that fails."""
    path, why = install_codex()
    if path is None:
        pytest.skip(why)
    return path


def _skip_reference_when_off(impl: str) -> None:
    if impl == "reference" and os.environ.get("EXEC_SERVER_E2E_REFERENCE", "1") == "0":
        pytest.skip("EXEC_SERVER_E2E_REFERENCE=0: runs against the reference skipped")


@pytest.fixture(params=EXECUTORS, ids=lambda kind: kind.id)
def executor_kind(request: pytest.FixtureRequest) -> ExecutorKind:
    kind: ExecutorKind = request.param
    _skip_reference_when_off(kind.impl)
    if kind.impl == "ours" and not OUR_SERVER.exists():
        pytest.fail(f"{OUR_SERVER} is missing: run `make test` (it installs .venv)")
    return kind


@pytest.fixture(params=["reference", "ours"])
def kind(request: pytest.FixtureRequest) -> ExecutorKind:
    """Each implementation as a stdio executor (the scenarios that start it themselves,
    behind :mod:`relay`)."""
    _skip_reference_when_off(request.param)
    return ExecutorKind(request.param, "stdio")


@pytest.fixture
def workspace() -> Iterator[Workspace]:
    with Workspace.create() as created:
        yield created


@pytest.fixture
def executor(executor_kind: ExecutorKind, codex: Path) -> Iterator[Executor]:
    with start_executor(executor_kind, codex) as started:
        yield started
