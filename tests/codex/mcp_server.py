"""A minimal streamable-HTTP MCP server on loopback for the codex scenarios: it answers
``initialize`` and ``tools/list`` (one tool) with JSON, accepts notifications, and records
the ``Authorization`` header of every request it gets."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from typing import Any

from ..support import LoopbackHttp, QuietHandler

TOOL = {
    "name": "e2e_echo",
    "description": "Echoes its input (exec-server e2e).",
    "inputSchema": {"type": "object", "properties": {}},
}


class McpServer(LoopbackHttp):
    """Use as a context manager; ``authorizations`` lists what each request carried."""

    def __init__(self) -> None:
        self.authorizations: list[str | None] = []
        self.methods: list[str] = []
        super().__init__(self._handler())

    @property
    def url(self) -> str:
        return self.url_of("/mcp")

    def _answer(self, message: dict[str, Any]) -> dict[str, Any] | None:
        method = message.get("method", "")
        self.methods.append(method)
        if "id" not in message:
            return None
        if method == "initialize":
            result: dict[str, Any] = {
                "protocolVersion": message["params"].get("protocolVersion", "2025-06-18"),
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "e2e", "version": "1.0"},
            }
        elif method == "tools/list":
            result = {"tools": [TOOL]}
        else:
            return {
                "jsonrpc": "2.0",
                "id": message["id"],
                "error": {"code": -32601, "message": method},
            }
        return {"jsonrpc": "2.0", "id": message["id"], "result": result}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        mcp = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                mcp.authorizations.append(self.headers.get("authorization"))
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                reply = mcp._answer(json.loads(raw))
                if reply is None:
                    self.send_body(202, b"")
                else:
                    self.send_body(200, json.dumps(reply).encode(), "application/json")

            def do_GET(self) -> None:
                mcp.authorizations.append(self.headers.get("authorization"))
                self.send_body(405, b"")

            def do_DELETE(self) -> None:
                self.send_body(200, b"")

        return Handler
