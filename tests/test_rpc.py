"""Unit tests of the sans-I/O envelope: classification (Part B §2.1) and encoding."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exec_server import rpc


def _params(message: rpc.Message) -> object:
    assert isinstance(message, rpc.Request | rpc.Notification)
    return json.loads(bytes(message.params))


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"{}",
        b'{"id":1}',
        b"[]",
        b'[{"id":1,"method":"initialize"}]',
        b'"initialize"',
        b"42",
        b"null",
        b"",
        b'{"id":1,"method":5}',
        b'{"method":null}',
        b'{"id":1,"error":{"code":1}}',
        b'{"id":1,"error":{"code":"1","message":"x"}}',
        b'{"id":1,"error":{"code":1.5,"message":"x"}}',
        b'{"id":1,"error":"boom"}',
        b'{"id":null,"result":1}',
        b'{"id":1.5,"result":1}',
        b'{"method":"x"} {}',
        b"\xff\xfe{}",
        b'{"id":1e400,"method":"x"}',
    ],
)
def test_unparseable_or_shapeless_input_is_malformed(data: bytes) -> None:
    message = rpc.decode(data)
    assert type(message) is rpc.Malformed
    assert message.reason


def test_not_json_reason_names_the_problem() -> None:
    message = rpc.decode(b"not json")
    assert type(message) is rpc.Malformed
    assert "malformed" in message.reason.lower()


def test_shapeless_object_reason_matches_the_reference_wording() -> None:
    message = rpc.decode(b'{"id":1}')
    assert message == rpc.Malformed("data did not match any variant of JSON-RPC message")


@pytest.mark.parametrize("data", [b'{"id":' + b"[" * 100_000, b'{"error":' + b"[" * 100_000])
def test_deep_nesting_is_malformed_not_an_exception(data: bytes) -> None:
    # Regression: msgspec raised RecursionError out of decode().
    closed = data + b"]" * 100_000 + (b',"id":1}' if data.startswith(b'{"error"') else b"}")
    for candidate in (data, closed):
        assert type(rpc.decode(candidate)) is rpc.Malformed


def test_str_with_lone_surrogate_is_malformed() -> None:
    # Regression: a str that cannot be UTF-8 encoded raised UnicodeEncodeError.
    assert type(rpc.decode('{"method":"\ud800"}')) is rpc.Malformed


@pytest.mark.parametrize(
    ("raw_id", "expected"),
    [
        ("1", 1),
        ("0", 0),
        ("-1", -1),
        ('"abc"', "abc"),
        ('""', ""),
        ('"1"', "1"),
        (str(2**63 - 1), 2**63 - 1),
        (str(-(2**63)), -(2**63)),
    ],
)
def test_request_with_valid_id(raw_id: str, expected: object) -> None:
    message = rpc.decode(f'{{"id":{raw_id},"method":"process/read","params":{{"a":1}}}}')
    assert message == rpc.Request(expected, "process/read", message.params)  # type: ignore[arg-type, union-attr]
    assert type(message.id) is type(expected)  # type: ignore[union-attr]
    assert _params(message) == {"a": 1}


@pytest.mark.parametrize(
    "raw_id",
    [
        "null",
        "1.5",
        "1.0",
        "true",
        "false",
        "[1]",
        '{"a":1}',
        str(2**63),
        str(2**64),
        str(-(2**63) - 1),
        "1" * 40,
    ],
)
def test_request_with_invalid_id_is_malformed(raw_id: str) -> None:
    message = rpc.decode(f'{{"id":{raw_id},"method":"process/start","params":[1]}}')
    assert type(message) is rpc.Malformed
    assert "RequestId" in message.reason or "as u128" in message.reason


def test_notification_without_params_reads_params_as_null() -> None:
    message = rpc.decode(b'{"method":"initialized"}')
    assert type(message) is rpc.Notification
    assert _params(message) is None


def test_request_without_params_reads_params_as_null() -> None:
    message = rpc.decode(b'{"id":7,"method":"initialize"}')
    assert type(message) is rpc.Request
    assert _params(message) is None


def test_explicit_null_and_scalar_params_are_kept_raw() -> None:
    assert _params(rpc.decode(b'{"id":1,"method":"m","params":null}')) is None
    assert _params(rpc.decode(b'{"id":1,"method":"m","params":"s"}')) == "s"


def test_jsonrpc_member_and_unknown_members_are_ignored() -> None:
    message = rpc.decode(
        b'{"jsonrpc":"2.0","id":"x","method":"m","trace":{"traceparent":"00"},"extra":[1,2]}'
    )
    assert type(message) is rpc.Request
    assert (message.id, message.method) == ("x", "m")


def test_request_wins_over_result_when_both_present() -> None:
    assert type(rpc.decode(b'{"id":1,"method":"m","result":1}')) is rpc.Request


@pytest.mark.parametrize(
    "data",
    [
        b'{"id":1,"result":null}',
        b'{"id":"a","result":{"x":1}}',
        b'{"id":1,"error":{"code":-32600,"message":"no"}}',
        b'{"id":1,"error":{"code":1,"message":"no","data":[1]}}',
    ],
)
def test_client_responses_and_errors_are_responses(data: bytes) -> None:
    assert type(rpc.decode(data)) is rpc.Response


def test_str_input_is_accepted_like_bytes() -> None:
    message = rpc.decode('{"id":"é","method":"m"}')
    assert message == rpc.Request("é", "m", message.params)  # type: ignore[union-attr]


def test_whitespace_around_the_message_is_fine() -> None:
    assert type(rpc.decode(b' \t{"id":1,"method":"m"}\r\n')) is rpc.Request


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        (0, True),
        (2**63 - 1, True),
        (2**63, False),
        (-(2**63), True),
        (-(2**63) - 1, False),
        ("", True),
        (True, False),
        (1.0, False),
        (None, False),
        ([], False),
    ],
)
def test_is_valid_id(value: object, valid: bool) -> None:
    assert rpc.is_valid_id(value) is valid


def test_encode_result_has_no_jsonrpc_member_and_keeps_id_type() -> None:
    assert json.loads(rpc.encode_result("7", {"a": 1})) == {"id": "7", "result": {"a": 1}}
    assert json.loads(rpc.encode_result(7, None)) == {"id": 7, "result": None}


def test_encode_error_shape() -> None:
    encoded = rpc.encode_error(-1, -32600, 'bad "input"\n')
    assert json.loads(encoded) == {"error": {"code": -32600, "message": 'bad "input"\n'}, "id": -1}
    assert b"jsonrpc" not in encoded and b"data" not in encoded


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.binary(max_size=512))
def test_decode_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    message = rpc.decode(data)
    assert isinstance(message, rpc.Request | rpc.Notification | rpc.Response | rpc.Malformed)


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    st.dictionaries(
        st.sampled_from(["id", "method", "params", "result", "error", "jsonrpc", "x"]),
        _json_values,
    )
)
def test_classification_follows_the_reference_order(obj: dict[str, object]) -> None:
    message = rpc.decode(json.dumps(obj).encode())
    has_valid_id = "id" in obj and rpc.is_valid_id(obj["id"])
    error = obj.get("error")
    error_shape = (
        isinstance(error, dict)
        and type(error.get("code")) is int
        and rpc.is_valid_id(error.get("code"))
        and isinstance(error.get("message"), str)
    )
    expected: type
    if isinstance(obj.get("method"), str):
        if has_valid_id:
            expected = rpc.Request
        else:
            expected = rpc.Malformed if "id" in obj else rpc.Notification
    elif has_valid_id and ("result" in obj or error_shape):
        expected = rpc.Response
    else:
        expected = rpc.Malformed
    assert type(message) is expected
    if expected is rpc.Request:
        assert message.id == obj["id"]  # type: ignore[union-attr]
        assert type(message.id) is type(obj["id"])  # type: ignore[union-attr]
    if expected in (rpc.Request, rpc.Notification):
        assert _params(message) == obj.get("params")


_ids = st.sampled_from(
    [1, 0, -7, "x", "", None, 1.5, True, 2**63 - 1, 2**63, 2**64 - 1, -(2**63) - 1]
)
_method_names = st.sampled_from(
    ["process/read", "process/write", "initialize", "fs/close", "environment/info", "no/such", 5]
)
_some_params = st.one_of(
    st.none(),
    st.sampled_from(
        [
            {},
            {"processId": "p"},
            {"processId": "p", "waitMs": 5, "afterSeq": 2},
            {"processId": "p", "maxBytes": -1},
            {"processId": 1},
            {"processId": "p", "chunk": "aGk="},
            {"processId": "p", "chunk": "not base64!"},
            {"clientName": "c"},
            {"handleId": "h"},
        ]
    ),
    st.dictionaries(st.sampled_from(["processId", "waitMs", "x"]), st.integers() | st.text()),
)


@settings(max_examples=400, deadline=None)
@given(_ids, _method_names, _some_params, st.booleans(), st.booleans())
def test_the_one_step_decode_agrees_with_the_long_way(
    request_id: object, method: object, params: object, with_id: bool, with_params: bool
) -> None:
    """What methods.REQUESTS takes (with an id in range) is exactly what rpc.decode and
    Method.decode would make of it; whatever it refuses still has the long way."""
    from exec_server.methods import BY_REQUEST_TYPE, METHODS, load_all

    load_all()  # every method module imported: the one-step decoder knows every method
    from exec_server.methods import REQUESTS

    message: dict[str, object] = {"method": method}
    if with_id:
        message["id"] = request_id
    if with_params:
        message["params"] = params
    data = json.dumps(message).encode()
    try:
        typed = REQUESTS.decode(data)
    except msgspec.DecodeError:
        return
    if not rpc.is_valid_id(typed.id):
        return  # the connection sends these the long way too
    classified = rpc.decode(data)
    assert isinstance(classified, rpc.Request)
    assert classified.id == typed.id and type(classified.id) is type(typed.id)
    assert METHODS[classified.method] is BY_REQUEST_TYPE[type(typed)]
    assert METHODS[classified.method].decode(classified.params) == typed.params
