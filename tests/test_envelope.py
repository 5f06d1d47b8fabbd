"""The JSON-RPC envelope end to end over a real WebSocket (PROTOCOL.md Part B §2, §3.4)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from exec_server.methods import METHODS

from .support import PATH_ENV

INITIALIZE = {"id": 1, "method": "initialize", "params": {"clientName": "tests"}}


@contextlib.asynccontextmanager
async def raw_connection(url: str) -> AsyncIterator[ClientConnection]:
    async with connect(url, compression=None, max_size=None) as ws:
        yield ws


async def recv_json(ws: ClientConnection) -> dict[str, Any]:
    message = await asyncio.wait_for(ws.recv(), 10)
    assert isinstance(message, str), "the server always sends text frames"
    decoded = json.loads(message)
    assert isinstance(decoded, dict)
    return decoded


async def send_json(ws: ClientConnection, message: object) -> None:
    await ws.send(json.dumps(message))


async def assert_closed_without_reply(ws: ClientConnection) -> None:
    """The server drops the connection and sends nothing first."""
    with pytest.raises(ConnectionClosed):
        message = await asyncio.wait_for(ws.recv(), 10)
        pytest.fail(f"expected the connection to close, got {message!r}")


async def handshake(ws: ClientConnection) -> str:
    await send_json(ws, INITIALIZE)
    reply = await recv_json(ws)
    await send_json(ws, {"method": "initialized"})
    return str(reply["result"]["sessionId"])


def malformed_prefix(ws: ClientConnection) -> str:
    host, port = ws.local_address[:2]
    return f"failed to parse websocket JSON-RPC message from exec-server websocket {host}:{port}: "


@pytest.mark.parametrize("data", ["not json", "{}", '{"id":1}', "[]", '{"id":1,"method":7}', ""])
async def test_unparseable_input_gets_id_minus_one_and_connection_stays_open(
    server_url: str, data: str
) -> None:
    async with raw_connection(server_url) as ws:
        await ws.send(data)
        reply = await recv_json(ws)
        assert set(reply) == {"id", "error"}
        assert reply["id"] == -1
        assert reply["error"]["code"] == -32600
        assert set(reply["error"]) == {"code", "message"}
        assert reply["error"]["message"].startswith(malformed_prefix(ws))
        assert len(reply["error"]["message"]) > len(malformed_prefix(ws))
        # Still open and usable: the handshake works afterwards.
        await send_json(ws, INITIALIZE)
        assert "sessionId" in (await recv_json(ws))["result"]


async def test_shapeless_object_message_names_the_variant_problem(server_url: str) -> None:
    async with raw_connection(server_url) as ws:
        await ws.send('{"id":1}')
        message = (await recv_json(ws))["error"]["message"]
        assert message == malformed_prefix(ws) + (
            "data did not match any variant of JSON-RPC message"
        )


async def test_many_malformed_messages_in_a_row_are_each_answered(server_url: str) -> None:
    async with raw_connection(server_url) as ws:
        for _ in range(20):
            await ws.send("{")
        replies = [await recv_json(ws) for _ in range(20)]
        assert all(r["id"] == -1 and r["error"]["code"] == -32600 for r in replies)


async def test_no_output_ever_carries_a_jsonrpc_member(server_url: str) -> None:
    async with raw_connection(server_url) as ws:
        await send_json(ws, {"jsonrpc": "2.0", **INITIALIZE})
        received = [await recv_json(ws)]
        await send_json(ws, {"jsonrpc": "2.0", "method": "initialized"})
        await send_json(
            ws,
            {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "process/start",
                "params": {
                    "processId": "p",
                    "argv": ["sh", "-c", "echo out; echo err >&2"],
                    "cwd": "/tmp",
                    "env": PATH_ENV,
                    "tty": False,
                },
            },
        )
        await send_json(ws, {"jsonrpc": "2.0", "id": 3, "method": "no/such"})
        await ws.send("not json")
        while (
            not any(m.get("method") == "process/closed" for m in received)
            or len([m for m in received if "id" in m]) < 4
        ):
            received.append(await recv_json(ws))
    kinds = set()
    for message in received:
        assert "jsonrpc" not in message
        if "method" in message:
            kinds.add("notification")
            assert set(message) == {"method", "params"}
        elif "result" in message:
            kinds.add("result")
            assert set(message) == {"id", "result"}
        else:
            kinds.add("error")
            assert set(message) == {"id", "error"}
            assert set(message["error"]) == {"code", "message"}
    assert kinds == {"notification", "result", "error"}


@pytest.mark.parametrize("request_id", ["1", "", "abc-é", "9223372036854775808", " 7 "])
async def test_string_ids_are_echoed_as_strings(server_url: str, request_id: str) -> None:
    async with raw_connection(server_url) as ws:
        await send_json(ws, {**INITIALIZE, "id": request_id})
        reply = await recv_json(ws)
        assert reply["id"] == request_id
        assert isinstance(reply["id"], str)
        await send_json(ws, {"id": request_id, "method": "no/such"})
        reply = await recv_json(ws)
        assert reply["id"] == request_id and "error" in reply


@pytest.mark.parametrize("request_id", [0, -5, 2**63 - 1, -(2**63)])
async def test_integer_ids_are_echoed_exactly(server_url: str, request_id: int) -> None:
    async with raw_connection(server_url) as ws:
        await ws.send('{"id":' + str(request_id) + ',"method":"no/such"}')
        text = await asyncio.wait_for(ws.recv(), 10)
        assert isinstance(text, str)
        assert json.loads(text)["id"] == request_id
        assert f'"id":{request_id}' in text


@pytest.mark.parametrize(
    "raw_id", ["null", "1.5", "1.0", str(2**63), str(2**64 + 1), str(-(2**63) - 1), "true"]
)
async def test_request_with_invalid_id_is_answered_with_id_minus_one_and_the_connection_stays(
    server_url: str, raw_id: str
) -> None:
    """As 0.169 does (0.128 and the spec read such a request as a notification and close)."""
    async with raw_connection(server_url) as ws:
        await ws.send('{"id":' + raw_id + ',"method":"initialize","params":{"clientName":"x"}}')
        reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert reply["id"] == -1 and reply["error"]["code"] == -32600
        assert reply["error"]["message"].startswith(
            "failed to parse websocket JSON-RPC message from exec-server websocket 127.0.0.1:"
        )
        await ws.send('{"id":1,"method":"initialize","params":{"clientName":"x"}}')
        assert "result" in json.loads(await asyncio.wait_for(ws.recv(), 10))


@pytest.mark.parametrize("raw_id", ["null", "true", "{}", "[1]", "1.5", str(2**64)])
async def test_invalid_ids_after_the_handshake_keep_the_connection(
    server_url: str, raw_id: str
) -> None:
    async with raw_connection(server_url) as ws:
        await handshake(ws)
        await ws.send('{"id":' + raw_id + ',"method":"environment/status"}')
        reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert reply["id"] == -1
        await ws.send('{"id":2,"method":"environment/status"}')
        assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {
            "id": 2,
            "result": {"status": "ready"},
        }


@pytest.mark.parametrize(
    "message",
    [
        {"id": 1, "result": {}},
        {"id": "x", "result": None},
        {"id": 1, "error": {"code": -32600, "message": "no"}},
    ],
)
async def test_client_response_or_error_closes_the_connection(
    server_url: str, message: dict[str, Any]
) -> None:
    async with raw_connection(server_url) as ws:
        await handshake(ws)
        await send_json(ws, message)
        await assert_closed_without_reply(ws)


@pytest.mark.parametrize("method", ["no/such", "initialize", "process/start", "exit"])
async def test_notification_other_than_initialized_closes(server_url: str, method: str) -> None:
    async with raw_connection(server_url) as ws:
        await handshake(ws)
        await send_json(ws, {"method": method, "params": {}})
        await assert_closed_without_reply(ws)


async def test_unknown_notification_before_handshake_closes(server_url: str) -> None:
    async with raw_connection(server_url) as ws:
        await send_json(ws, {"method": "no/such"})
        await assert_closed_without_reply(ws)


async def test_initialized_as_a_request_is_method_not_found(server_url: str) -> None:
    async with raw_connection(server_url) as ws:
        await send_json(ws, INITIALIZE)
        await recv_json(ws)
        await send_json(ws, {"id": 2, "method": "initialized"})
        assert await recv_json(ws) == {
            "error": {
                "code": -32601,
                "message": "exec-server stub does not implement `initialized` yet",
            },
            "id": 2,
        }


@pytest.mark.parametrize("method", ["no/such", "process/kill", "fs/join", "Initialize"])
async def test_unknown_method_is_method_not_found_with_the_reference_text(
    server_url: str, method: str
) -> None:
    async with raw_connection(server_url) as ws:
        # Before the handshake: the method lookup comes first.
        await send_json(ws, {"id": 1, "method": method, "params": {}})
        assert await recv_json(ws) == {
            "error": {
                "code": -32601,
                "message": f"exec-server stub does not implement `{method}` yet",
            },
            "id": 1,
        }
        await handshake(ws)
        await send_json(ws, {"id": 2, "method": method})
        reply = await recv_json(ws)
        assert reply["error"]["code"] == -32601
        # And the connection is still fine.
        await send_json(ws, {"id": 3, "method": "environment/status"})
        assert (await recv_json(ws))["result"] == {"status": "ready"}


async def test_binary_frames_are_read_as_json_and_answered_in_text(server_url: str) -> None:
    async with raw_connection(server_url) as ws:
        await ws.send(json.dumps(INITIALIZE).encode())
        reply = await recv_json(ws)  # asserts a text frame
        assert "sessionId" in reply["result"]
        await ws.send(b'{"method":"initialized"}')
        await ws.send(b'{"id":"b","method":"environment/status"}')
        assert await recv_json(ws) == {"id": "b", "result": {"status": "ready"}}


@pytest.mark.parametrize("data", [b"not json", b"\xff\xfe\x00", b"[]"])
async def test_bad_binary_frames_get_id_minus_one(server_url: str, data: bytes) -> None:
    async with raw_connection(server_url) as ws:
        await ws.send(data)
        reply = await recv_json(ws)
        assert reply["id"] == -1 and reply["error"]["code"] == -32600
        assert reply["error"]["message"].startswith(malformed_prefix(ws))
        await send_json(ws, INITIALIZE)
        assert "result" in await recv_json(ws)


async def test_repeated_initialized_is_harmless(server_url: str) -> None:
    # Regression: a second `initialized` closed the connection; the reference accepts it.
    async with raw_connection(server_url) as ws:
        await handshake(ws)
        await send_json(ws, {"method": "initialized", "params": {"anything": [1]}})
        await send_json(ws, {"id": 2, "method": "process/read", "params": {"processId": "x"}})
        reply = await recv_json(ws)
        assert reply["error"] == {"code": -32600, "message": "unknown process id x"}


async def test_trace_and_unknown_top_level_members_are_ignored(server_url: str) -> None:
    async with raw_connection(server_url) as ws:
        await send_json(
            ws, {**INITIALIZE, "trace": {"traceparent": "00-abc-def-01"}, "extra": {"x": [1]}}
        )
        assert "sessionId" in (await recv_json(ws))["result"]


async def test_replies_keep_working_after_many_requests_in_one_burst(server_url: str) -> None:
    async with raw_connection(server_url) as ws:
        await handshake(ws)
        for i in range(200):
            await send_json(ws, {"id": i, "method": "environment/status"})
        ids = {(await recv_json(ws))["id"] for _ in range(200)}
        assert ids == set(range(200))


BAD_PARAMS: list[object] = [
    None,
    [],
    [1, 2],
    "params",
    "",
    0,
    -1,
    1.5,
    True,
    {},
    {"processId": 5},
    {"processId": None},
    {"processId": ["p"]},
    {"path": 5},
    {"path": "relative/path"},
    {"clientName": {"nested": True}},
    {"resumeSessionId": 7, "clientName": "x"},
    {"handleId": -1, "offset": -5, "len": "x"},
    {"afterSeq": -1, "maxBytes": 1.5, "waitMs": "soon"},
    {"chunk": "!!not base64!!"},
    {"url": 5, "method": None, "requestId": []},
    {"deep": json.loads("[" * 100 + "]" * 100)},
    {"huge": "x" * 100_000},
]


@pytest.mark.parametrize("method", sorted(METHODS))
async def test_bad_params_get_an_error_and_never_break_the_server(
    server_url: str, method: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with raw_connection(server_url) as ws:
        if method != "initialize":
            await handshake(ws)
        for number, params in enumerate(BAD_PARAMS, start=100):
            await send_json(ws, {"id": number, "method": method, "params": params})
            reply = await recv_json(ws)
            while "method" in reply:  # a notification (nothing here should start a process)
                reply = await recv_json(ws)
            assert reply["id"] == number
            if "error" in reply:
                assert reply["error"]["code"] in (-32600, -32602, -32004), (params, reply)
            else:
                # Only methods that take no params may succeed on junk.
                assert METHODS[method].params_type is Any or method.startswith("environment/"), (
                    params,
                    reply,
                )
        # The connection is still usable, and nothing went wrong inside the server.
        await send_json(ws, {"id": "after", "method": "environment/status"})
        assert await recv_json(ws) == {"id": "after", "result": {"status": "ready"}}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
