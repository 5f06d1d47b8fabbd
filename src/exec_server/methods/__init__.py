"""The method table: every JSON-RPC method the server answers, with its params type and family.

Each handler takes the connection and its decoded params and returns the result, or an
awaitable of it when it has to wait. Families gate methods on the handshake (PROTOCOL.md
Part B §3.2): ``exec`` for ``process/*``, ``filesystem`` for ``fs/*``, ``http`` for
``http/request``; ``None`` means usable at any time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from ..errors import invalid_params
from ..protocol import encode

if TYPE_CHECKING:
    from ..connection import Connection

Handler = Callable[["Connection", Any], Any]


@dataclass(slots=True)
class Method:
    name: str
    params_type: Any
    family: str | None
    handler: Handler
    _decoder: msgspec.json.Decoder[Any] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._decoder = msgspec.json.Decoder(self.params_type)

    def decode(self, raw: msgspec.Raw | bytes) -> Any:
        """Decode params, or -32602 with a message naming the offending field."""
        try:
            return self._decoder.decode(raw)
        except msgspec.ValidationError as exc:
            if bytes(raw).strip() == b"{}":  # parameterless methods accept {} as well as null
                try:
                    return self._decoder.decode(b"null")
                except msgspec.ValidationError:
                    pass
            raise invalid_params(f"invalid params for {self.name}: {exc}") from None

    @staticmethod
    def encode(result: Any) -> bytes:
        return encode(result)


METHODS: dict[str, Method] = {}


def method(name: str, params_type: Any, family: str | None) -> Callable[[Handler], Handler]:
    """Register a handler under ``name``."""

    def register(handler: Handler) -> Handler:
        METHODS[name] = Method(name, params_type, family, handler)
        return handler

    return register


def _load() -> None:
    from . import environment, fs, http, process  # noqa: F401  (registration by import)


_load()
