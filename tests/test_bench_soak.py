"""The soak's message accounting (bench/soak.py), on a few hundred messages against ours: every
kind of message it sends gets exactly one reply, and the tally finds nothing missing or extra.
The long runs themselves are `python -m bench.soak`; nothing here is timed."""

from __future__ import annotations

import pytest

from bench import servers, soak

pytestmark = pytest.mark.skipif(not servers.OURS.exists(), reason="needs .venv/bin/exec-server")


async def test_every_kind_of_message_is_answered_once() -> None:
    spec = servers.ServerSpec("ours", (str(servers.OURS),), "/tmp", frozenset({"ws"}))
    sizes = soak.SoakSizes(messages=4 * len(soak.DECK), message_conns=2, window=8)
    async with await servers.start_server(spec, "ws") as server:
        metrics = await soak.messages(server, sizes)
    assert metrics["sent"] == metrics["replies"] == sizes.messages
    assert metrics["unanswered"] == metrics["extra_replies"] == 0
    assert metrics["connections_dropped"] == 0
    assert metrics["alive_and_answering"] == 1
    sent = {k.removeprefix("sent_") for k in metrics if k.startswith("sent_")}
    assert sent == {
        "valid",
        "bad_params",
        "unknown_method",
        "malformed",
        "invalid_UTF-8",
        "invalid_id",
    }


async def test_the_tally_finds_missing_doubled_and_stray_replies() -> None:
    flood = soak.Flood(window=8)
    flood.expected = {1: True, 2: True, 3: False, 4: False}  # 3 and 4 may come back as -1
    flood.anon_only = 1
    for reply in (b'{"id":1,"result":{}}', b'{"id":1,"result":{}}', b'{"id":9,"result":{}}'):
        flood.on_message(memoryview(reply))
    flood.on_message(memoryview(b'{"id":3,"error":{"code":-32600,"message":"m"}}'))
    flood.on_message(memoryview(b'{"id":-1,"error":{"code":-32600,"message":"m"}}'))
    tally = flood.tally()
    # 2 never answered; of the two that need -1 (4 and the anonymous one) one came.
    assert tally["unanswered"] == 2
    assert (tally["doubled"], tally["stray"], tally["extra"]) == (1, 1, 2)
