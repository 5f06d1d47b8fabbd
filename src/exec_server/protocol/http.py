"""Wire types of ``http/request`` and its body notifications (imported with
:mod:`..methods.http`)."""

from __future__ import annotations

from typing import Literal

import msgspec

from . import U64, _Params, _Wire

# ---- executor-side HTTP (PROTOCOL.md Part B §4.6) -----------------------------------------


class HttpHeader(_Wire):
    name: str
    value: str


class HttpRequestHeader(_Wire):
    """A header to send: ``value``, followed by the executor's ``$valueEnvVar`` when named
    (0.169 ``httpHeaderEnvVars``; ``value`` stays required, as in the reference)."""

    name: str
    value: str
    value_env_var: str | None = None


class HttpRequestParams(_Params):
    """``redirectPolicy`` (0.169): ``follow`` (default) or ``stop``."""

    method: str
    url: str
    request_id: str
    headers: list[HttpRequestHeader] = msgspec.field(default_factory=list)
    body_base64: bytes | None = None
    timeout_ms: U64 | None = None
    stream_response: bool = False
    redirect_policy: Literal["follow", "stop"] | None = None


class HttpRequestResult(_Wire):
    status: int
    headers: list[HttpHeader]
    body_base64: bytes


class HttpBodyDelta(_Wire):
    """Params of the ``http/request/bodyDelta`` notification."""

    request_id: str
    seq: int
    delta_base64: bytes
    done: bool
    error: str | None


class HttpBodyDeltaNotification(_Wire):
    method: str
    params: HttpBodyDelta
