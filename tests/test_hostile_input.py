"""Hostile input through the real transports (issue 11): each defect found, with the test
that would have caught it, over the transport it was found on.

Covered elsewhere, over the transport named (not repeated here):

* (a) invalid UTF-8 inside ``params``: the connection itself in
  ``test_connection.py::test_invalid_utf8_inside_params_is_an_error_reply_and_the_connection_stays``;
  whole frames that are not UTF-8 in ``test_envelope.py::test_bad_binary_frames_get_id_minus_one``
  (WebSocket) and ``test_stdio.py::test_parse_errors_name_stdio_and_keep_the_connection``
  (stdio). Through WebSocket and stdio, with a running child that must survive it: here.
* (b) a pathological ``envPolicy`` pattern: the matcher in
  ``test_env_policy.py::test_a_pathological_pattern_is_decided_at_once``; through the server,
  answering a concurrent cheap call: here.
* (c) queued stdin bounded: ``test_stdin_queue.py::test_a_client_flooding_a_child_that_never_reads_gets_an_error``
  (WebSocket, the ``--stdin-max-bytes-per-process`` bound) and the ``StdinQueue`` tests beside it
  (the per-session bound).
* (d) NUL in cwd (a path and a ``file://`` URI with ``%00``), argv, arg0, env names and values
  -> -32602 on both spawn paths (the vfork helper and ``subprocess.Popen``, with and without
  pidfds, pipes and PTYs): ``test_process_spawn_paths.py::test_lookup_and_errors``.
* (e) stdout a regular file (and ``/dev/null``) for ``--listen stdio``:
  ``test_stdio_ends.py::test_every_kind_of_end_works`` (file->file, pipe->file, file->devnull,
  on both loops); stdin from ``/dev/null``: here.
* (f) invalid ids answered with id -1, the connection kept: WebSocket in
  ``test_envelope.py::test_request_with_invalid_id_is_answered_with_id_minus_one_and_the_connection_stays``
  and ``test_invalid_ids_after_the_handshake_keep_the_connection``; stdio: here.

Found by the fuzzer (``test_fuzz.py``), with their regression tests here:

* a path whose bytes are not UTF-8 (``file:///tmp/%FF``) in an error message or a result
  made the reply unencodable: no reply at all, the client waited forever;
* ``fs/createDirectory`` of a path a thousand levels deep, and ``fs/remove`` of such a tree,
  failed with "internal error: maximum recursion depth exceeded";
* a sandboxed ``process/start`` that could not spawn (a missing cwd, a bad env name) answered
  "internal error: ..." with -32603 and logged a traceback, where the same start without a
  sandbox answers -32603 or -32602 with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from exec_server.paths import to_file_uri
from exec_server.sandbox.bwrap import support

from .sandbox_support import workspace_write
from .support import PATH_ENV, REPO, Client, pid_alive, running_server, server_command
from .test_stdio import PARSE_PREFIX, stdio_server

NOT_UTF8_IN_PARAMS = b'{"id":"u1","method":"fs/readFile","params":{"path":"/tmp/\xff"}}'
"""Issue 11's example: a raw 0xFF inside a string of params."""

PATHOLOGICAL = "*A" * 12 + "B"
"""``*A*A*A*A*A*A*A*A*A*A*A*AB``: a backtracking matcher takes minutes on a long name of A's."""


@contextlib.asynccontextmanager
async def raw_websocket(url: str) -> AsyncIterator[ClientConnection]:
    async with connect(url, compression=None, max_size=None) as ws:
        yield ws


async def reply_to(ws: ClientConnection, request_id: object) -> dict[str, Any]:
    """The reply to ``request_id``, skipping notifications."""
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), 15))
        if "method" not in message and message.get("id") == request_id:
            return dict(message)


async def call(ws: ClientConnection, request_id: object, method: str, params: Any = None) -> Any:
    await ws.send(json.dumps({"id": request_id, "method": method, "params": params}))
    return await reply_to(ws, request_id)


async def handshake(ws: ClientConnection) -> None:
    assert "result" in await call(ws, 0, "initialize", {"clientName": "hostile"})
    await ws.send('{"method":"initialized"}')


def start_params(process_id: str, argv: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "processId": process_id,
        "argv": argv,
        "cwd": "/tmp",
        "env": PATH_ENV,
        "tty": False,
        **extra,
    }


# ---- (a) invalid UTF-8 inside params --------------------------------------------------------


