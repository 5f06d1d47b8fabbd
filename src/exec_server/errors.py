"""JSON-RPC error codes and the one exception type every handler raises.

Codes follow the reference (PROTOCOL.md Part B §2.2): handlers raise :class:`RpcError`
and the connection turns it into an error reply; nothing else about errors leaks out.
"""

from __future__ import annotations

INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
NOT_FOUND = -32004


class RpcError(Exception):
    """An error reply: a JSON-RPC code and a message a person can act on."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"RpcError({self.code}, {self.message!r})"


def invalid_request(message: str) -> RpcError:
    return RpcError(INVALID_REQUEST, message)


def invalid_params(message: str) -> RpcError:
    return RpcError(INVALID_PARAMS, message)


def internal_error(message: str) -> RpcError:
    return RpcError(INTERNAL_ERROR, message)


def not_found(message: str) -> RpcError:
    return RpcError(NOT_FOUND, message)


def os_error_message(exc: OSError) -> str:
    """The OS reason in the reference's shape: ``No such file or directory (os error 2)``.

    The file name, when the OS error carries one, is appended so a person knows which path
    failed (the reference omits it; clients only read the text).
    """
    reason = exc.strerror or str(exc)
    text = f"{reason} (os error {exc.errno})" if exc.errno is not None else reason
    if exc.filename is not None:
        text += f": {exc.filename!s}"
    return text
