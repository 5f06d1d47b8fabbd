"""The JSON-RPC envelope, sans-I/O: bytes in, a classified message out; replies out as bytes.

Messages are told apart structurally, in the reference's order (PROTOCOL.md Part B §2.1):
a request has a valid id and a method; a notification has a method and no id; a response has
an id and a result; an error has an id and an error object. Anything else is
:class:`Malformed`, which the connection answers with id -1 and survives; that includes a
method with an id that is not one (a float, null, a bool, beyond i64), as 0.169 answers it
(0.128 and the spec read it as a notification and closed the connection).
Params stay undecoded (``msgspec.Raw``) until the handler's type is known.
"""

from __future__ import annotations

from typing import Any

import msgspec

RequestId = int | str

I64_MIN = -(2**63)
I64_MAX = 2**63 - 1

_NO_PARAMS = b"null"


# Messages are msgspec Structs rather than dataclasses: built in C, a few per request.


class _Envelope(msgspec.Struct):
    id: Any = msgspec.UNSET
    method: Any = msgspec.UNSET
    params: msgspec.Raw = msgspec.Raw()
    result: msgspec.Raw = msgspec.Raw()
    error: Any = msgspec.UNSET


_envelope_decoder = msgspec.json.Decoder(_Envelope)


class Request(msgspec.Struct, frozen=True):
    id: RequestId
    method: str
    params: msgspec.Raw | bytes
    """Raw JSON of ``params``; ``null`` when absent."""


class Notification(msgspec.Struct, frozen=True):
    method: str
    params: msgspec.Raw | bytes


class Response(msgspec.Struct, frozen=True):
    """A response or error sent *by the client*, to a request the server sent it
    (:mod:`server_requests`): ``result`` (raw JSON) or ``error`` (``{code, message}``)."""

    id: RequestId
    result: msgspec.Raw | None = None
    error: dict[str, Any] | None = None


class Malformed(msgspec.Struct, frozen=True):
    reason: str


Message = Request | Notification | Response | Malformed


def is_valid_id(value: object) -> bool:
    """A string, or an integer that fits in a signed 64-bit integer (bool is not an id)."""
    if type(value) is str:
        return True
    return type(value) is int and I64_MIN <= value <= I64_MAX


def decode(data: bytes | bytearray | memoryview | str) -> Message:
    """Classify one inbound message. Never raises."""
    try:
        env = _envelope_decoder.decode(data)
    except (msgspec.DecodeError, UnicodeError) as exc:
        return Malformed(str(exc))
    except RecursionError:  # an id or error nested thousands deep; serde stops at 128
        return Malformed("recursion limit exceeded")
    method = env.method
    valid_id = is_valid_id(env.id)
    params: msgspec.Raw | bytes = env.params if len(env.params) else _NO_PARAMS
    if type(method) is str:
        if valid_id:
            return Request(env.id, method, params)
        if env.id is msgspec.UNSET:
            return Notification(method, params)
        return Malformed(_invalid_id_reason(env.id))
    if valid_id and len(env.result) > 0:
        return Response(env.id, result=env.result)
    if valid_id and _is_error_object(env.error):
        return Response(env.id, error=env.error)
    return Malformed("data did not match any variant of JSON-RPC message")


def _invalid_id_reason(value: object) -> str:
    """Why an id is not one, in the reference's (serde's) words."""
    if type(value) is int and not -(2**64) < value < 2**64:
        return f"invalid type: integer `{value}` as u128, expected any value"
    return "data did not match any variant of untagged enum RequestId"


def _is_error_object(value: object) -> bool:
    """The reference's error shape: ``{"code": <i64>, "message": <string>, "data"?: any}``."""
    if not isinstance(value, dict):
        return False
    return (
        is_valid_id(value.get("code"))
        and type(value.get("code")) is int
        and type(value.get("message")) is str
    )


_encode = msgspec.json.Encoder().encode


class _OutboundRequest(msgspec.Struct, gc=False):
    id: RequestId
    method: str
    params: Any


def encode_request(request_id: RequestId, method: str, params: Any) -> bytes:
    """A request from the server to the client (``params``: any wire value)."""
    return _encode(_OutboundRequest(request_id, method, params))


class _Result(msgspec.Struct, gc=False):
    id: RequestId
    result: Any


def encode_result(request_id: RequestId, result: Any) -> bytes:
    """A success reply; ``result`` is any wire value (a result struct, usually)."""
    try:
        return _encode(_Result(request_id, result))
    except UnicodeEncodeError:  # a path that is not UTF-8 (see lossy)
        return _encode(_Result(request_id, _lossy_values(msgspec.to_builtins(result))))


def encode_error(request_id: RequestId, code: int, message: str) -> bytes:
    """An error reply, in the reference's shape (no ``data``, no ``jsonrpc``)."""
    try:
        text = _encode(message)
    except UnicodeEncodeError:  # a path that is not UTF-8 (see lossy)
        text = _encode(lossy(message))
    return b'{"error":{"code":%d,"message":%s},"id":%s}' % (code, text, _encode(request_id))


def lossy(text: str) -> str:
    """``text`` as UTF-8 can carry it. A path whose bytes are not UTF-8 reaches a reply as
    ``os.fsdecode`` gives it, with lone surrogates that no JSON encoder takes; each such byte
    becomes U+FFFD, as in the reference's lossy conversion."""
    try:
        data = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that does not stand for a byte
        data = text.encode("utf-8", "surrogatepass")
    return data.decode("utf-8", "replace")


def _lossy_values(value: Any) -> Any:
    if isinstance(value, str):
        return lossy(value)
    if isinstance(value, dict):
        return {lossy(k): _lossy_values(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_lossy_values(v) for v in value]
    return value
