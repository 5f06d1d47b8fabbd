"""``exec-server --listen stdio``: newline-delimited JSON on the real command's stdin/stdout."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import psutil
import pytest

from exec_server.config import Limits
from exec_server.server import Server
from exec_server.transport.stdio import serve_stdio

from .support import PATH_ENV, pid_alive, start_cli, stop_cli, wait_until

PARSE_PREFIX = "failed to parse JSON-RPC message from exec-server stdio: "


class StdioServer:
    """The real CLI over pipes; ``lines`` holds every stdout line, parsed."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []
        self.children: set[int] = set()

    async def send_line(self, line: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line)
        await self.proc.stdin.drain()

    async def send(self, message: object) -> None:
        await self.send_line(json.dumps(message).encode() + b"\n")

    async def recv(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 15)
        assert line.endswith(b"\n"), f"stdout ended: {line!r}"
        message = json.loads(line)
        assert isinstance(message, dict)
        self.lines.append(message)
        return message

    async def recv_until(self, predicate: Any) -> dict[str, Any]:
        while True:
            message = await self.recv()
            if predicate(message):
                return message

    async def call(self, request_id: object, method: str, params: object = None) -> Any:
        message: dict[str, Any] = {"id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        await self.send(message)
        reply = await self.recv_until(lambda m: "method" not in m and m.get("id") == request_id)
        return reply

    async def handshake(self) -> str:
        reply = await self.call(1, "initialize", {"clientName": "stdio-tests"})
        await self.send({"method": "initialized"})
        return str(reply["result"]["sessionId"])

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    async def wait_exit(self) -> tuple[int, bytes, str]:
        """(exit code, the rest of stdout, stderr)."""
        assert self.proc.stdout is not None and self.proc.stderr is not None
        rest, err, rc = await asyncio.wait_for(
            asyncio.gather(self.proc.stdout.read(), self.proc.stderr.read(), self.proc.wait()),
            30,
        )
        return rc, rest, err.decode(errors="replace")

    def descendants(self, name: str) -> list[int]:
        try:
            found = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        pids = []
        for process in found:
            with contextlib.suppress(psutil.NoSuchProcess):
                if process.name() == name:
                    pids.append(process.pid)
        self.children.update(pids)
        return pids


@contextlib.asynccontextmanager
async def stdio_server(*args: str) -> AsyncIterator[StdioServer]:
    proc = await start_cli("--listen", "stdio", *args, stdin=subprocess.PIPE)
    server = StdioServer(proc)
    try:
        yield server
    finally:
        await stop_cli(proc, server.children)


async def test_full_exchange() -> None:
    async with stdio_server() as server:
        session_id = await server.handshake()
        assert len(session_id) == 36
        await server.send(
            {
                "id": "s4",
                "method": "process/start",
                "params": {
                    "processId": "p1",
                    "argv": ["sh", "-c", "echo hi; echo err >&2; exit 3"],
                    "cwd": "/tmp",
                    "env": PATH_ENV,
                    "tty": False,
                },
            }
        )
        await server.recv_until(lambda m: m.get("method") == "process/closed")
        start = [m for m in server.lines if m.get("id") == "s4"]
        if not start:
            start = [await server.recv_until(lambda m: m.get("id") == "s4")]
        assert start[0]["result"]["processId"] == "p1"
        notes = [m["params"] for m in server.lines if "method" in m]
        output = {n["stream"]: base64.b64decode(n["chunk"]) for n in notes if "chunk" in n}
        assert output == {"stdout": b"hi\n", "stderr": b"err\n"}
        exited = [m for m in server.lines if m.get("method") == "process/exited"]
        assert exited[0]["params"]["exitCode"] == 3
        read = await server.call(5, "process/read", {"processId": "p1"})
        assert read["result"]["nextSeq"] == 3
        assert read["result"]["exited"] and read["result"]["closed"]
        assert all("jsonrpc" not in m for m in server.lines)
        server.close_stdin()
        rc, rest, stderr = await server.wait_exit()
        assert rc == 0, stderr
        assert rest == b""


async def test_blank_lines_are_ignored() -> None:
    async with stdio_server() as server:
        await server.send_line(b"\n\n   \n\t\n\r\n")
        reply = await server.call(1, "environment/status")
        # The first line out answers the request: no error was sent for the blanks.
        assert server.lines == [{"id": 1, "result": {"status": "ready"}}]
        assert reply["result"] == {"status": "ready"}


async def test_crlf_line_endings_are_accepted() -> None:
    async with stdio_server() as server:
        await server.send_line(b'{"id":"a","method":"environment/status"}\r\n')
        assert await server.recv() == {"id": "a", "result": {"status": "ready"}}


@pytest.mark.parametrize("line", [b"not json", b"{}", b'{"id":1}', b"[]", b"\xff\xfe"])
async def test_parse_errors_name_stdio_and_keep_the_connection(line: bytes) -> None:
    async with stdio_server() as server:
        await server.send_line(line + b"\n")
        reply = await server.recv()
        assert reply["id"] == -1
        assert reply["error"]["code"] == -32600
        assert reply["error"]["message"].startswith(PARSE_PREFIX)
        assert len(reply["error"]["message"]) > len(PARSE_PREFIX)
        assert "sessionId" in (await server.call(2, "initialize", {"clientName": "x"}))["result"]


async def test_several_messages_in_one_write_are_split_on_newlines() -> None:
    async with stdio_server() as server:
        batch = b"".join(
            json.dumps({"id": i, "method": "environment/status"}).encode() + b"\n"
            for i in range(50)
        )
        await server.send_line(batch)
        ids = {(await server.recv())["id"] for _ in range(50)}
        assert ids == set(range(50))


async def test_replies_queued_before_eof_are_delivered() -> None:
    # Regression: a request piped in just before EOF got no answer (the queue was dropped).
    async with stdio_server() as server:
        await server.send_line(
            b'{"id":1,"method":"initialize","params":{"clientName":"x"}}\n'
            b'{"method":"initialized"}\n'
            b'{"id":2,"method":"environment/status"}'  # no trailing newline: still a message
        )
        server.close_stdin()
        rc, rest, stderr = await server.wait_exit()
        assert rc == 0, stderr
        replies = [json.loads(line) for line in rest.splitlines()]
        assert [r["id"] for r in replies] == [1, 2]
        assert replies[1]["result"] == {"status": "ready"}


async def test_eof_on_stdin_kills_every_child_at_once_and_exits_zero() -> None:
    # A long grace: over stdio nobody can come back, so it must not apply.
    async with stdio_server("--detach-grace", "300") as server:
        await server.handshake()
        for pid, tty in (("group", False), ("pty", True)):
            await server.send(
                {
                    "id": pid,
                    "method": "process/start",
                    "params": {
                        "processId": pid,
                        "argv": ["sh", "-c", "sleep 100 & sleep 100"],
                        "cwd": "/tmp",
                        "env": PATH_ENV,
                        "tty": tty,
                    },
                }
            )
            assert "result" in await server.recv_until(lambda m, pid=pid: m.get("id") == pid)
        assert await wait_until(lambda: len(server.descendants("sleep")) >= 4)
        sleeps = server.descendants("sleep")
        server.close_stdin()
        rc, _, stderr = await server.wait_exit()
        assert rc == 0, stderr
        assert "Traceback" not in stderr
        assert await wait_until(lambda: not any(pid_alive(pid) for pid in sleeps))


async def test_sigterm_over_stdio_kills_children_and_exits_zero() -> None:
    async with stdio_server() as server:
        await server.handshake()
        await server.send(
            {
                "id": 2,
                "method": "process/start",
                "params": {
                    "processId": "p",
                    "argv": ["sh", "-c", "sleep 100 & sleep 100"],
                    "cwd": "/tmp",
                    "env": PATH_ENV,
                    "tty": False,
                },
            }
        )
        await server.recv_until(lambda m: m.get("id") == 2)
        assert await wait_until(lambda: len(server.descendants("sleep")) >= 2)
        sleeps = server.descendants("sleep")
        server.proc.terminate()
        rc, _, stderr = await server.wait_exit()
        assert rc == 0, stderr
        assert await wait_until(lambda: not any(pid_alive(pid) for pid in sleeps))


async def test_protocol_violation_over_stdio_ends_the_server() -> None:
    async with stdio_server() as server:
        await server.handshake()
        await server.send(
            {
                "id": 2,
                "method": "process/start",
                "params": {
                    "processId": "p",
                    "argv": ["sleep", "100"],
                    "cwd": "/tmp",
                    "env": PATH_ENV,
                    "tty": False,
                },
            }
        )
        await server.recv_until(lambda m: m.get("id") == 2)
        assert await wait_until(lambda: len(server.descendants("sleep")) >= 1)
        sleeps = server.descendants("sleep")
        await server.send({"method": "bogus/notification"})
        rc, rest, stderr = await server.wait_exit()
        assert rc == 0, stderr
        assert rest == b""  # nothing answers a violation
        assert await wait_until(lambda: not any(pid_alive(pid) for pid in sleeps))


async def test_stdout_carries_only_protocol_lines() -> None:
    async with stdio_server() as server:
        await server.send({"id": 1, "method": "no/such"})
        reply = await server.recv()
        assert reply == {
            "error": {
                "code": -32601,
                "message": "exec-server stub does not implement `no/such` yet",
            },
            "id": 1,
        }
        server.close_stdin()
        rc, rest, _ = await server.wait_exit()
        assert rc == 0 and rest == b""


async def test_a_line_over_the_message_limit_is_reported_and_skipped() -> None:
    # In process, over real pipes, with a small limit.
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    server = Server(Limits(max_message_bytes=1024))
    stdin = os.fdopen(in_r, "rb", buffering=0)
    stdout = os.fdopen(out_w, "wb", buffering=0)
    try:
        served = asyncio.ensure_future(serve_stdio(server, stdin, stdout))
        big = json.dumps({"id": 1, "method": "environment/status", "pad": "x" * 5000})
        os.write(in_w, big.encode() + b'\n{"id":2,"method":"environment/status"}\n')
        os.close(in_w)
        in_w = -1
        await asyncio.wait_for(served, 10)
        await server.shutdown()
        os.set_blocking(out_r, False)
        lines = os.read(out_r, 1 << 16).splitlines()
    finally:
        for fd in (in_w, out_r):
            if fd >= 0:
                os.close(fd)
        stdin.close()
        stdout.close()
    replies = [json.loads(line) for line in lines]
    assert replies == [
        {
            "error": {
                "code": -32600,
                "message": PARSE_PREFIX + "message is larger than 1024 bytes",
            },
            "id": -1,
        },
        {"id": 2, "result": {"status": "ready"}},
    ]
