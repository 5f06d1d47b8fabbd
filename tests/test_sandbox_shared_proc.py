"""A sandbox without its own /proc (a container that masks /proc) is refused unless the
operator accepts it (issue 21), and environment/info says which one this server has.

The masked /proc is played by a bwrap wrapper that fails ``--proc`` as a masking container
does and runs the real bubblewrap otherwise; tests/deploy runs the real thing in podman."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from exec_server.sandbox.bwrap import SHARED_PROC_REASON, probe, support

from .support import Client

pytestmark = pytest.mark.skipif(
    not support().usable, reason=f"bubblewrap cannot run here: {support().reason}"
)


@pytest.fixture
def masking_bwrap(tmp_path: Path) -> str:
    """A bwrap that cannot mount proc, as under podman's or Docker's masked /proc."""
    real = shutil.which("bwrap")
    script = tmp_path / "bwrap"
    script.write_text(
        "#!/bin/sh\n"
        'case " $* " in *" --proc "*)\n'
        '  echo "bwrap: Can\'t mount proc on /newroot/proc: Operation not permitted" >&2\n'
        "  exit 1;;\n"
        "esac\n"
        f'exec {real} "$@"\n'
    )
    script.chmod(0o755)
    return str(script)


def test_no_fresh_proc_is_refused_with_what_to_do(masking_bwrap: str) -> None:
    found = probe(masking_bwrap, shared_proc=False)
    assert not found.usable
    assert found.fresh_proc is False
    assert found.reason == SHARED_PROC_REASON
    assert "--sandbox-shared-proc" in found.reason and "/proc" in found.reason


def test_the_operator_may_accept_a_shared_proc(masking_bwrap: str) -> None:
    found = probe(masking_bwrap, shared_proc=True)
    assert found.usable and found.fresh_proc is False


def test_a_fresh_proc_needs_no_acceptance() -> None:
    found = probe(shared_proc=False)
    assert found.usable and found.fresh_proc is True


async def test_environment_info_reports_fresh_proc(server_url: str) -> None:
    async with Client.connect(server_url) as client:
        sandbox = (await client.call("environment/info"))["sandbox"]
    assert sandbox["available"] is True
    assert sandbox["freshProc"] is True
