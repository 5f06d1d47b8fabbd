"""The method table: every JSON-RPC method the server answers, with its params type and family.

Each handler takes the connection and its decoded params and returns the result, or an
awaitable of it when it has to wait. Families gate methods on the handshake (PROTOCOL.md
Part B §3.2): ``exec`` for ``process/*``, ``filesystem`` for ``fs/*``, ``http`` for
``http/request``; ``None`` means usable at any time.

Where each method lives: :data:`MODULES` names, for every module of this package, the
methods it answers and their family; the module itself registers each handler with its
params type (``@method(name, ParamsType, family)``), which is where a method's wire shape is
found. A module is imported the first time one of its methods is decoded, so a server
started per session (stdio) answers ``initialize`` without having imported process
control, the file system, forwarding, HTTP and discovery, their wire structs and the domain
modules behind them (bench/README.md, "Start-up"). Only :mod:`.environment`, the
handshake's own, is imported with this package. :func:`load_all` imports every module
(tests do, to check that the table and the registrations agree).

:data:`REQUESTS` decodes a whole well-formed request in one step: a union of one struct per
method of the modules imported so far, told apart by ``method``, each holding its id and its
decoded params. Anything it does not take (a notification, an unknown method, a method whose
module is not imported yet, bad params, broken JSON) goes the long way through :mod:`..rpc`
and :meth:`Method.decode`, which imports the module, classifies the message and words the
error. Decoders are built on first use, not at registration.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Union

import msgspec

from ..errors import internal_error, invalid_params, invalid_request

if TYPE_CHECKING:
    from ..connection import Connection

Handler = Callable[["Connection", Any], Any]

MODULES: dict[str, tuple[str | None, tuple[str, ...]]] = {
    # module of this package: (the family gating its methods, the methods it registers)
    "environment": (None, ("initialize", "environment/info", "environment/status")),
    "process": (
        "exec",
        (
            "process/start",
            "process/read",
            "process/write",
            "process/terminate",
            "process/signal",
            "process/closeStdin",
            "process/resize",
            "process/list",
        ),
    ),
    "fs": (
        "filesystem",
        (
            "fs/readFile",
            "fs/writeFile",
            "fs/createDirectory",
            "fs/getMetadata",
            "fs/readDirectory",
            "fs/remove",
            "fs/copy",
            "fs/open",
            "fs/readBlock",
            "fs/writeBlock",
            "fs/close",
            "fs/walk",
        ),
    ),
    "fs_paths": ("filesystem", ("fs/canonicalize", "fs/watchMissing")),
    "http": ("http", ("http/request",)),
    "forward": (
        "forward",
        ("forward/open", "forward/write", "forward/credit", "forward/shutdown", "forward/close"),
    ),
    "capabilities": (
        "capability discovery",
        ("capabilityRoots/discoverV1", "capabilities/discoverV2"),
    ),
    "config": ("environment config", ("environmentConfig/read",)),
}
"""Every method by the module that answers it. A name here that its module does not
register, or a registration not named here, fails :func:`load_all`
(tests/test_startup.py)."""


class Method:
    """One method: its name, family (for the handshake gate), the module that answers it,
    and, once that module is imported, its params type and handler."""

    __slots__ = ("_decoder", "_params_type", "_request_type", "family", "handler", "module", "name")

    def __init__(self, name: str, module: str, family: str | None) -> None:
        self.name = name
        self.module = module
        self.family = family
        self.handler: Handler = self._load_then_handle
        """Replaced by the module's handler when the module is imported."""
        self._params_type: Any = _NOT_LOADED
        self._decoder: msgspec.json.Decoder[Any] | None = None
        self._request_type: type[TypedRequest] | None = None

    @property
    def loaded(self) -> bool:
        """Whether the module answering this method is imported (its handler registered)."""
        return self._params_type is not _NOT_LOADED

    def load(self) -> None:
        """Import the module answering this method (once; the import registers it)."""
        if self._params_type is _NOT_LOADED:
            importlib.import_module(f"{__name__}.{self.module}")
            if self._params_type is _NOT_LOADED:
                raise LookupError(f"{__name__}.{self.module} does not register {self.name}")

    def _load_then_handle(self, connection: Connection, params: Any) -> Any:
        """The handler until the module is imported, for a request that skips
        :meth:`decode` (``forward/write`` taken apart by slicing, in the connection)."""
        self.load()
        return self.handler(connection, params)

    @property
    def params_type(self) -> Any:
        """The type its params decode to (importing the module on first use)."""
        self.load()
        return self._params_type

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
        """Decode params, or -32602 with a message naming the offending field; -32603 when
        the module answering the method cannot be imported here."""
        decoder = self._decoder
        if decoder is None:
            try:
                params_type = self.params_type
            except ImportError as exc:
                raise internal_error(f"{self.name} is unavailable on this server: {exc}") from None
            decoder = self._decoder = msgspec.json.Decoder(params_type)
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


_NOT_LOADED: Any = object()


class TypedRequest(msgspec.Struct, kw_only=True, gc=False):
    """A request decoded with its params; each method's subclass gives ``params`` its type
    (see :data:`REQUESTS`). Other members of the envelope (``jsonrpc``) are ignored, as on
    the long way."""

    id: int | str
    """Still to be checked against the id range (:func:`..rpc.is_valid_id`)."""
    params: Any


METHODS: dict[str, Method] = {
    name: Method(name, module, family)
    for module, (family, names) in MODULES.items()
    for name in names
}
BY_REQUEST_TYPE: dict[type[TypedRequest], Method] = {}


def method(name: str, params_type: Any, family: str | None) -> Callable[[Handler], Handler]:
    """Register a handler under ``name``, which :data:`MODULES` must list for the
    handler's module with the same family (LookupError otherwise, at import)."""

    def register(handler: Handler) -> Handler:
        entry = METHODS.get(name)
        where = f"{__name__}.{entry.module}" if entry is not None else None
        if entry is None or where != handler.__module__ or entry.family != family:
            raise LookupError(
                f"{handler.__module__} registers {name!r} (family {family!r}), which "
                f"MODULES in {__name__} does not list for that module and family"
            )
        entry._params_type = params_type
        entry.handler = handler
        globals().pop("REQUESTS", None)  # made again, with this method, on next use
        return handler

    return register


def load_all() -> None:
    """Import every module of :data:`MODULES` (the whole table registered)."""
    for name in MODULES:
        importlib.import_module(f"{__name__}.{name}")
    for entry in METHODS.values():
        entry.load()  # LookupError for a method its module did not register


def refuse_when_network_confined(connection: Connection, refused: str) -> None:
    """-32600 (``"<refused>: this server's confinement (--confine) restricts the network"``)
    when the operator's confinement keeps processes off the network: the methods that reach
    out from the server's own process (``http/request``, ``forward/open``) obey it too."""
    confinement = connection.server.guards.confinement
    if confinement is not None and not confinement.allows_network:
        raise invalid_request(
            f"{refused}: this server's confinement (--confine) restricts the network"
        )


REQUESTS: msgspec.json.Decoder[TypedRequest]
"""Decodes a request for a known method of an imported module with valid params; raises
otherwise. Built on first use, and again after a module registers more methods."""


def __getattr__(name: str) -> Any:
    if name != "REQUESTS":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    loaded = [m.request_type for m in METHODS.values() if m.loaded]
    decoder = msgspec.json.Decoder(Union[tuple(loaded)])  # noqa: UP007  (built at run time)
    globals()["REQUESTS"] = decoder
    return decoder


from . import environment  # noqa: E402, F401  (the handshake's methods, needed first anyway)
