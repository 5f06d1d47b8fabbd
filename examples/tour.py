"""A short real session with a running exec-server, printed as a transcript.

Usage: python examples/tour.py ws://127.0.0.1:PORT
Lines starting with `>` are sent, `<` received; base64 output is decoded in a `#` comment.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from typing import Any

from websockets.asyncio.client import ClientConnection, connect


def show(direction: str, message: dict[str, Any]) -> None:
    line = f"{direction} {json.dumps(message, separators=(',', ':'))}"
    params = message.get("params") or {}
    chunk = params.get("chunk")
    if chunk is None and "result" in message and isinstance(message["result"], dict):
        chunks = message["result"].get("chunks") or []
        chunk = "".join(c["chunk"] for c in chunks) if len(chunks) == 1 else None
    if chunk:
        line += f"   # {base64.b64decode(chunk)!r}"
    print(line)


async def send(ws: ClientConnection, message: dict[str, Any]) -> None:
    show(">", message)
    await ws.send(json.dumps(message))


async def receive_until(ws: ClientConnection, done: Any) -> None:
    while True:
        message = json.loads(await ws.recv())
        if message.get("method") != "initialize" and "environmentInfo" in message.get("result", {}):
            message["result"]["environmentInfo"] = {"...": "shell, cwd, home, platform"}
        show("<", message)
        if done(message):
            return


async def main(url: str) -> None:
    async with connect(url, compression=None) as ws:
        await send(ws, {"id": 1, "method": "initialize", "params": {"clientName": "tour"}})
        await receive_until(ws, lambda m: m.get("id") == 1)
        await send(ws, {"method": "initialized"})

        argv = ["sh", "-c", "echo hello; echo oops >&2; exit 3"]
        start = {"processId": "p1", "argv": argv, "cwd": "/tmp", "env": {"PATH": "/usr/bin:/bin"}}
        await send(ws, {"id": 2, "method": "process/start", "params": {**start, "tty": False}})
        await receive_until(ws, lambda m: m.get("method") == "process/closed")
        await send(
            ws, {"id": 3, "method": "process/read", "params": {"processId": "p1", "afterSeq": 1}}
        )
        await receive_until(ws, lambda m: m.get("id") == 3)

        shell = {
            "processId": "sh",
            "argv": ["sh"],
            "cwd": "file:///tmp",
            "env": {"PATH": "/usr/bin:/bin"},
        }
        await send(ws, {"id": 4, "method": "process/start", "params": {**shell, "tty": True}})
        await receive_until(ws, lambda m: m.get("id") == 4)
        line = base64.b64encode(b"tty; exit\n").decode()
        await send(
            ws,
            {
                "id": 5,
                "method": "process/write",
                "params": {"processId": "sh", "chunk": line, "writeId": "w1"},
            },
        )
        await receive_until(ws, lambda m: m.get("method") == "process/closed")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
