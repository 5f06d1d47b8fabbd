"""``forward/write``'s fast way in: a request in the exact shape our client writes it, taken
apart by slicing instead of decoding (the connection tries it on every request that starts
like one, so it lives apart from :mod:`.forward` and its domain modules, which are imported
with the first ``forward/*`` request; see the method table in ``methods/__init__.py``)."""

from __future__ import annotations

from ..rpc import I64_MAX  # imported with the connection anyway


class SlicedWrite:
    """``forward/write`` params taken apart by :func:`slice_write`: ``data`` is the base64
    text, still in the message it came in. (A plain class: this module is imported at
    start-up, and making a NamedTuple class is the dearer of the two; bench/README.md.)"""

    __slots__ = ("data", "stream_id")

    def __init__(self, stream_id: str, data: memoryview) -> None:
        self.stream_id = stream_id
        self.data = data


WRITE_START = b'{"id":'
_WRITE_METHOD = b'"method":"forward/write","params":{"streamId":"'
_WRITE_DATA = b'","data":"'
_WRITE_END = b'"}}'


def slice_write(message: bytes) -> tuple[int, SlicedWrite] | None:
    """A ``forward/write`` request in the exact shape our client writes it,
    ``{"id":N,"method":"forward/write","params":{"streamId":"S","data":"..."}}``, taken
    apart by slicing: it is most of what an upload sends, and a JSON decoder would copy and
    check its hundreds of KiB of base64. None (nothing done) for any other shape, which then
    goes the general way (and gets its errors there)."""
    comma = message.find(b",", len(WRITE_START), len(WRITE_START) + 20)
    digits = message[len(WRITE_START) : comma]
    if comma < 0 or not digits.isdigit() or not message.startswith(_WRITE_METHOD, comma + 1):
        return None
    if (digits[0] == 0x30 and len(digits) > 1) or int(digits) > I64_MAX:
        return None  # not JSON, or not an id: the general way words the error
    start = comma + 1 + len(_WRITE_METHOD)
    middle = message.find(_WRITE_DATA, start, start + 130)
    if middle < 0 or not message.endswith(_WRITE_END):
        return None
    stream_id = message[start:middle]
    if b"\\" in stream_id or b'"' in stream_id or not 0 < len(stream_id) <= 128:
        return None
    try:
        name = stream_id.decode()
    except UnicodeDecodeError:
        return None
    data_start, data_end = middle + len(_WRITE_DATA), len(message) - len(_WRITE_END)
    # An escape or a quote: JSON this cannot take apart (``\/``, another member after data).
    if (
        message.find(b"\\", data_start, data_end) >= 0
        or message.find(b'"', data_start, data_end) >= 0
    ):
        return None
    return int(digits), SlicedWrite(name, memoryview(message)[data_start:data_end])
