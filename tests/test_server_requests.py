"""Requests from the server to the client (issue 18 B): the sans-I/O pending table, and
``network/policyRequest`` through a real server, a real proxied child and a client that
answers (or does not)."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import msgspec
import pytest

from exec_server import rpc
from exec_server.sandbox.bwrap import support
from exec_server.server_requests import ServerRequestError, ServerRequests

from .support import PATH_ENV, Client, running_server
from .test_network_proxy import decisions, needs_curl, network_proxy


def _request_id(message: bytes) -> int:
    return int(json.loads(message)["id"])


async def test_ids_results_errors_and_late_answers() -> None:
    table = ServerRequests(capacity=2)
    first, answer = table.begin("network/policyRequest", {"x": 1})
    assert json.loads(first) == {"id": 1, "method": "network/policyRequest", "params": {"x": 1}}
    second, failing = table.begin("m", None)
    assert _request_id(second) == 2
    with pytest.raises(ServerRequestError):
        table.begin("m", None)  # the cap
    assert table.settle(rpc.Response(1, result=msgspec.Raw(b'{"ok":true}')))
    assert msgspec.json.decode(await answer) == {"ok": True}
    assert table.settle(rpc.Response(2, error={"code": -32000, "message": "no"}))
    with pytest.raises(ServerRequestError) as caught:
        await failing
    assert caught.value.code == -32000
    assert len(table) == 0
    assert table.settle(rpc.Response(1, result=msgspec.Raw(b"1")))  # late: dropped
    assert not table.settle(rpc.Response(99, result=msgspec.Raw(b"1")))  # never given
    assert not table.settle(rpc.Response("1", result=msgspec.Raw(b"1")))


async def test_given_up_requests_free_their_slot_and_close_fails_the_rest() -> None:
    table = ServerRequests(capacity=1)
    _, answer = table.begin("m", None)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await answer
    assert len(table) == 0
    _, pending = table.begin("m", None)
    table.fail_all()
    with pytest.raises(ServerRequestError):
        await pending
    with pytest.raises(ServerRequestError):
        table.begin("m", None)


def test_client_responses_decode_with_their_payload() -> None:
    result = rpc.decode(b'{"id": 3, "result": {"decision": {"type": "allow"}}}')
    assert isinstance(result, rpc.Response) and result.result is not None
    error = rpc.decode(b'{"id": 4, "error": {"code": -32601, "message": "no"}}')
    assert isinstance(error, rpc.Response) and error.error == {"code": -32601, "message": "no"}


async def test_an_unsolicited_response_still_closes_the_connection() -> None:
    async with running_server() as (_, url), Client.connect(url) as client:
        await client.initialize()
        await client.send_raw(json.dumps({"id": 77, "result": {}}))
        await asyncio.wait_for(client.closed.wait(), 10)


# ---- network/policyRequest -------------------------------------------------------------------

bwrap = pytest.mark.skipif(not support().usable, reason="bubblewrap cannot run here")
PUBLIC = "8.8.8.8"
"""A public literal no list allows: a miss the client is asked about (nothing connects to it
here: the child gives up after a moment)."""


async def answer_policy_requests(client: Client, reply: Any) -> list[dict[str, Any]]:
    """Answer every network/policyRequest with ``reply(params)`` (a dict to send, or None to
    stay silent); returns the requests seen, as they come."""
    seen: list[dict[str, Any]] = []
    done = 0

    async def loop() -> None:
        nonlocal done
        while True:
            requests = [n for n in client.notifications if n["method"] == "network/policyRequest"]
            for request in requests[done:]:
                seen.append(request)
                message = reply(request["params"])
                if message is not None:
                    await client.send_raw(json.dumps({"id": request["id"], **message}))
            done = len(requests)
            await asyncio.sleep(0.02)

    client._answering = asyncio.ensure_future(loop())  # type: ignore[attr-defined]
    return seen


async def run_asking(client: Client, script: str, timeout_ms: int = 5000) -> str:
    proxy = {**network_proxy({"127.0.0.1": "allow"}), "policyDecisionTimeoutMs": timeout_ms}
    await client.start("p1", ["sh", "-c", script], env=PATH_ENV, networkProxy=proxy)
    return (await client.wait_closed("p1", timeout=30)).data().decode(errors="replace")


@bwrap
@needs_curl
@pytest.mark.parametrize(
    ("reply", "verdict", "reason"),
    [
        (
            {"result": {"decision": {"type": "deny", "reason": "user said no"}}},
            "deny",
            "user said no",
        ),
        ({"result": {"decision": {"type": "ask", "reason": "later"}}}, "ask", "later"),
        ({"error": {"code": -32603, "message": "boom"}}, "deny", "not_allowed"),
        ({"result": {"unexpected": 1}}, "deny", "not_allowed"),
    ],
)
async def test_the_clients_refusal_is_the_verdict(
    reply: dict[str, Any], verdict: str, reason: str
) -> None:
    async with running_server() as (_, url), Client.connect(url) as client:
        await client.initialize()
        seen = await answer_policy_requests(client, lambda params: reply)
        out = await run_asking(client, f"curl -s -i http://{PUBLIC}:8080/x")
        [request] = seen
        assert request["params"] == {
            "processId": "p1",
            "request": {"protocol": "http", "host": PUBLIC, "port": 8080},
        }
        assert isinstance(request["id"], int)
        assert "HTTP/1.1 403 Forbidden" in out and f'"reason":"{reason}"' in out
        [audit] = decisions(client, "p1")
        assert (audit["decision"], audit["source"], audit["reason"]) == (verdict, "decider", reason)
        assert audit["policyOverride"] is False


@bwrap
@needs_curl
async def test_an_allow_overrides_the_lists_and_is_audited() -> None:
    async with running_server() as (_, url), Client.connect(url) as client:
        await client.initialize()
        allow = {"result": {"decision": {"type": "allow"}}}
        seen = await answer_policy_requests(client, lambda params: allow)
        await run_asking(client, f"curl -s -m 1 http://{PUBLIC}:8080/; curl -s http://10.0.0.1/")
        assert [r["params"]["request"]["host"] for r in seen] == [PUBLIC]  # never for local
        override, local = decisions(client, "p1")
        assert (override["decision"], override["source"], override["reason"]) == (
            "allow",
            "decider",
            "not_allowed",
        )
        assert override["policyOverride"] is True
        assert (local["reason"], local["source"]) == ("not_allowed_local", "baseline_policy")


@bwrap
@needs_curl
async def test_silence_is_a_deny_after_the_timeout() -> None:
    async with running_server() as (_, url), Client.connect(url) as client:
        await client.initialize()
        seen = await answer_policy_requests(client, lambda params: None)
        out = await run_asking(client, f"curl -s http://{PUBLIC}/", timeout_ms=300)
        assert len(seen) == 1 and '"reason":"not_allowed"' in out
        [audit] = decisions(client, "p1")
        assert (audit["decision"], audit["source"]) == ("deny", "decider")


@bwrap
@needs_curl
async def test_without_a_timeout_nobody_is_asked() -> None:
    async with running_server() as (_, url), Client.connect(url) as client:
        await client.initialize()
        proxy = network_proxy({"127.0.0.1": "allow"})
        await client.start(
            "p1", ["curl", "-s", f"http://{PUBLIC}/"], env=PATH_ENV, networkProxy=proxy
        )
        out = (await client.wait_closed("p1")).data().decode()
        assert '"reason":"not_allowed"' in out
        assert not [n for n in client.notifications if n["method"] == "network/policyRequest"]


@bwrap
@needs_curl
async def test_pending_questions_go_with_their_process_and_their_connection() -> None:
    """Unanswered requests are dropped when the process ends (its proxy's handlers are
    cancelled), and a closed connection fails whatever is still pending."""
    async with running_server() as (server, url), Client.connect(url) as client:
        await client.initialize()
        await answer_policy_requests(client, lambda params: None)
        await run_asking(client, f"curl -s -m 1 http://{PUBLIC}/", timeout_ms=60_000)
        [session] = list(server.sessions)
        assert session.connection is not None
        pending = session.connection.server_requests
        await asyncio.sleep(0.2)
        assert len(pending) == 0


@bwrap
@needs_curl
async def test_the_python_client_answers_with_its_hook() -> None:
    from exec_server.client import connect

    async with running_server() as (_, url), connect(url) as client:
        asked: list[tuple[str, Any]] = []

        async def hook(method: str, params: Any) -> Any:
            asked.append((method, params))
            return {"decision": {"type": "deny", "reason": "from the hook"}}

        client.on_server_request = hook
        proxy = {**network_proxy({}), "policyDecisionTimeoutMs": 5000}
        await client.request(
            "process/start",
            {
                "processId": "p1",
                "argv": ["curl", "-s", f"http://{PUBLIC}/"],
                "cwd": "/tmp",
                "env": PATH_ENV,
                "tty": False,
                "networkProxy": proxy,
            },
        )
        output, after, closed = b"", 0, False
        while not closed:
            read = await client.request(
                "process/read", {"processId": "p1", "afterSeq": after, "waitMs": 5000}
            )
            output += b"".join(base64.b64decode(c["chunk"]) for c in read["chunks"])
            after, closed = read["nextSeq"] - 1, read["closed"]
        assert [method for method, _ in asked] == ["network/policyRequest"]
        assert asked[0][1]["request"]["host"] == PUBLIC
        assert b'"reason":"from the hook"' in output
