"""Requests the server sends to its client (JSON-RPC in the other direction), sans-I/O.

A connection owns one :class:`ServerRequests`: :meth:`~ServerRequests.begin` gives the next
id of the server's own id space (integers from 1, never reused on the connection) and a
future its caller awaits; the client's response (:class:`~.rpc.Response`) settles it with
:meth:`~ServerRequests.settle`. At most ``capacity`` are pending; :meth:`~ServerRequests.fail_all`
fails them when the connection ends. A caller that stops waiting (a timeout, a cancelled
task) cancels its future, which forgets the id; a late answer to it is then dropped.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from . import rpc

DEFAULT_CAPACITY = 256
"""Pending server requests per connection (the reference's bound for policy requests)."""


class ServerRequestError(Exception):
    """A server request that got no usable answer: ``code`` is the client's JSON-RPC error
    code, or None when there was no answer (cap reached, connection gone)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class ServerRequests:
    """The pending requests of one connection, keyed by the ids it gave them."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self._next_id = 1
        self._pending: dict[int, asyncio.Future[msgspec.Raw]] = {}
        self._closed = False

    def __len__(self) -> int:
        return len(self._pending)

    def begin(self, method: str, params: Any) -> tuple[bytes, asyncio.Future[msgspec.Raw]]:
        """The message to send and the future of its result (raw JSON). Raises
        :class:`ServerRequestError` when the connection is closed or ``capacity`` are pending."""
        if self._closed:
            raise ServerRequestError("the connection is closed")
        if len(self._pending) >= self.capacity:
            raise ServerRequestError(f"{self.capacity} server requests are already pending")
        request_id = self._next_id
        self._next_id += 1
        future: asyncio.Future[msgspec.Raw] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        future.add_done_callback(lambda _: self._pending.pop(request_id, None))
        return rpc.encode_request(request_id, method, params), future

    def settle(self, response: rpc.Response) -> bool:
        """Deliver a client's response. False when its id is none the server ever gave
        (a protocol error); a late answer to a request given up is dropped (True)."""
        request_id = response.id
        if not isinstance(request_id, int) or not 0 < request_id < self._next_id:
            return False
        future = self._pending.pop(request_id, None)
        if future is None or future.done():
            return True
        if response.result is not None:
            future.set_result(response.result)
        else:
            error = response.error or {}
            future.set_exception(
                ServerRequestError(str(error.get("message", "")), int(error.get("code", 0)))
            )
        return True

    def fail_all(self) -> None:
        """The connection ended: every pending request fails, and no new one starts."""
        self._closed = True
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(ServerRequestError("the connection closed"))
