"""Output chunks are base64 exactly as the standard library writes it, on every path: the
SSSE3 path, the portable pair table, and the msgspec fallback of installs without the C helper."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exec_server import protocol

from .support import built_or_skip

Enclose = Callable[[bytes, bytes, bytes], bytes]

PATHS: dict[str, Enclose | None] = {"msgspec": protocol._enclose_with_msgspec}
try:
    from exec_server import _base64
except ImportError:  # pragma: no cover - built wherever a C compiler is
    PATHS.update(native=None, portable=None)
else:
    PATHS.update(native=_base64.enclose, portable=_base64.enclose_portable)


@pytest.fixture(params=list(PATHS))
def enclose(request: pytest.FixtureRequest) -> Enclose:
    return built_or_skip(PATHS, request.param)


@pytest.mark.parametrize("size", [*range(0, 70), 4095, 4096, 4097, 65535, 65536, 65537])
def test_every_length_near_the_block_edges(enclose: Enclose, size: int) -> None:
    data = bytes((i * 37 + size) % 256 for i in range(size))
    assert enclose(b"<", data, b">") == b"<" + base64.b64encode(data) + b">"


@pytest.mark.parametrize("path", list(PATHS))
@settings(max_examples=300, deadline=None)
@given(
    prefix=st.binary(max_size=40),
    data=st.binary(max_size=3000),
    suffix=st.binary(max_size=40),
    offset=st.integers(min_value=0, max_value=15),
)
def test_any_bytes_at_any_alignment(
    path: str, prefix: bytes, data: bytes, suffix: bytes, offset: int
) -> None:
    implementation = built_or_skip(PATHS, path)
    # A view into a bigger buffer starts at any address, which a bytes object never does.
    chunk = memoryview(b"\xff" * offset + data)[offset:]
    encoded = implementation(prefix, chunk, suffix)  # type: ignore[arg-type]
    assert encoded == prefix + base64.b64encode(data) + suffix


def test_all_sixty_four_characters_come_out(enclose: Enclose) -> None:
    data = bytes(range(256)) * 3
    encoded = enclose(b"", data, b"")
    assert encoded == base64.b64encode(data)
    assert set(encoded) == set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def test_the_notification_is_the_json_the_protocol_names() -> None:
    data = bytes(range(256)) * 100
    message = protocol.output_notification(b'"p\\"1"', 7, b"stdout", data)
    assert json.loads(message) == {
        "method": "process/output",
        "params": {
            "processId": 'p"1',
            "seq": 7,
            "stream": "stdout",
            "chunk": base64.b64encode(data).decode(),
        },
    }
