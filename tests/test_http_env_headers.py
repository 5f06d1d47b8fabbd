"""``http/request`` header values completed from the executor's environment (codex 0.169's
``httpHeaderEnvVars``: ``{name, value, valueEnvVar}`` sends ``value`` + ``$valueEnvVar``).

Every case runs against ours and against the reference started with the same environment,
and the answers must be equal; then what only ours does: the variables it never lends out.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from exec_server.config import Guards

from .codex.reference import reference_client
from .support import Client, RpcFailure, running_server
from .test_http import _serving, _TestHttpServer

ENVIRONMENT = {"DEMO_TOKEN": "tok-exec", "EMPTY_VAR": "", "BAD_VAR": "a\nb"}


@pytest.fixture
def web() -> Iterator[_TestHttpServer]:
    with _serving("127.0.0.1") as server:
        yield server


@pytest.fixture
async def ours(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Client]:
    for name, value in ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("NOPE_VAR", raising=False)
    guards = Guards(env_exclude=("*PASSWORD*",))
    async with running_server(guards=guards) as (_, url), Client.connect(url) as client:
        await client.initialize()
        yield client


def header(value: str, variable: str | None, name: str = "Authorization") -> dict[str, Any]:
    return {"name": name, "value": value, "valueEnvVar": variable}


CASES: dict[str, list[dict[str, Any]]] = {
    "bearer": [header("Bearer ", "DEMO_TOKEN")],
    "bare": [header("", "DEMO_TOKEN")],
    "null_variable": [header("plain", None)],
    "unset": [header("Bearer ", "NOPE_VAR")],
    "empty_value": [header("Bearer ", "EMPTY_VAR")],
    "empty_name": [header("Bearer ", "")],
    "bad_name": [header("Bearer ", "NOT A NAME=")],
    "invalid_value": [header("Bearer ", "BAD_VAR")],
    "bad_header_name_first": [header("x", "NOPE_VAR", name="Bad Name")],
    "second_header": [header("a", None, name="X-A"), header("Bearer ", "NOPE_VAR")],
}


async def answer(client: Client, url: str, headers: list[dict[str, Any]]) -> Any:
    params = {"method": "GET", "url": url, "requestId": "r", "headers": headers}
    try:
        reply = await client.call("http/request", params)
    except RpcFailure as failure:
        return [failure.code, failure.message]
    echo = json.loads(__import__("base64").b64decode(reply["bodyBase64"]))
    return [pair for pair in echo["headers"] if pair[0] in ("authorization", "x-a")]


async def test_the_same_answers_as_the_reference(ours: Client, web: _TestHttpServer) -> None:
    url = web.base + "/echo"
    found = {name: await answer(ours, url, headers) for name, headers in CASES.items()}
    async with reference_client({**ENVIRONMENT}) as reference:
        expected = {name: await answer(reference, url, headers) for name, headers in CASES.items()}
    assert found == expected
    assert found["bearer"] == [["authorization", "Bearer tok-exec"]]
    assert found["unset"] == [
        -32602,
        "http/request header Authorization requires executor environment variable NOPE_VAR",
    ]


async def test_the_servers_token_and_excluded_variables_are_never_lent(
    ours: Client, web: _TestHttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client can have any variable the server holds sent to a host it chooses; the
    server's own token and what the operator excluded (``--env-exclude``) are refused
    exactly as an unset variable is, so a client cannot tell they exist."""
    monkeypatch.setenv("EXEC_SERVER_TOKEN", "server-secret")
    monkeypatch.setenv("DB_PASSWORD", "db-secret")
    url = web.base + "/echo"
    for variable in ("EXEC_SERVER_TOKEN", "DB_PASSWORD"):
        assert await answer(ours, url, [header("Bearer ", variable)]) == [
            -32602,
            f"http/request header Authorization requires executor environment variable {variable}",
        ]
    assert await answer(ours, url, [header("", "DEMO_TOKEN")]) == [["authorization", "tok-exec"]]
