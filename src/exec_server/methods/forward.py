"""``forward/*`` (ours): TCP streams to a host:port reached from the server, for port forwarding.

Maps :mod:`..forwarding` to the wire: requests to :class:`~..forwarding.streams.StreamTable`
calls, its events to notifications, its errors to JSON-RPC errors. The table belongs to the
connection (its streams end with it). ``docs/forwarding.md`` is the protocol's description.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import RpcError, internal_error, invalid_params, invalid_request
from ..forwarding.errors import ConnectFailed, ForwardError, StreamRefused, UnknownStream
from ..forwarding.streams import StreamTable
from ..protocol import (
    EmptyResult,
    base64_encoder,
)
from ..protocol.forward import (
    ForwardCreditParams,
    ForwardNotifications,
    ForwardOpenParams,
    ForwardOpenResult,
    ForwardStreamParams,
    ForwardWriteParams,
    base64_decoder,
)
from . import method, refuse_when_network_confined
from .forward_write import SlicedWrite

if TYPE_CHECKING:
    from ..connection import Connection

FORWARD = "forward"
R = TypeVar("R")


class _WireEvents:
    """A table's events as notifications to one connection."""

    __slots__ = ("_connection", "_encode")

    def __init__(self, connection: Connection, encode: ForwardNotifications) -> None:
        self._connection = connection
        self._encode = encode

    def data(self, stream_id: str, data: memoryview) -> bool:
        return self._connection.send_notification(self._encode.data(stream_id, data))

    def credit(self, stream_id: str, granted: int) -> None:
        self._connection.send_notification(self._encode.credit(stream_id, granted))

    def eof(self, stream_id: str) -> None:
        self._connection.send_notification(self._encode.eof(stream_id))

    def closed(self, stream_id: str, error: str | None) -> None:
        self._connection.send_notification(self._encode.closed(stream_id, error))

    def wait_for_room(self) -> Awaitable[None]:
        return self._connection.wait_for_room()


class _Forwarding:
    """A connection's forwarding: its stream table, and how it decodes what it is sent."""

    __slots__ = ("decode", "streams")

    def __init__(self, streams: StreamTable, decode: Callable[[str | memoryview], bytes]) -> None:
        self.streams = streams
        self.decode = decode

    def release(self) -> None:
        self.streams.release()


def _forwarding(connection: Connection) -> _Forwarding:
    def make() -> _Forwarding:
        server = connection.server
        limits = server.limits
        encode = ForwardNotifications(base64_encoder(server.runtime.pybase64))
        deny = server.guards.http_deny
        if deny:
            from ..http_guard import parse_networks  # loads httpx: only when there is a rule

        streams = StreamTable(
            _WireEvents(connection, encode),
            deny=parse_networks(deny) if deny else (),
            window_bytes=limits.forward_window_bytes,
            read_bytes=limits.forward_read_bytes,
            max_streams=limits.forward_max_streams,
            connect_timeout_s=limits.forward_connect_timeout_s,
        )
        return _Forwarding(streams, base64_decoder(server.runtime.pybase64))

    return connection.resources.get(_Forwarding, make)


def streams_of(connection: Connection) -> StreamTable:
    """The connection's forwarded streams (a table is made on first use)."""
    return _forwarding(connection).streams


def _rpc_error(method_name: str, exc: ForwardError) -> RpcError:
    if isinstance(exc, ConnectFailed):
        return internal_error(f"{method_name} failed: {exc.message}")
    if isinstance(exc, StreamRefused | UnknownStream):
        return invalid_request(f"{method_name} refused: {exc.message}")
    return invalid_request(f"{method_name}: {exc.message}")


def _mapped(name: str) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Domain errors of a synchronous handler as JSON-RPC errors."""

    def wrap(handler: Callable[..., R]) -> Callable[..., R]:
        @functools.wraps(handler)
        def mapped(connection: Connection, params: Any) -> R:
            try:
                return handler(connection, params)
            except ForwardError as exc:
                raise _rpc_error(name, exc) from None

        return mapped

    return wrap


@method("forward/open", ForwardOpenParams, FORWARD)
def open_stream(connection: Connection, params: ForwardOpenParams) -> Awaitable[ForwardOpenResult]:
    """Connect to ``host:port`` from here, unless the operator's rules forbid it."""
    refuse_when_network_confined(connection, "forward/open refused")
    if params.sandbox is not None:
        from ..sandbox.profile import ProfileError, parse_sandbox

        try:
            profile = parse_sandbox(params.sandbox)
        except ProfileError as error:
            raise invalid_params(error.message) from None
        if profile is not None and not profile.permissions.network:
            raise invalid_request(
                "forward/open refused: the request's sandbox profile restricts the network"
            )
    if not params.host or "\x00" in params.host:
        raise invalid_request("forward/open refused: host must be a name or an IP address")
    return _open(streams_of(connection), params)


async def _open(table: StreamTable, params: ForwardOpenParams) -> ForwardOpenResult:
    try:
        window = await table.open(params.stream_id, params.host, params.port, params.window)
    except ForwardError as exc:
        raise _rpc_error("forward/open", exc) from None
    return ForwardOpenResult(params.stream_id, window)


_EMPTY = EmptyResult()


@method("forward/write", ForwardWriteParams, FORWARD)
@_mapped("forward/write")
def write(connection: Connection, params: ForwardWriteParams | SlicedWrite) -> EmptyResult:
    forwarding = _forwarding(connection)
    try:
        data = forwarding.decode(params.data)
    except ValueError:
        raise invalid_params("invalid params for forward/write: data is not valid base64") from None
    forwarding.streams.write(params.stream_id, data)
    return _EMPTY


@method("forward/credit", ForwardCreditParams, FORWARD)
@_mapped("forward/credit")
def credit(connection: Connection, params: ForwardCreditParams) -> EmptyResult:
    streams_of(connection).credit(params.stream_id, params.granted)
    return _EMPTY


@method("forward/shutdown", ForwardStreamParams, FORWARD)
@_mapped("forward/shutdown")
def shutdown(connection: Connection, params: ForwardStreamParams) -> EmptyResult:
    streams_of(connection).shutdown(params.stream_id)
    return _EMPTY


@method("forward/close", ForwardStreamParams, FORWARD)
@_mapped("forward/close")
def close(connection: Connection, params: ForwardStreamParams) -> EmptyResult:
    streams_of(connection).close(params.stream_id)
    return _EMPTY
