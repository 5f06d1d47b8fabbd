"""Bad params to ``process/*``: -32602 (or the documented code), and the connection stays usable."""

from __future__ import annotations

from typing import Any

import pytest

from .support import Client
from .test_process_helpers import error_of, no_stray_children

__all__ = ["no_stray_children"]

START = {"processId": "p", "argv": ["true"], "cwd": "/tmp", "env": {}, "tty": False}


def _start(**changes: Any) -> dict[str, Any]:
    params = {**START, **changes}
    return {k: v for k, v in params.items() if v is not _DROP}


_DROP = object()

INVALID_PARAMS: list[tuple[str, Any]] = [
    # non-object params
    ("process/start", None),
    ("process/start", []),
    ("process/start", "p"),
    ("process/start", 1),
    ("process/read", None),
    ("process/read", ["p"]),
    ("process/write", None),
    ("process/write", True),
    ("process/terminate", None),
    ("process/terminate", "p"),
    ("process/signal", None),
    ("process/signal", []),
    # missing fields
    ("process/start", _start(processId=_DROP)),
    ("process/start", _start(argv=_DROP)),
    ("process/start", _start(cwd=_DROP)),
    ("process/start", _start(env=_DROP)),
    ("process/start", _start(tty=_DROP)),
    ("process/read", {}),
    ("process/read", {"afterSeq": 1}),
    ("process/write", {"processId": "p"}),
    ("process/write", {"chunk": "eA=="}),
    ("process/terminate", {}),
    ("process/signal", {"processId": "p"}),
    ("process/signal", {"signal": "TERM"}),
    # wrong types
    ("process/start", _start(processId=1)),
    ("process/start", _start(argv="true")),
    ("process/start", _start(argv=[1])),
    ("process/start", _start(argv=[None])),
    ("process/start", _start(cwd=["/tmp"])),
    ("process/start", _start(env=[])),
    ("process/start", _start(env={"A": 1})),
    ("process/start", _start(env={"A": None})),
    ("process/start", _start(tty="yes")),
    ("process/start", _start(tty=1)),
    ("process/start", _start(pipeStdin="no")),
    ("process/start", _start(arg0=1)),
    ("process/start", _start(envPolicy="core")),
    ("process/start", _start(envPolicy=[])),
    ("process/read", {"processId": 1}),
    ("process/read", {"processId": "p", "afterSeq": "1"}),
    ("process/read", {"processId": "p", "afterSeq": 1.5}),
    ("process/read", {"processId": "p", "maxBytes": True}),
    ("process/read", {"processId": "p", "waitMs": "10"}),
    ("process/write", {"processId": "p", "chunk": 1}),
    ("process/write", {"processId": "p", "chunk": None}),
    ("process/write", {"processId": "p", "chunk": "eA==", "writeId": 5}),
    ("process/terminate", {"processId": None}),
    ("process/signal", {"processId": "p", "signal": 1.5}),
    # negative and out-of-range numbers
    ("process/read", {"processId": "p", "afterSeq": -1}),
    ("process/read", {"processId": "p", "maxBytes": -1}),
    ("process/read", {"processId": "p", "waitMs": -1}),
    ("process/read", {"processId": "p", "afterSeq": 2**64}),
    ("process/read", {"processId": "p", "waitMs": 10**30}),
    # invalid base64
    ("process/write", {"processId": "p", "chunk": "!!!!"}),
    ("process/write", {"processId": "p", "chunk": "eA="}),  # bad padding
    ("process/write", {"processId": "p", "chunk": "e"}),
    ("process/write", {"processId": "p", "chunk": "eA==\n"}),
    ("process/write", {"processId": "p", "chunk": "é"}),
    # values the handlers refuse
    ("process/start", _start(argv=[])),
    ("process/start", _start(cwd="relative")),
    ("process/write", {"processId": "p", "chunk": "eA==", "writeId": ""}),
    ("process/signal", {"processId": "p", "signal": "NOPE"}),
]


@pytest.mark.parametrize(("method", "params"), INVALID_PARAMS)
async def test_invalid_params(client: Client, method: str, params: Any) -> None:
    # A live process "p", so a check that ran too late would find something to act on.
    await client.start("p", ["cat"], pipeStdin=True)
    reply = await client.request(method, params)
    assert "error" in reply, reply
    assert reply["error"]["code"] == -32602, reply
    assert isinstance(reply["error"]["message"], str) and reply["error"]["message"]
    assert set(reply) == {"id", "error"}
    # Nothing happened to "p", and the connection still works.
    assert await client.write("p", b"still here\n") == "accepted"
    assert await client.wait_output("p", b"still here\n") == b"still here\n"
    assert (await client.read("p"))["exited"] is False
    await client.call("process/terminate", {"processId": "p"})
    await client.wait_closed("p")


@pytest.mark.parametrize(("method", "params"), INVALID_PARAMS[:12])
async def test_params_are_checked_before_the_handshake(method: str, params: Any) -> None:
    from .support import running_server

    async with running_server() as (_, url), Client.connect(url) as client:
        reply = await client.request(method, params)
        assert reply["error"]["code"] == -32602


async def test_huge_numbers_within_range_are_fine(client: Client) -> None:
    await client.run("h", ["true"])
    read = await client.read("h", afterSeq=2**63 - 1, maxBytes=2**63 - 1, waitMs=0)
    assert read["chunks"] == [] and read["nextSeq"] == 3


async def test_unknown_fields_and_nulls_are_ignored(client: Client) -> None:
    params = _start(
        processId="x",
        argv=["echo", "ok"],
        env={"PATH": "/usr/bin:/bin"},
        envPolicy=None,
        arg0=None,
        sandbox=None,
        somethingNew={"a": 1},
    )
    assert (await client.call("process/start", params))["processId"] == "x"
    await client.wait_closed("x")
    read = await client.call(
        "process/read",
        {"processId": "x", "afterSeq": None, "maxBytes": None, "waitMs": None, "extra": 1},
    )
    assert read["chunks"][0]["chunk"] == "b2sK"


async def test_error_replies_keep_string_ids(client: Client) -> None:
    reply = await client.request("process/read", {"processId": "p", "afterSeq": -1}, id="s-1")
    assert reply["id"] == "s-1" and reply["error"]["code"] == -32602


async def test_a_refused_start_leaves_no_trace(client: Client) -> None:
    error = await error_of(client, "process/start", _start(processId="gone", argv=[]))
    assert error["code"] == -32602
    error = await error_of(client, "process/read", {"processId": "gone"})
    assert error == {"code": -32600, "message": "unknown process id gone"}
