"""A minimal, fast JSON-RPC client for exec-server, shared by every server under test.

The client is deliberately thin: one msgspec decode per incoming message, notifications routed
by ``processId`` to a :class:`ProcWatch` with plain counters, and no base64 decoding unless a
workload asks for the bytes. The same code talks to every server so the numbers compare servers,
not clients.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

Sender = Callable[[bytes], Awaitable[None]]
OutputHook = Callable[["ProcWatch", str], None]


class RpcError(Exception):
    """The server answered a request with a JSON-RPC error."""

    def __init__(self, method: str, error: dict[str, Any]) -> None:
        super().__init__(f"{method}: {error.get('code')} {error.get('message')}")
        self.code = error.get("code")


class ConnectionLost(Exception):
    """The transport closed while requests were pending."""


class _Params(msgspec.Struct):
    processId: str = ""
    seq: int = 0
    stream: str = ""
    chunk: str = ""
    exitCode: int | None = None


class _Incoming(msgspec.Struct):
    id: int | str | None = None
    method: str | None = None
    params: _Params | None = None
    result: msgspec.Raw = msgspec.Raw()
    error: dict[str, Any] | None = None


class ProcWatch:
    """What the client has seen of one process, fed by notifications."""

    __slots__ = ("closed", "closed_seq", "events", "exit_code", "nbytes", "on_output")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.nbytes = 0
        self.events = 0
        self.exit_code: int | None = None
        self.closed_seq = 0
        self.on_output: OutputHook | None = None
        # Resolved once `process/closed` and every event before it (by seq) have arrived:
        # the reference may send notifications out of seq order.
        self.closed: asyncio.Future[None] = loop.create_future()


def decoded_len(b64: str) -> int:
    """Length of the bytes a padded base64 string stands for, without decoding it."""
    n = len(b64)
    if n == 0:
        return 0
    return n // 4 * 3 - b64.count("=", n - 2)


def b64decode(b64: str) -> bytes:
    return base64.b64decode(b64)


class Client:
    """JSON-RPC over any message transport: feed :meth:`on_message`, give it a sender."""

    def __init__(self, send: Sender, *, cwd: str) -> None:
        self._send = send
        self._loop = asyncio.get_running_loop()
        self._ids = itertools.count(1)
        self._write_ids = itertools.count(1)
        self._pending: dict[int | str, tuple[str, asyncio.Future[msgspec.Raw]]] = {}
        self._watches: dict[str, ProcWatch] = {}
        self._encode = msgspec.json.Encoder().encode
        self._decode = msgspec.json.Decoder(_Incoming).decode
        self._lost: BaseException | None = None
        self.cwd = cwd

    # -- incoming ---------------------------------------------------------------------------

    def on_message(self, data: bytes | memoryview) -> None:
        msg = self._decode(data)
        method = msg.method
        if method is not None:
            p = msg.params
            if p is None:
                return
            w = self._watches.get(p.processId)
            if w is None or not method.startswith("process/"):
                return  # network/policyDecision names a process but has no seq
            w.events += 1
            if method == "process/output":
                w.nbytes += decoded_len(p.chunk)
                if w.on_output is not None:
                    w.on_output(w, p.chunk)
            elif method == "process/exited":
                w.exit_code = p.exitCode
            elif method == "process/closed":
                w.closed_seq = p.seq
            if w.closed_seq and w.events >= w.closed_seq and not w.closed.done():
                w.closed.set_result(None)
            return
        if msg.id is None:
            return
        entry = self._pending.pop(msg.id, None)
        if entry is None:
            return
        name, fut = entry
        if fut.done():
            return
        if msg.error is not None:
            fut.set_exception(RpcError(name, msg.error))
        else:
            fut.set_result(msg.result)

    def connection_lost(self, exc: BaseException | None = None) -> None:
        self._lost = exc or ConnectionLost("transport closed")
        for name, fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionLost(f"{name}: transport closed"))
        self._pending.clear()
        for w in self._watches.values():
            if not w.closed.done():
                w.closed.set_exception(ConnectionLost("transport closed"))
                w.closed.exception()  # mark retrieved: nobody may be waiting on it

    # -- requests ---------------------------------------------------------------------------

    async def call(self, method: str, params: Any) -> asyncio.Future[msgspec.Raw]:
        """Send a request; return the future of its raw result (replies may come in any order)."""
        if self._lost is not None:
            raise ConnectionLost(str(self._lost))
        rid = next(self._ids)
        fut: asyncio.Future[msgspec.Raw] = self._loop.create_future()
        self._pending[rid] = (method, fut)
        await self._send(self._encode({"id": rid, "method": method, "params": params}))
        return fut

    async def request(self, method: str, params: Any) -> msgspec.Raw:
        return await (await self.call(method, params))

    async def notify(self, method: str, params: Any) -> None:
        await self._send(self._encode({"method": method, "params": params}))

    async def initialize(self) -> None:
        await self.request("initialize", {"clientName": "bench"})
        await self.notify("initialized", {})

    # -- process helpers --------------------------------------------------------------------

    def watch(self, process_id: str) -> ProcWatch:
        """Register interest in a process; do it before starting it (output may come first)."""
        w = ProcWatch(self._loop)
        self._watches[process_id] = w
        return w

    def unwatch(self, process_id: str) -> None:
        self._watches.pop(process_id, None)

    def start_params(
        self, process_id: str, argv: list[str], *, tty: bool = False, pipe_stdin: bool = False
    ) -> dict[str, Any]:
        return {
            "processId": process_id,
            "argv": argv,
            "cwd": self.cwd,
            "env": {"PATH": "/usr/bin:/bin"},
            "tty": tty,
            "pipeStdin": pipe_stdin,
        }

    async def start(
        self, process_id: str, argv: list[str], *, tty: bool = False, pipe_stdin: bool = False
    ) -> asyncio.Future[msgspec.Raw]:
        params = self.start_params(process_id, argv, tty=tty, pipe_stdin=pipe_stdin)
        return await self.call("process/start", params)

    async def write(self, process_id: str, data: bytes) -> asyncio.Future[msgspec.Raw]:
        params = {
            "processId": process_id,
            "chunk": base64.b64encode(data).decode("ascii"),
            "writeId": f"w{next(self._write_ids)}",
        }
        return await self.call("process/write", params)

    async def read(
        self, process_id: str, *, after_seq: int = 0, max_bytes: int | None = None, wait_ms: int = 0
    ) -> asyncio.Future[msgspec.Raw]:
        params = {
            "processId": process_id,
            "afterSeq": after_seq,
            "maxBytes": max_bytes,
            "waitMs": wait_ms,
        }
        return await self.call("process/read", params)

    async def terminate(self, process_id: str) -> asyncio.Future[msgspec.Raw]:
        return await self.call("process/terminate", {"processId": process_id})
