"""A fuzzer of every method's params through both real transports (issue 11): no crash, no
hang, every request answered, nothing left running.

Each test starts one real ``exec-server`` (over stdio, or on a loopback WebSocket), opens
one connection, and lets hypothesis send it batches of frames (see ``fuzzing.py``, which
also says what keeps the fuzz from running anything or touching any file of this machine).
After each batch the same connection answers a probe and the server is still running;
after the connection closes, no child the fuzz started is still alive.

The examples are derandomized: CI runs the same ones every time.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings

from exec_server.methods import METHODS

from . import fuzzing
from .fuzzing import Channel, Draft, Ledger, World
from .support import wait_until_sync

EXAMPLES_PER_METHOD = int(os.environ.get("FUZZ_EXAMPLES", "5"))
"""Examples led by each method (``process/start``: three times as many, as the others act
on what it starts): 25 x 5 + 15 = 140 per transport, and the explicit examples of
``fuzzing.explicit_batches``; a few seconds on the 2-core development machine. Set ``FUZZ_EXAMPLES`` for a longer run with fresh random examples (and
``FUZZ_REPORT=1``, with ``-s``, to see what each method answered)."""

WEIGHT = {"process/start": 3}


def _settings(method: str) -> settings:
    return settings(
        max_examples=EXAMPLES_PER_METHOD * WEIGHT.get(method, 1),
        deadline=None,
        derandomize="FUZZ_EXAMPLES" not in os.environ,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
    )


def _fuzz(channel: Channel, world: World, ledger: Ledger) -> None:
    """Run the examples on ``channel``, led by each method in turn; each ends with the
    connection answering a probe."""
    world.session_id = fuzzing.handshake(channel, ledger)
    explicit = fuzzing.explicit_batches(world)

    def one_batch(drafts: list[Draft]) -> None:
        ledger.examples += 1
        fuzzing.populate(world.root)
        for draft in drafts:
            fuzzing.check_safe(draft, world)
        frames = [fuzzing.materialize(d, ledger.next_number()) for d in drafts]
        fuzzing.exchange(channel, frames, ledger)
        fuzzing.record_children(channel.proc, ledger)
        assert channel.proc.poll() is None, "the server exited"

    for method in sorted(METHODS):
        run = given(fuzzing.batches(world, method))(one_batch)
        for batch in explicit.get(method, []):
            run = example(batch)(run)
        _settings(method)(run)()
    sent = set(ledger.methods.values())
    assert set(METHODS) <= sent, f"never sent: {set(METHODS) - sent}"
    if os.environ.get("FUZZ_REPORT"):
        for (method, outcome), count in sorted(ledger.outcomes.items()):
            print(f"{method:28} {outcome:8} {count}")
        print(
            f"examples: {ledger.examples}, answered with id -1: {ledger.malformed}, "
            f"children seen: {len(ledger.children)}"
        )


def _no_tracebacks(stderr: bytes) -> None:
    text = stderr.decode(errors="replace")
    assert "Traceback" not in text and "ERROR" not in text, text[-4000:]


@pytest.mark.timeout(300)  # a hang is reported by the exchange's own 20 s guard first
def test_fuzz_over_stdio(tmp_path: Path) -> None:
    with fuzzing.closed_port() as port:
        world = World(str(tmp_path / "fuzz"), port)
        os.makedirs(world.root)
        channel = fuzzing.StdioChannel(world)
        ledger = Ledger()
        try:
            _fuzz(channel, world, ledger)
            channel.close()  # EOF: the session ends, every child is killed, the server exits
            assert channel.proc.returncode == 0
            assert wait_until_sync(lambda: not fuzzing.living(ledger.children), 15), fuzzing.living(
                ledger.children
            )
            _no_tracebacks(bytes(channel.stderr.text))
        finally:
            if channel.proc.poll() is None:
                channel.proc.kill()
                channel.proc.wait()
            fuzzing.remove_world(world)


@pytest.mark.timeout(300)
def test_fuzz_over_websocket(tmp_path: Path) -> None:
    with fuzzing.closed_port() as port:
        world = World(str(tmp_path / "fuzz"), port)
        os.makedirs(world.root)
        try:
            with fuzzing.websocket_server(world) as (url, proc, stderr):
                channel = fuzzing.WebSocketChannel(url, proc)
                ledger = Ledger()
                try:
                    _fuzz(channel, world, ledger)
                finally:
                    channel.close()
                # --detach-grace 0: the session ends with its connection, its children with it.
                assert wait_until_sync(lambda: not fuzzing.living(ledger.children), 15), (
                    fuzzing.living(ledger.children)
                )
                assert proc.poll() is None, "the server exited"
                # The server still serves new connections.
                fresh = fuzzing.WebSocketChannel(url, proc)
                try:
                    fuzzing.exchange(fresh, [], Ledger())
                finally:
                    fresh.close()
            _no_tracebacks(bytes(stderr.text))
        finally:
            fuzzing.remove_world(world)
