"""The handshake end to end over a real WebSocket (PROTOCOL.md Part B §3.2)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from exec_server.methods import METHODS

from .support import PATH_ENV, Client, RpcFailure
from .test_envelope import assert_closed_without_reply, raw_connection, recv_json, send_json

# Valid params for every gated method we know of; methods registered later are picked up
# here as soon as they exist.
SAMPLE_PARAMS: dict[str, dict[str, Any]] = {
    "process/start": {
        "processId": "p",
        "argv": ["true"],
        "cwd": "/tmp",
        "env": PATH_ENV,
        "tty": False,
    },
    "process/read": {"processId": "p"},
    "process/write": {"processId": "p", "chunk": "aGk="},
    "process/terminate": {"processId": "p"},
    "process/signal": {"processId": "p", "signal": "interrupt"},
    "process/closeStdin": {"processId": "p"},
    "process/resize": {"processId": "p", "rows": 24, "cols": 80},
    "process/list": {},
    "fs/readFile": {"path": "/tmp"},
    "fs/writeFile": {"path": "/tmp/x", "dataBase64": ""},
    "fs/createDirectory": {"path": "/tmp"},
    "fs/getMetadata": {"path": "/tmp"},
    "fs/readDirectory": {"path": "/tmp"},
    "fs/remove": {"path": "/tmp/nonexistent-exec-server-test"},
    "fs/copy": {"sourcePath": "/tmp/a", "destinationPath": "/tmp/b", "recursive": False},
    "fs/open": {"handleId": "h", "path": "/tmp/nonexistent-exec-server-test"},
    "fs/readBlock": {"handleId": "h", "offset": 0, "len": 1},
    "fs/writeBlock": {"handleId": "h", "offset": 0, "chunk": "aGk="},
    "fs/close": {"handleId": "h"},
    "http/request": {"method": "GET", "url": "http://127.0.0.1:9/", "requestId": "r"},
    "fs/canonicalize": {"path": "/tmp"},
    "fs/watchMissing": {"watchId": 1, "missing": ["/tmp/nonexistent-exec-server-test"]},
    "environmentConfig/read": {"cwd": "/tmp", "configPaths": [["x"]], "requirementsPaths": []},
    "forward/open": {"streamId": "s", "host": "127.0.0.1", "port": 9},
    "forward/write": {"streamId": "s", "data": "aGk="},
    "forward/credit": {"streamId": "s", "bytes": 1},
    "forward/shutdown": {"streamId": "s"},
    "forward/close": {"streamId": "s"},
}
FAMILIES = {
    "process": "exec",
    "fs": "filesystem",
    "http": "http",
    "environmentConfig": "environment config",
    "forward": "forward",
}
GATED = [name for name in SAMPLE_PARAMS if name in METHODS]


def family_of(method: str) -> str:
    return FAMILIES[method.split("/")[0]]


def test_every_gated_method_is_covered_here() -> None:
    gated = {name for name, m in METHODS.items() if m.family is not None}
    assert gated <= set(SAMPLE_PARAMS), f"add sample params for {gated - set(SAMPLE_PARAMS)}"
    assert {METHODS[name].family for name in gated} <= set(FAMILIES.values())
    assert "process/start" in gated


@pytest.mark.parametrize("method", GATED)
async def test_method_before_initialize_is_refused_with_its_family(
    server_url: str, method: str
) -> None:
    async with Client.connect(server_url) as client:
        reply = await client.request(method, SAMPLE_PARAMS[method])
        assert reply["error"] == {
            "code": -32600,
            "message": f"client must call initialize before using {family_of(method)} methods",
        }


@pytest.mark.parametrize("method", GATED)
async def test_method_before_initialized_is_refused_with_its_family(
    server_url: str, method: str
) -> None:
    async with Client.connect(server_url) as client:
        await client.call("initialize", {"clientName": "tests"})
        reply = await client.request(method, SAMPLE_PARAMS[method])
        assert reply["error"] == {
            "code": -32600,
            "message": f"client must send initialized before using {family_of(method)} methods",
        }
        # Once `initialized` arrives the same call passes the gate.
        await client.notify("initialized")
        reply = await client.request(method, SAMPLE_PARAMS[method])
        assert "initialize" not in reply.get("error", {}).get("message", "")


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("process/start", None),
        ("process/start", {}),
        ("process/start", [1]),
        ("process/start", {**SAMPLE_PARAMS["process/start"], "tty": "no"}),
        ("process/read", {"processId": "p", "afterSeq": -1}),
        ("process/read", {"processId": 5}),
        ("process/write", {"processId": "p", "chunk": "!!"}),
        ("process/terminate", "p"),
    ],
)
async def test_params_are_decoded_before_the_handshake_checks(
    server_url: str, method: str, params: Any
) -> None:
    async with Client.connect(server_url) as client:
        reply = await client.request(method, params)
        assert reply["error"]["code"] == -32602
        await client.call("initialize", {"clientName": "tests"})
        reply = await client.request(method, params)
        assert reply["error"]["code"] == -32602


async def test_initialize_result_has_a_uuid4_session_and_environment_info(
    server_url: str,
) -> None:
    async with Client.connect(server_url) as client:
        result = await client.call("initialize", {"clientName": "tests", "resumeSessionId": None})
        session_id = result["sessionId"]
        assert str(uuid.UUID(session_id)) == session_id
        assert uuid.UUID(session_id).version == 4
        info = result["environmentInfo"]
        assert {"shell", "executorVersion", "cwd", "platformOs"} <= set(info)
        assert info["cwd"].startswith("file:///")


async def test_second_initialize_is_refused(server_url: str) -> None:
    async with Client.connect(server_url) as client:
        first = await client.call("initialize", {"clientName": "tests"})
        reply = await client.request("initialize", {"clientName": "tests"})
        assert reply["error"] == {
            "code": -32600,
            "message": "initialize may only be sent once per connection",
        }
        await client.notify("initialized")
        reply = await client.request("initialize", {"clientName": "tests"})
        assert reply["error"]["message"] == "initialize may only be sent once per connection"
        # Resuming our own (attached) session from the same connection is refused too.
        reply = await client.request(
            "initialize", {"clientName": "tests", "resumeSessionId": first["sessionId"]}
        )
        assert reply["error"]["code"] == -32600
        # The connection and its session keep working.
        events = await client.run("p", ["sh", "-c", "echo still here"])
        assert events.data() == b"still here\n"


async def test_failed_initialize_can_be_retried(server_url: str) -> None:
    async with Client.connect(server_url) as client:
        bogus = str(uuid.uuid4())
        with pytest.raises(RpcFailure) as failure:
            await client.call("initialize", {"clientName": "tests", "resumeSessionId": bogus})
        assert (failure.value.code, failure.value.message) == (
            -32600,
            f"unknown session id {bogus}",
        )
        # Still not initialized: gated methods say so.
        reply = await client.request("process/read", {"processId": "p"})
        assert reply["error"]["message"] == "client must call initialize before using exec methods"
        result = await client.initialize()
        assert result["sessionId"] != bogus
        events = await client.run("p", ["sh", "-c", "echo ok"])
        assert events.data() == b"ok\n"


async def test_initialize_with_bad_params_can_be_retried(server_url: str) -> None:
    async with Client.connect(server_url) as client:
        reply = await client.request("initialize", {"clientName": 5})
        assert reply["error"]["code"] == -32602
        assert "clientName" in reply["error"]["message"]
        result = await client.call("initialize", {"clientName": "tests"})
        assert uuid.UUID(result["sessionId"])


@pytest.mark.parametrize("params", [None, [], "tests", 5, {"resumeSessionId": None}])
async def test_initialize_with_missing_or_non_object_params_is_invalid_params(
    server_url: str, params: Any
) -> None:
    async with Client.connect(server_url) as client:
        reply = await client.request("initialize", params)
        assert reply["error"]["code"] == -32602
        assert reply["error"]["message"]
        # Still usable.
        assert uuid.UUID((await client.call("initialize", {"clientName": "x"}))["sessionId"])


async def test_missing_params_message_names_null(server_url: str) -> None:
    async with Client.connect(server_url) as client:
        reply = await client.request("initialize")
        assert reply["error"]["code"] == -32602
        assert "null" in reply["error"]["message"]


@pytest.mark.parametrize("resume", [5, ["x"], {"id": "x"}, True])
async def test_resume_session_id_of_the_wrong_type_is_invalid_params(
    server_url: str, resume: Any
) -> None:
    async with Client.connect(server_url) as client:
        reply = await client.request("initialize", {"clientName": "x", "resumeSessionId": resume})
        assert reply["error"]["code"] == -32602
        assert "resumeSessionId" in reply["error"]["message"]


async def test_initialized_before_initialize_closes(server_url: str) -> None:
    async with raw_connection(server_url) as ws:
        await send_json(ws, {"method": "initialized", "params": {}})
        await assert_closed_without_reply(ws)


async def test_initialized_after_a_failed_initialize_closes(server_url: str) -> None:
    async with raw_connection(server_url) as ws:
        await send_json(
            ws,
            {
                "id": 1,
                "method": "initialize",
                "params": {"clientName": "x", "resumeSessionId": "nope"},
            },
        )
        assert (await recv_json(ws))["error"]["message"] == "unknown session id nope"
        await send_json(ws, {"method": "initialized"})
        await assert_closed_without_reply(ws)


@pytest.mark.parametrize("params", [None, {}, [1, 2], "anything", 7])
async def test_initialized_accepts_any_params(server_url: str, params: Any) -> None:
    async with Client.connect(server_url) as client:
        await client.call("initialize", {"clientName": "tests"})
        await client.notify("initialized", params)
        reply = await client.request("process/read", {"processId": "nope"})
        assert reply["error"] == {"code": -32600, "message": "unknown process id nope"}


async def test_environment_methods_need_no_handshake(server_url: str) -> None:
    async with Client.connect(server_url) as client:
        assert await client.call("environment/status") == {"status": "ready"}
        assert await client.call("environment/status", {}) == {"status": "ready"}
        info = await client.call("environment/info")
        initialized = await client.call("initialize", {"clientName": "x"})
        # environment/info also tries the sandbox mechanism; initialize does not wait for it
        tried, untried = info.pop("sandbox"), initialized["environmentInfo"].pop("sandbox")
        assert initialized["environmentInfo"] == info
        assert tried["mechanism"] == untried["mechanism"] == "bubblewrap"
        assert untried["available"] is None
        assert tried["available"] is (tried["reason"] is None)


async def test_sessions_of_separate_connections_are_distinct(server_url: str) -> None:
    async with Client.connect(server_url) as a, Client.connect(server_url) as b:
        first = (await a.initialize())["sessionId"]
        second = (await b.initialize())["sessionId"]
        assert first != second
