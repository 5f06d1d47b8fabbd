"""The environment policy: how a child's environment is computed (PROTOCOL.md Part B §8).

Without a policy the child gets exactly the request's ``env``. With one, the server's own
environment is filtered and overlaid, step by step, and the request's ``env`` wins last.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Literal

CORE_VARIABLES = frozenset(
    name.casefold()
    for name in (
        "PATH",
        "SHELL",
        "TMPDIR",
        "TEMP",
        "TMP",
        "HOME",
        "LANG",
        "LC_ALL",
        "LC_CTYPE",
        "LOGNAME",
        "USER",
    )
)
"""Names kept by ``inherit: "core"`` (compared case-insensitively, as the reference since 0.128)."""

DEFAULT_EXCLUDES = ("*KEY*", "*SECRET*", "*TOKEN*")
"""Names dropped unless ``ignoreDefaultExcludes``: the usual places secrets hide."""

Inherit = Literal["all", "core", "none"]


@lru_cache(maxsize=1024)
def _segments(pattern: str) -> tuple[str, ...]:
    """The pattern's runs between stars, case-folded: ``*A*B`` -> ("", "a", "b")."""
    return tuple(pattern.casefold().split("*"))


def _segment_at(segment: str, text: str, start: int) -> bool:
    """Whether ``segment`` (where ``?`` is any one character) matches ``text`` at ``start``."""
    if start + len(segment) > len(text):
        return False
    return all(
        s == "?" or s == t for s, t in zip(segment, text[start : start + len(segment)], strict=True)
    )


def _find_segment(segment: str, text: str, start: int, end: int) -> int:
    """The first index in ``start..end-len(segment)`` where ``segment`` matches, or -1."""
    if "?" not in segment:
        return text.find(segment, start, end)
    for index in range(start, end - len(segment) + 1):
        if _segment_at(segment, text, index):
            return index
    return -1


def matches(pattern: str, name: str) -> bool:
    """Whole-name, case-insensitive glob: ``*`` is any run (even empty), ``?`` one character.

    No other character is special and there are no escapes. Matching never backtracks: the
    runs between stars are found left to right, each at its first place (taking the first
    place leaves the most room for the rest, so no later choice can do better), in at most
    ``len(name) * len(pattern)`` steps (a backtracking regex took exponential time).
    """
    segments = _segments(pattern)
    text = name.casefold()
    if len(segments) == 1:  # no star: the whole name, character by character
        return len(text) == len(segments[0]) and _segment_at(segments[0], text, 0)
    first, *middle, last = segments
    if len(first) + len(last) > len(text):
        return False
    if not _segment_at(first, text, 0) or not _segment_at(last, text, len(text) - len(last)):
        return False
    position, end = len(first), len(text) - len(last)
    for segment in middle:
        found = _find_segment(segment, text, position, end)
        if found < 0:
            return False
        position = found + len(segment)
    return True


def _matches_any(patterns: Iterable[str], name: str) -> bool:
    return any(matches(pattern, name) for pattern in patterns)


def without_excluded(env: dict[str, str], patterns: Iterable[str]) -> dict[str, str]:
    """``env`` less every name matching one of ``patterns`` (the operator's --env-exclude)."""
    patterns = tuple(patterns)
    if not patterns:
        return env
    return {k: v for k, v in env.items() if not _matches_any(patterns, k)}


def child_environment(
    *,
    request_env: Mapping[str, str],
    inherit: Inherit | None,
    ignore_default_excludes: bool = False,
    exclude: Iterable[str] = (),
    set_vars: Mapping[str, str] | None = None,
    include_only: Iterable[str] = (),
    server_env: Mapping[str, str],
) -> dict[str, str]:
    """Compute a child's environment.

    ``inherit=None`` means "no policy": the result is ``request_env`` exactly. Otherwise:
    inherit from ``server_env`` (all, core names, or none); drop default secret names unless
    told not to; drop ``exclude`` matches; apply ``set_vars``; keep only ``include_only``
    matches when that list is non-empty; finally overlay ``request_env``, which no filter touches.
    """
    if inherit is None:
        return dict(request_env)
    if inherit == "all":
        env = dict(server_env)
    elif inherit == "core":
        env = {k: v for k, v in server_env.items() if k.casefold() in CORE_VARIABLES}
    else:
        env = {}
    if not ignore_default_excludes:
        env = {k: v for k, v in env.items() if not _matches_any(DEFAULT_EXCLUDES, k)}
    exclude = tuple(exclude)
    if exclude:
        env = {k: v for k, v in env.items() if not _matches_any(exclude, k)}
    if set_vars:
        env.update(set_vars)
    include_only = tuple(include_only)
    if include_only:
        env = {k: v for k, v in env.items() if _matches_any(include_only, k)}
    env.update(request_env)
    return env
