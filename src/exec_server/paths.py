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


def to_file_uri(path: str) -> str:
    """An absolute path as a ``file://`` URI, every other byte percent-encoded (the same
    as ``urllib.parse.quote_from_bytes(path, safe="/")``, without importing it at start-up)."""
    encoded = "".join(chr(b) if b in _URI_SAFE else f"%{b:02X}" for b in os.fsencode(path))
    return "file://" + encoded