@pytest.mark.parametrize("text", [True, False], ids=["text-frame", "binary-frame"])
async def test_invalid_utf8_in_params_over_websocket_is_an_error_and_the_child_lives(
    server_url: str, text: bool
) -> None:
    async with raw_websocket(server_url) as ws:
        await handshake(ws)
        assert "result" in await call(
            ws, 1, "process/start", start_params("alive", ["sleep", "30"])
        )
        await ws.send(NOT_UTF8_IN_PARAMS, text=text)
        reply = await reply_to(ws, "u1")
        assert reply["error"]["code"] == -32602, reply
        assert await call(ws, 2, "environment/status") == {"id": 2, "result": {"status": "ready"}}
        read = await call(ws, 3, "process/read", {"processId": "alive"})
        assert read["result"]["exited"] is False
        await call(ws, 4, "process/terminate", {"processId": "alive"})


async def test_invalid_utf8_in_params_over_stdio_is_an_error_and_the_child_lives() -> None:
    """Over stdio this used to end the server, and with it every child."""
    async with stdio_server() as server:
        await server.handshake()
        reply = await server.call(2, "process/start", start_params("alive", ["sleep", "30"]))
        assert "result" in reply, reply
        [child] = server.descendants("sleep")
        await server.send_line(NOT_UTF8_IN_PARAMS + b"\n")
        reply = await server.recv_until(lambda m: m.get("id") == "u1")
        assert reply["error"]["code"] == -32602, reply
        assert (await server.call(3, "environment/status"))["result"] == {"status": "ready"}
        read = await server.call(4, "process/read", {"processId": "alive"})
        assert read["result"]["exited"] is False
        assert server.proc.returncode is None and pid_alive(child)
        server.close_stdin()
        rc, _, stderr = await server.wait_exit()
        assert rc == 0, stderr
        assert not pid_alive(child)  # and at EOF, as ever, the child goes with the session


# ---- (b) a pathological envPolicy pattern ---------------------------------------------------


async def test_a_pathological_env_pattern_does_not_stall_the_server() -> None:
    long_name = "A" * 5000
    async with running_server() as (server, url), Client.connect(url) as client:
        server.server_env[long_name] = "inherited"
        await client.initialize()
        policy = {
            "inherit": "all",
            "ignoreDefaultExcludes": True,
            "exclude": [PATHOLOGICAL],
            "set": {long_name + "A": "set"},
            "includeOnly": [PATHOLOGICAL, "PATH"],
        }
        start = client.start("env", ["/usr/bin/env"], env={}, envPolicy=policy)
        status = client.call("environment/status")
        # A generous guard on a busy 2-core machine: the backtracking matcher took minutes.
        started, ready = await asyncio.wait_for(asyncio.gather(start, status), 10)
        assert started["processId"] == "env" and ready == {"status": "ready"}
        events = await client.wait_closed("env")
        names = {line.split("=", 1)[0] for line in events.data().decode().splitlines()}
        assert long_name not in names and long_name + "A" not in names
        assert "PATH" in names


# ---- (e) stdin from /dev/null -----------------------------------------------------------------


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_stdin_from_devnull_with_stdout_a_file_exits_cleanly(tmp_path: Path, loop: str) -> None:
    out = tmp_path / "out.jsonl"
    with open(out, "wb") as stdout:
        result = subprocess.run(
            server_command("--listen", "stdio", "--loop", loop),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.PIPE,
            cwd=REPO,
            timeout=30,
        )
    assert result.returncode == 0, result.stderr.decode()
    assert out.read_bytes() == b""
    assert b"Traceback" not in result.stderr


# ---- (f) invalid ids over stdio ---------------------------------------------------------------


async def test_invalid_ids_over_stdio_get_id_minus_one_and_the_connection_stays() -> None:
    async with stdio_server() as server:
        await server.handshake()
        for number, raw_id in enumerate(["null", "true", "{}", "[]", "1.5", str(2**64)]):
            line = '{"id":' + raw_id + ',"method":"environment/status"}\n'
            await server.send_line(line.encode())
            reply = await server.recv()
            assert reply["id"] == -1 and reply["error"]["code"] == -32600, (raw_id, reply)
            assert reply["error"]["message"].startswith(PARSE_PREFIX)
            answer = await server.call(number + 10, "environment/status")
            assert answer == {"id": number + 10, "result": {"status": "ready"}}
        assert server.proc.returncode is None


# ---- found by the fuzzer: paths that are not UTF-8 in replies ---------------------------------


