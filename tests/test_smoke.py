from __future__ import annotations

from .support import Client


async def test_echo_round_trip(client: Client) -> None:
    events = await client.run("p1", ["sh", "-c", "echo hi; echo err >&2; exit 3"])
    assert events.data("stdout") == b"hi\n"
    assert events.data("stderr") == b"err\n"
    assert events.exited is not None and events.exited["exitCode"] == 3
    assert events.closed is not None and events.closed["seq"] == 4
    read = await client.read("p1")
    assert read["nextSeq"] == 3 and read["exited"] and read["closed"]
