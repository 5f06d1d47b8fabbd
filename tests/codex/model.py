"""A scripted model: the OpenAI Responses API on loopback, as `codex exec` calls it.

Each ``POST /v1/responses`` gets the next scripted turn as a server-sent event stream
(``response.created``, the turn's output items, ``response.completed``); once the script is
used up, the model says "done" and the turn ends. A turn is a list of output items, or a
function of the request body returning one (to use what codex reported, e.g. a session id).
Every request body is recorded, so a test reads what codex sent back for each tool call.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

from ..support import LoopbackHttp, QuietHandler

Item = dict[str, Any]
Turn = list[Item] | Callable[[dict[str, Any]], list[Item]]

FINAL_TEXT = "done"


def function_call(call_id: str, name: str, **arguments: Any) -> Item:
    """A call of a JSON-schema tool (``exec_command``, ``write_stdin``)."""
    return {
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": json.dumps(arguments),
    }


def exec_command(call_id: str, cmd: str, **arguments: Any) -> Item:
    """``exec_command``; ``login`` is off so a profile's noise stays out of the output."""
    return function_call(call_id, "exec_command", cmd=cmd, login=False, **arguments)


def write_stdin(call_id: str, session_id: int, chars: str, **arguments: Any) -> Item:
    return function_call(call_id, "write_stdin", session_id=session_id, chars=chars, **arguments)


def apply_patch(call_id: str, patch: str) -> Item:
    """``apply_patch`` is a freeform (custom) tool for gpt-5.5: the patch is the raw input."""
    return {"type": "custom_tool_call", "call_id": call_id, "name": "apply_patch", "input": patch}


def message(text: str) -> Item:
    """An assistant message (the final answer, or a reviewer's verdict)."""
    return {
        "type": "message",
        "role": "assistant",
        "id": "msg_final",
        "content": [{"type": "output_text", "text": text}],
    }


def _stream(response_id: str, items: list[Item]) -> bytes:
    events: list[Item] = [{"type": "response.created", "response": {"id": response_id}}]
    events += [{"type": "response.output_item.done", "item": item} for item in items]
    usage = {
        "input_tokens": 0,
        "input_tokens_details": None,
        "output_tokens": 0,
        "output_tokens_details": None,
        "total_tokens": 0,
    }
    events.append({"type": "response.completed", "response": {"id": response_id, "usage": usage}})
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()


class ScriptedModel(LoopbackHttp):
    """The model server; use as a context manager (it serves on a thread until closed)."""

    def __init__(self, turns: list[Turn]) -> None:
        self._turns = list(turns)
        self.requests: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        super().__init__(self._handler())

    @property
    def base_url(self) -> str:
        return self.url_of("/v1")

    def _respond(self, body: dict[str, Any]) -> bytes:
        with self._lock:
            index = len(self.requests)
            self.requests.append(body)
        turn: Turn = self._turns[index] if index < len(self._turns) else [message(FINAL_TEXT)]
        items = turn(body) if callable(turn) else turn
        return _stream(f"resp_{index}", items)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        model = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                if not self.path.endswith("/responses"):
                    self.send_body(404, b"", "text/plain")
                    return
                try:
                    data = model._respond(json.loads(raw))
                except Exception as exc:  # a broken script shows in the test, not as a hang
                    model.errors.append(repr(exc))
                    self.send_body(500, repr(exc).encode(), "text/plain")
                    return
                self.send_body(200, data, "text/event-stream")

            def do_GET(self) -> None:
                self.send_body(404, b"", "text/plain")

        return Handler

    # ---- what codex sent back ----------------------------------------------------------------

    def inputs(self) -> list[Item]:
        """The input items of the last request (the whole conversation so far)."""
        return list(self.requests[-1]["input"]) if self.requests else []

    def output_of(self, call_id: str) -> str:
        """What codex reported to the model for one tool call."""
        for body in reversed(self.requests):
            for item in body.get("input", []):
                if item.get("call_id") == call_id and item.get("type", "").endswith("_output"):
                    output = item.get("output")
                    return output if isinstance(output, str) else json.dumps(output)
        raise AssertionError(f"codex sent no output for {call_id}")

    def tool_names(self) -> list[str]:
        tools = self.requests[0].get("tools", []) if self.requests else []
        return [str(tool.get("name") or tool.get("type")) for tool in tools]
