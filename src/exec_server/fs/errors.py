"""The reference's mapping of filesystem failures to JSON-RPC errors (PROTOCOL.md Part B §9)."""

from __future__ import annotations

import errno

from ..errors import RpcError, internal_error, invalid_request, not_found, os_error_message

_INVALID_INPUT_OR_DENIED = frozenset({errno.EINVAL, errno.EACCES, errno.EPERM})


def fs_error(exc: OSError) -> RpcError:
    """Not found → -32004; invalid input or permission denied → -32600; else -32603.

    The message is the OS reason (``No such file or directory (os error 2)``) followed by the
    path the OS named, so a person can tell which of two paths failed.
    """
    message = os_error_message(exc)
    if exc.errno == errno.ENOENT:
        return not_found(message)
    if exc.errno in _INVALID_INPUT_OR_DENIED:
        return invalid_request(message)
    return internal_error(message)


def invalid_path_error(exc: ValueError) -> RpcError:
    """A path the OS cannot even be asked about (an embedded NUL byte): invalid input, -32600."""
    return invalid_request(f"invalid path: {exc}")
