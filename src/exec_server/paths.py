"""Paths on the wire: an absolute path or a ``file://`` URI, in both dialects (Part A §A1)."""

from __future__ import annotations

import os
import posixpath

from .errors import invalid_params


def parse_path(value: str, field: str) -> str:
    """Turn a wire path into a lexically normalised absolute path.

    ``file://`` URIs are percent-decoded (bytes that are not UTF-8 survive as the OS sees them);
    a relative path or another scheme is -32602 naming ``field``. Symlinks are not resolved.
    """
    if value.startswith("file:"):
        from urllib.parse import unquote_to_bytes, urlsplit  # on first use of a URI

        parts = urlsplit(value)
        if parts.netloc not in ("", "localhost"):
            raise invalid_params(f"{field} must be a local file:// URI, got host `{parts.netloc}`")
        path = os.fsdecode(unquote_to_bytes(parts.path))
        if not path.startswith("/"):
            raise invalid_params(f"{field} must be an absolute file:// URI, got `{value}`")
    elif value.startswith("/"):
        path = value
    else:
        scheme, sep, _ = value.partition("://")
        if sep and scheme.isalnum():
            raise invalid_params(
                f"{field} must be an absolute path or a file:// URI, got `{value}`"
            )
        raise invalid_params(
            f"{field} must be an absolute path or a file:// URI, got relative `{value}`"
        )
    normalised = posixpath.normpath(path)
    if normalised.startswith("//"):
        normalised = "/" + normalised.lstrip("/")
    return normalised


_URI_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~/")
"""Bytes a path keeps as they are in a URI: RFC 3986's unreserved characters and ``/``."""
_URI_SAFE_BYTES = bytes(sorted(_URI_SAFE))
_URI_QUOTED = tuple(chr(b) if b in _URI_SAFE else f"%{b:02X}" for b in range(256))


def to_file_uri(path: str) -> str:
    """An absolute path as a ``file://`` URI, every other byte percent-encoded (the same
    as ``urllib.parse.quote_from_bytes(path, safe="/")``, without importing it at start-up)."""
    return "file://" + quote_path_bytes(os.fsencode(path))


def quote_path_bytes(data: bytes) -> str:
    """``data`` with every byte but RFC 3986's unreserved ones and ``/`` percent-encoded:
    a URI's path, or one name to add to a directory's URI."""
    if not data.translate(None, _URI_SAFE_BYTES):  # nothing to encode, the usual case
        return data.decode("ascii")
    return "".join(map(_URI_QUOTED.__getitem__, data))
