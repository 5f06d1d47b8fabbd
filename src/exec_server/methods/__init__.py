"""The method table: every JSON-RPC method the server answers, with its params type and family.

Each handler takes the connection and its decoded params and returns the result, or an
awaitable of it when it has to wait. Families gate methods on the handshake (PROTOCOL.md
Part B §3.2): ``exec`` for ``process/*``, ``filesystem`` for ``fs/*``, ``http`` for
``http/request``; ``None`` means usable at any time.

:data:`REQUESTS` decodes a whole well-formed request in one step: a union of one struct per
method, told apart by ``method``, each holding its id and its decoded params. Anything it
does not take (a notification, an unknown method, bad params, broken JSON) goes the long way
through :mod:`..rpc` and :meth:`Method.decode`, which classify it and word the error.

Decoders are built on first use, not at registration: a server started per session (stdio)
answers ``initialize`` before it has paid for the decoders of the other methods (their
building was ~15% of the interpreter's own start-up; bench/README.md, "Operating it").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Union

import msgspec

from ..errors import invalid_params, invalid_request

if TYPE_CHECKING:
    from ..connection import Connection

Handler = Callable[["Connection", Any], Any]


class Method:
    """One method: its name, params type, family (for the handshake gate) and handler."""

    __slots__ = ("_decoder", "_request_type", "family", "handler", "name", "params_type")

    def __init__(self, name: str, params_type: Any, family: str | None, handler: Handler) -> None:
        self.name = name
        self.params_type = params_type
        self.family = family
        self.handler = handler
        self._decoder: msgspec.json.Decoder[Any] | None = None
        self._request_type: type[TypedRequest] | None = None

    @property
    def request_type(self) -> type[TypedRequest]:
        """``{"id", "method": <name>, "params"}`` with params of ``params_type`` (see
        :data:`REQUESTS`), made on first use and entered in :data:`BY_REQUEST_TYPE`."""
        if self._request_type is None:
            self._request_type = msgspec.defstruct(  # type: ignore[assignment]
                f"Request[{self.name}]",
                [("params", self.params_type)],
                bases=(TypedRequest,),
                tag_field="method",
                tag=self.name,
            )
            BY_REQUEST_TYPE[self._request_type] = self  # type: ignore[index]
        return self._request_type  # type: ignore[return-value]

    def decode(self, raw: msgspec.Raw | bytes) -> Any:
        """Decode params, or -32602 with a message naming the offending field."""
        decoder = self._decoder
        if decoder is None:
            decoder = self._decoder = msgspec.json.Decoder(self.params_type)
        try:
            return decoder.decode(raw)
        except (msgspec.DecodeError, RecursionError) as exc:
            # DecodeError covers ValidationError and what the envelope let through unchecked
            # (invalid UTF-8 inside a string of params, kept raw until now).
            if bytes(raw).strip() == b"{}":  # parameterless methods accept {} as well as null
                try:
                    return decoder.decode(b"null")
                except msgspec.ValidationError:
                    pass
            if isinstance(exc, RecursionError):
                exc = msgspec.DecodeError("params are nested too deeply")
            raise invalid_params(f"invalid params for {self.name}: {exc}") from None


class TypedRequest(msgspec.Struct, kw_only=True, gc=False):
    """A request decoded with its params; each method's subclass gives ``params`` its type
    (see :data:`REQUESTS`). Other members of the envelope (``jsonrpc``) are ignored, as on
    the long way."""

    id: int | str
    """Still to be checked against the id range (:func:`..rpc.is_valid_id`)."""
    params: Any


METHODS: dict[str, Method] = {}
BY_REQUEST_TYPE: dict[type[TypedRequest], Method] = {}


def method(name: str, params_type: Any, family: str | None) -> Callable[[Handler], Handler]:
    """Register a handler under ``name``."""

    def register(handler: Handler) -> Handler:
        METHODS[name] = Method(name, params_type, family, handler)
        return handler

    return register


def refuse_when_network_confined(connection: Connection, refused: str) -> None:
    """-32600 (``"<refused>: this server's confinement (--confine) restricts the network"``)
    when the operator's confinement keeps processes off the network: the methods that reach
    out from the server's own process (``http/request``, ``forward/open``) obey it too."""
    confinement = connection.server.guards.confinement
    if confinement is not None and not confinement.allows_network:
        raise invalid_request(
            f"{refused}: this server's confinement (--confine) restricts the network"
        )


def _load() -> None:
    from . import capabilities, config, environment, forward, fs, fs_paths, http, process  # noqa: F401  (registration by import)


_load()

REQUESTS: msgspec.json.Decoder[TypedRequest]
"""Decodes a request for a known method with valid params; raises otherwise. Built on first
use (see the module docstring), with every method registered by then."""


def __getattr__(name: str) -> Any:
    if name != "REQUESTS":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    decoder = msgspec.json.Decoder(
        Union[tuple(m.request_type for m in METHODS.values())]  # noqa: UP007  (built at run time)
    )
    globals()["REQUESTS"] = decoder
    return decoder
