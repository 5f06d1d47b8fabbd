"""Wire types of ``forward/*`` (ours; docs/forwarding.md), imported with
:mod:`..methods.forward`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import msgspec

from . import U64, Base64Encoder, FsSandbox, _Params, _Wire, encode

# ---- port forwarding (ours; docs/forwarding.md) ---------------------------------------------

StreamId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
WindowBytes = Annotated[int, msgspec.Meta(ge=1, le=2**40)]

DEFAULT_FORWARD_WINDOW = 1024 * 1024
"""A client's receive window when ``forward/open`` names none."""


class ForwardOpenParams(_Params):
    """``forward/open``: the client names the stream (as it names processes), so data can
    never arrive for an id it does not know yet. ``window``: bytes of the destination's it
    can take before it sends ``forward/credit``."""

    stream_id: StreamId
    host: str
    port: Port
    window: WindowBytes = DEFAULT_FORWARD_WINDOW
    sandbox: FsSandbox = None
    """A permission profile, as on ``fs/*``: with its network restricted, refused."""


class ForwardOpenResult(_Wire):
    """``window``: bytes the client may write before the server grants more."""

    stream_id: str
    window: int


class ForwardWriteParams(_Params):
    """``data`` is base64, decoded by the handler: msgspec's decoder for ``bytes`` is
    several times slower than a SIMD one, and this is most of what an upload sends."""

    stream_id: StreamId
    data: str


class ForwardCreditParams(_Params):
    """``forward/credit`` (both ways): the sender of it can take ``bytes`` more."""

    stream_id: StreamId
    granted: U64 = msgspec.field(name="bytes")


class ForwardStreamParams(_Params):
    """``forward/shutdown`` and ``forward/close``."""

    stream_id: StreamId


def base64_decoder(prefer_pybase64: bool) -> Callable[[str | memoryview], bytes]:
    """Strict base64 decoding (ValueError for a character outside the alphabet, or bad
    padding): pybase64's SIMD decoder when asked for (and installed), else binascii's."""
    if prefer_pybase64:
        try:
            from pybase64 import b64decode
        except ImportError:
            pass
        else:
            return lambda text: b64decode(text, validate=True)
    import binascii

    return lambda text: binascii.a2b_base64(text, strict_mode=True)


class ForwardNotifications:
    """Encodes ``forward/data``, ``forward/credit``, ``forward/eof`` and ``forward/closed``
    straight to bytes (data is most of what a busy forward sends)."""

    __slots__ = ("_b64encode",)

    def __init__(self, b64encode: Base64Encoder) -> None:
        self._b64encode = b64encode

    def data(self, stream_id: str, data: bytes | memoryview) -> bytes:
        prefix = b'{"method":"forward/data","params":{"streamId":%s,"data":"' % encode(stream_id)
        # Both encoders take any buffer: a read is encoded where it landed, without a copy.
        return b"".join((prefix, self._b64encode(data), b'"}}'))  # type: ignore[arg-type]

    def credit(self, stream_id: str, granted: int) -> bytes:
        return b'{"method":"forward/credit","params":{"streamId":%s,"bytes":%d}}' % (
            encode(stream_id),
            granted,
        )

    def eof(self, stream_id: str) -> bytes:
        return b'{"method":"forward/eof","params":{"streamId":%s}}' % encode(stream_id)

    def closed(self, stream_id: str, error: str | None) -> bytes:
        return b'{"method":"forward/closed","params":{"streamId":%s,"error":%s}}' % (
            encode(stream_id),
            encode(error),
        )