async def test_a_path_that_is_not_utf8_in_a_reply_is_sent_lossily(
    client: Client, tmp_path: Path
) -> None:
    """Such a path (``%FF`` in a ``file://`` URI: the OS's bytes) used to make its reply
    unencodable, and the request went unanswered."""
    missing = to_file_uri(str(tmp_path)) + "/%FF%FE"
    for method in ("fs/getMetadata", "fs/readFile", "fs/canonicalize", "fs/readDirectory"):
        reply = await client.request(method, {"path": missing})
        assert reply["error"]["code"] == -32004, reply
        assert reply["error"]["message"].endswith(f"{tmp_path}/\ufffd\ufffd"), reply
    params = start_params("p", ["true"], cwd=missing)
    reply = await client.request("process/start", params)
    assert reply["error"]["code"] == -32603 and "\ufffd" in reply["error"]["message"], reply
    os.mkdir(os.fsencode(tmp_path) + b"/\xff")
    await client.start("here", ["sleep", "30"], cwd=to_file_uri(str(tmp_path)) + "/%FF")
    listed = await client.call("process/list")
    [entry] = [p for p in listed["processes"] if p["processId"] == "here"]
    assert entry["cwd"] == f"{tmp_path}/\ufffd"
    await client.call("process/terminate", {"processId": "here"})


async def test_a_path_that_is_not_utf8_in_an_error_over_stdio_is_answered(tmp_path: Path) -> None:
    async with stdio_server() as server:
        await server.handshake()
        path = to_file_uri(str(tmp_path)) + "/%FF"
        reply = await server.call(2, "fs/getMetadata", {"path": path})
        assert reply["error"]["code"] == -32004
        assert reply["error"]["message"].endswith("/\ufffd")


# ---- found by the fuzzer: trees a thousand levels deep ----------------------------------------


DEPTH = 1100
"""Past Python's recursion limit (1000), within PATH_MAX (about 2.2 kB of ``/d``)."""


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    """An empty directory, removed with ``rm -rf`` (pytest's rmtree recurses too)."""
    root = tmp_path / "work"
    root.mkdir()
    yield root
    subprocess.run(["rm", "-rf", str(root)], check=True)


async def test_a_tree_a_thousand_levels_deep_is_made_and_removed(
    client: Client, work: Path
) -> None:
    """``os.makedirs`` and Python 3.11's ``shutil.rmtree`` recurse once per level: this
    failed with "internal error: maximum recursion depth exceeded"."""
    deep = str(work / "tree") + "/d" * DEPTH
    assert await client.call("fs/createDirectory", {"path": deep}) == {}
    assert (await client.call("fs/getMetadata", {"path": deep}))["isDirectory"]
    (Path(deep) / "leaf").write_bytes(b"leaf")
    assert await client.call("fs/remove", {"path": str(work / "tree"), "recursive": True}) == {}
    assert os.listdir(work) == []
    too_long = str(work) + "/" + "n" * 300 + "/d" * DEPTH  # the OS's error, not ours
    reply = await client.request("fs/createDirectory", {"path": too_long})
    assert reply["error"]["message"].startswith("File name too long"), reply


async def test_a_tree_a_thousand_levels_deep_is_removed_under_a_sandbox_profile(
    client: Client, work: Path
) -> None:
    """The same removal through ``sandbox/fs_guard.py``, which used ``shutil.rmtree`` too."""
    mkdir = await asyncio.create_subprocess_exec("mkdir", "-p", str(work / "tree") + "/d" * DEPTH)
    assert await mkdir.wait() == 0
    (work / "tree" / "file").write_bytes(b"x")
    sandbox = workspace_write(to_file_uri(str(work)))
    params = {"path": str(work / "tree"), "recursive": True, "sandbox": sandbox}
    assert await client.call("fs/remove", params) == {}
    assert os.listdir(work) == []


# ---- found by the fuzzer: sandboxed starts that cannot spawn ----------------------------------


@pytest.mark.skipif(not support().usable, reason=f"bubblewrap cannot run here: {support().reason}")
async def test_a_sandboxed_start_that_cannot_spawn_says_why(
    client: Client, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sandbox = workspace_write(to_file_uri(str(tmp_path)))
    cases = [
        ({"cwd": str(tmp_path / "missing")}, -32603, "No such file or directory"),
        ({"env": {**PATH_ENV, "A=": "x"}}, -32602, "illegal environment variable name"),
    ]
    for changes, code, reason in cases:
        params = {**start_params("s", ["true"], cwd=str(tmp_path), sandbox=sandbox), **changes}
        reply = await client.request("process/start", params)
        assert reply["error"]["code"] == code, reply
        assert reason in reply["error"]["message"], reply
        assert not reply["error"]["message"].startswith("internal error"), reply
    await client.run("s", ["true"], cwd=str(tmp_path), sandbox=sandbox)  # the id is free again
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text
