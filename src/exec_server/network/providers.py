"""Custom credential providers (``networkProxy.proxy.credentialProviders``, issue 18 C).

A provider names environment variables that hold a secret (``env``), what the secret looks
like (``patterns``: regular expressions a whole value must match), where it may go
(``url_prefixes``, and ``url_prefix_from_env``: a variable holding one more) and how it is
sent (``auth``: ``bearer``, ``token``, ``basic`` or ``header`` with ``header``/``prefix``).
:func:`compile_provider` checks a definition with the reference's rules and words and makes a
:class:`Provider`; a bad one raises :class:`ProviderError`.

Patterns are matched by RE2 (``google-re2``: linear time, whatever a client sends; its syntax is
the one the reference's Rust ``regex`` accepts: no lookaround, no backreferences). A dummy is
generated from the pattern's syntax tree (the standard library's parser: the common subset),
printable ASCII where the pattern allows it, and kept only if RE2 says it matches too.
Sans-I/O.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import ipaddress
import re
import secrets
import string
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from .policy import normalize_host

AuthMethod = Literal["bearer", "token", "basic", "header"]

MAX_PATTERN_BYTES = 2048
"""The reference's bound on one pattern's source and on a dummy's length."""
MAX_UNBOUNDED_REPEAT = 64
"""How many more times than its minimum a ``*``/``+``/``{n,}`` repeats in a dummy (the
reference's generator bound)."""
DUMMY_ATTEMPTS = 64
"""Candidates drawn per pattern; the one closest to the real value's length is kept."""

BUILTIN_VARIABLES = frozenset(
    {
        "GH_TOKEN",
        "GITHUB_TOKEN",
        "GH_ENTERPRISE_TOKEN",
        "GITHUB_ENTERPRISE_TOKEN",
        "GH_HOST",
        "OPENAI_API_KEY",
    }
)
"""Variables the built-in providers own: a custom provider may not claim them."""

_PREFERRED = frozenset(string.ascii_letters + string.digits)
_PRINTABLE = [chr(c) for c in range(0x21, 0x7F)]
_WIDE_START, _WIDE_END = 0xA1, 0x800  # where a class with no printable ASCII is looked at
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits)


MAX_PATTERNS = 64
"""Credential patterns one request may define, over all its providers: each is compiled on
the event loop when the process starts, so their number is bounded (codex sends a few)."""

CLASS_TESTS_BUDGET = 100_000
"""Character tests one request's patterns may spend finding their classes' members (a
class's items times the characters looked at): a class of hundreds of items looked at
against two thousand code points would hold the event loop for a good part of a second."""


class PatternBudget:
    """What one request's credential patterns may still cost to compile."""

    def __init__(self) -> None:
        self.patterns = 0
        self.class_tests = 0

    def take_pattern(self) -> None:
        """Count one more pattern; ProviderError past :data:`MAX_PATTERNS`."""
        self.patterns += 1
        if self.patterns > MAX_PATTERNS:
            raise ProviderError(f"more than {MAX_PATTERNS} credential patterns in one request")

    def charge(self, tests: int) -> None:
        """Spend ``tests`` character tests, refusing the pattern past the budget."""
        self.class_tests += tests
        if self.class_tests > CLASS_TESTS_BUDGET:
            raise _Unsupported(
                "its character classes are too costly to draw a dummy from "
                f"(one request's patterns may spend {CLASS_TESTS_BUDGET} character tests)"
            )


class ProviderError(ValueError):
    """A provider definition that cannot be used; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Destination:
    """One place a provider's secret may go: scheme, host (``*.x``: strictly below x),
    port and a path prefix (whole segments)."""

    scheme: Literal["http", "https"]
    host: str
    wildcard: bool
    port: int
    path: str

    def matches_host(self, host: str, port: int) -> bool:
        name = normalize_host(host)
        if port != self.port:
            return False
        return name.endswith("." + self.host) if self.wildcard else name == self.host

    def matches(self, scheme: str, host: str, port: int, path: str) -> bool:
        """Whether a request for ``scheme://host:port/path`` is at this destination."""
        if scheme != self.scheme or not self.matches_host(host, port):
            return False
        if not safe_path(path):
            return False
        prefix = self.path
        if prefix == "/" or path == prefix:
            return True
        return path.startswith(prefix) and (prefix.endswith("/") or path[len(prefix)] == "/")


@dataclass(frozen=True)
class Provider:
    """A checked provider definition, ready to mask and swap."""

    name: str
    variables: tuple[str, ...]
    destinations: tuple[Destination, ...]
    destination_variable: str | None
    methods: tuple[AuthMethod, ...]
    header: str | None
    prefix: str
    _patterns: tuple[Any, ...]
    _plans: tuple[_Plan, ...]

    def matches_value(self, value: str) -> bool:
        """Whether ``value`` is, whole, a secret of this provider."""
        return any(p.fullmatch(value) is not None for p in self._patterns)

    def bound_destinations(self, env: Mapping[str, str]) -> tuple[Destination, ...]:
        """The destinations, with the one ``url_prefix_from_env`` names in ``env`` (an exact
        host only; a value that is no destination adds nothing)."""
        extra = env.get(self.destination_variable or "", "").strip()
        if not extra:
            return self.destinations
        try:
            destination = parse_destination(extra)
        except ProviderError:
            return self.destinations
        if destination.wildcard or destination in self.destinations:
            return self.destinations
        return (*self.destinations, destination)

    def dummy(self, real: str, taken: Iterable[str] = ()) -> str | None:
        """A value of the same pattern as ``real``, unlike it and every ``taken`` one, that
        each auth method can carry; None when the pattern yields none."""
        avoid = {real, *taken}
        for pattern, plan in zip(self._patterns, self._plans, strict=True):
            if pattern.fullmatch(real) is None:
                continue
            best: str | None = None
            for candidate in _candidates(plan, pattern):
                if candidate in avoid or real in candidate or candidate in real:
                    continue
                if not self._carries(real, candidate):
                    continue
                if best is None or abs(len(candidate) - len(real)) < abs(len(best) - len(real)):
                    best = candidate
            return best
        return None

    def carries(self, value: str) -> bool:
        """Whether a header can carry ``value`` by at least one of the methods."""
        return any(_header_safe(self._encoded(method, value)) for method in self.methods)

    def swapped(self, headers: Sequence[tuple[str, str]], dummy: str, real: str) -> dict[str, str]:
        """The headers (lower-case name -> new value) this provider's methods would rewrite
        in ``headers`` to put ``real`` where the exact ``dummy`` is."""
        out: dict[str, str] = {}
        for name, value in headers:
            lowered = name.lower()
            if lowered in out:
                continue
            new = None
            if self.header is not None and lowered == self.header.lower():
                new = f"{self.prefix}{real}" if value == f"{self.prefix}{dummy}" else None
            if new is None and lowered == "authorization":
                new = _swap_authorization(value, self.methods, dummy, real)
            if new is not None:
                out[lowered] = new
        return out

    def _carries(self, real: str, dummy: str) -> bool:
        for method in self.methods:
            if method == "basic" and (":" in real) != (":" in dummy):
                return False
            if _header_safe(self._encoded(method, real)) and not _header_safe(
                self._encoded(method, dummy)
            ):
                return False
        return True

    def _encoded(self, method: AuthMethod, value: str) -> str:
        if method == "bearer":
            return f"Bearer {value}"
        if method == "token":
            return f"token {value}"
        if method == "basic":
            return "Basic " + base64.b64encode(value.encode()).decode()
        return f"{self.prefix}{value}"


def compile_provider(
    name: str, config: Mapping[str, Any], budget: PatternBudget | None = None
) -> Provider:
    """Check one definition (the reference's rules, in its order) and compile it; the
    providers of one request share one ``budget``."""
    budget = budget or PatternBudget()
    variables = tuple(config.get("env") or ())
    patterns = tuple(config.get("patterns") or ())
    prefixes = tuple(config.get("url_prefixes") or ())
    from_env: str | None = config.get("url_prefix_from_env")
    methods: tuple[AuthMethod, ...] = tuple(config.get("auth") or ()) or ("bearer",)
    header: str | None = config.get("header")
    prefix: str | None = config.get("prefix")
    if not name:
        raise ProviderError("credential provider name must not be empty")
    label = f"credential provider `{name}`"
    if not variables:
        raise ProviderError(f"{label} has no environment keys")
    if not patterns:
        raise ProviderError(f"{label} has no credential patterns")
    if not prefixes and from_env is None:
        raise ProviderError(f"{label} has no destination URL prefixes")
    if not all(map(_valid_variable, variables)):
        raise ProviderError(f"{label} has an invalid environment key")
    if any(v in BUILTIN_VARIABLES for v in variables):
        raise ProviderError(f"{label} overlaps a built-in credential source")
    if from_env is not None and (not _valid_variable(from_env) or from_env in variables):
        raise ProviderError(f"{label} has an invalid host environment key")
    destinations = []
    for text in prefixes:
        try:
            destinations.append(parse_destination(text))
        except ProviderError as error:
            raise ProviderError(f"invalid destination for {label}: {error}") from None
    if header is not None and (not header or not set(header) <= _TOKEN_CHARS):
        raise ProviderError(f"invalid header for {label}: `{header}` is not a header name")
    if ("header" in methods) != (header is not None):
        raise ProviderError(
            f"{label} requires a header name exactly when using header authentication"
        )
    if prefix is not None and header is None:
        raise ProviderError(f"{label} requires header authentication to use a header prefix")
    compiled, plans = [], []
    for source in patterns:
        try:
            budget.take_pattern()
            pattern, plan = _compile_pattern(source, budget)
        except ProviderError as error:
            raise ProviderError(
                f"invalid credential pattern for provider `{name}`: {error}"
            ) from None
        compiled.append(pattern)
        plans.append(plan)
    return Provider(
        name,
        variables,
        tuple(dict.fromkeys(destinations)),
        from_env,
        methods,
        header,
        prefix or "",
        tuple(compiled),
        tuple(plans),
    )


def parse_destination(text: str) -> Destination:
    """One ``url_prefixes`` entry: ``[scheme://][*.]host[:port][/path]``; a bare host means
    HTTPS, or HTTP when it is loopback; HTTP only for loopback."""
    value = text.strip()
    scheme, sep, rest = value.partition("://")
    if not sep:
        scheme, rest = "", value
    wildcard = rest.startswith("*.")
    if wildcard:
        rest = rest[2:]
    if any(c in rest for c in "?#@"):
        raise ProviderError(
            "credential destination cannot include user information, a query, or a fragment"
        )
    try:
        split = urlsplit("https://" + rest)
        explicit_port = split.port
    except ValueError:
        raise ProviderError("credential destination has an invalid port") from None
    host = normalize_host(split.hostname or "")
    if not host:
        raise ProviderError("credential destination has no hostname")
    if "*" in host or "/" in host or any(c.isspace() for c in host):
        raise ProviderError("credential destination must have an exact hostname or scoped wildcard")
    loopback = not wildcard and _loopback(host)
    lowered = scheme.lower()
    if lowered == "https" or (not lowered and not loopback):
        kind: Literal["http", "https"] = "https"
    elif loopback and lowered in ("", "http"):
        kind = "http"
    else:
        raise ProviderError(
            "credential destination must use HTTPS unless it targets loopback over HTTP"
        )
    port = explicit_port or (443 if kind == "https" else 80)
    path = split.path or "/"
    if not safe_path(path):
        raise ProviderError("credential destination path is not a plain path")
    return Destination(kind, host, wildcard, port, path)


def safe_path(path: str) -> bool:
    """A path a prefix can be judged on: absolute, no dot segments, no escaped ``/``, ``\\``
    or ``.`` that an origin might decode into another path."""
    if not path.startswith("/") or "\\" in path:
        return False
    lowered = path.lower()
    if any(code in lowered for code in ("%2f", "%5c", "%2e", "%00")):
        return False
    return not any(segment in (".", "..") for segment in path.split("/"))


def _swap_authorization(
    value: str, methods: Sequence[AuthMethod], dummy: str, real: str
) -> str | None:
    scheme, sep, rest = value.partition(" ")
    if not sep:
        return None
    kind = scheme.lower()
    if kind not in methods or kind == "header":
        return None
    rest = rest.strip()
    if kind in ("bearer", "token"):
        return f"{scheme} {real}" if rest == dummy else None
    try:
        decoded = base64.b64decode(rest, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    if decoded == dummy:
        swapped = real
    else:
        user, colon, password = decoded.partition(":")
        if not colon or dummy not in (user, password):
            return None
        swapped = (
            (real if user == dummy else user) + ":" + (real if password == dummy else password)
        )
    return f"{scheme} " + base64.b64encode(swapped.encode()).decode()


def _valid_variable(name: str) -> bool:
    return (
        bool(name)
        and (name[0] == "_" or (name[0].isascii() and name[0].isalpha()))
        and all(c == "_" or (c.isascii() and c.isalnum()) for c in name)
    )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _header_safe(value: str) -> bool:
    return value.isascii() and value.isprintable() and value == value.strip()


# ---- patterns and dummies ---------------------------------------------------------------------


def _compile_pattern(source: str, budget: PatternBudget) -> tuple[Any, _Plan]:
    """RE2 for matching, a plan drawn from the standard library's syntax tree for
    generating; both must accept the pattern."""
    if len(source.encode()) > MAX_PATTERN_BYTES:
        raise ProviderError(f"credential pattern exceeds {MAX_PATTERN_BYTES} bytes")
    re2 = importlib.import_module("re2")
    options = re2.Options()
    options.log_errors = False
    options.max_mem = 8 << 20
    try:
        pattern = re2.compile(source, options)
    except re2.error as error:
        detail = error.args[0] if error.args else error
        if isinstance(detail, bytes):
            detail = detail.decode(errors="replace")
        raise ProviderError(f"regex parse error: {detail}") from None
    parser = importlib.import_module("re._parser")
    try:
        plan = _plan(parser.parse(source), budget)
    except (re.error, RecursionError, OverflowError, _Unsupported) as error:
        raise ProviderError(f"pattern not supported here: {error}") from None
    if pattern.fullmatch("") is not None:
        raise ProviderError("credential pattern must not match an empty value")
    if _longest(plan) > MAX_PATTERN_BYTES:
        raise ProviderError("credential pattern must generate bounded UTF-8 values")
    if next(_candidates(plan, pattern), None) is None:
        raise ProviderError("credential pattern could not independently generate a matching dummy")
    return pattern, plan


class _Unsupported(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _Chars:
    """One character from ``choices`` (the preferred ones of a class, or all of it)."""

    choices: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Repeat:
    low: int
    high: int
    body: _Plan


@dataclass(frozen=True, slots=True)
class _Either:
    branches: tuple[_Plan, ...]


_Plan = tuple["str | _Chars | _Repeat | _Either", ...]
"""What a dummy is drawn from: literal text, classes, repeats (bounded) and alternatives."""


def _plan(items: Iterable[Any], budget: PatternBudget) -> _Plan:
    """The standard library parser's tree as a :data:`_Plan` (classes resolved once)."""
    plan: list[str | _Chars | _Repeat | _Either] = []
    for op, arg in items:
        name = str(op)
        if name == "LITERAL":
            plan.append(chr(arg))
        elif name == "NOT_LITERAL":
            plan.append(_chars([c for c in _PRINTABLE if ord(c) != arg]))
        elif name == "ANY":
            plan.append(_chars(_PRINTABLE))
        elif name == "IN":
            plan.append(_chars(_class_members(arg, budget)))
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            low, high, sub = arg
            plan.append(_Repeat(low, min(high, low + MAX_UNBOUNDED_REPEAT), _plan(sub, budget)))
        elif name in ("SUBPATTERN", "ATOMIC_GROUP"):
            plan.extend(_plan(arg[-1] if isinstance(arg, tuple) else arg, budget))
        elif name == "BRANCH":
            plan.append(_Either(tuple(_plan(branch, budget) for branch in arg[1])))
        elif name != "AT":  # anchors generate nothing
            raise _Unsupported(name.lower())
    return tuple(plan)


def _chars(members: Sequence[str]) -> _Chars:
    if not members:
        raise _Unsupported("an empty class")
    preferred = tuple(c for c in members if c in _PREFERRED)
    return _Chars(preferred or tuple(members))


def _candidates(plan: _Plan, pattern: Any) -> Iterator[str]:
    """Generated values RE2 agrees are whole matches."""
    for _ in range(DUMMY_ATTEMPTS):
        out: list[str] = []
        _generate(plan, out)
        candidate = "".join(out)
        if "\0" not in candidate and pattern.fullmatch(candidate) is not None:
            yield candidate


def _generate(plan: _Plan, out: list[str]) -> None:
    for node in plan:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Chars):
            out.append(node.choices[secrets.randbelow(len(node.choices))])
        elif isinstance(node, _Repeat):
            for _ in range(node.low + secrets.randbelow(node.high - node.low + 1)):
                _generate(node.body, out)
        else:
            _generate(node.branches[secrets.randbelow(len(node.branches))], out)


def _longest(plan: _Plan) -> int:
    """Bytes of the longest value the plan can draw (UTF-8: up to four a character)."""
    total = 0
    for node in plan:
        if isinstance(node, str):
            total += len(node.encode())
        elif isinstance(node, _Chars):
            total += 4
        elif isinstance(node, _Repeat):
            total += node.high * _longest(node.body)
        else:
            total += max((_longest(branch) for branch in node.branches), default=0)
        if total > 1 << 20:
            break
    return total


def _class_members(items: Sequence[Any], budget: PatternBudget) -> list[str]:
    """The printable ASCII characters of a ``[...]`` class (or, when it has none, a few of
    its other characters)."""
    negate = bool(items) and str(items[0][0]) == "NEGATE"
    budget.charge(len(items) * len(_PRINTABLE))
    inside = [c for c in _PRINTABLE if any(_in_item(c, item) for item in items)]
    members = [c for c in _PRINTABLE if c not in inside] if negate else inside
    if members:
        return members
    if negate:  # only non-ASCII characters are in it: the first few the class takes
        budget.charge(len(items) * (_WIDE_END - _WIDE_START))
        wider = (chr(c) for c in range(_WIDE_START, _WIDE_END))
        return [c for c in wider if not any(_in_item(c, item) for item in items)][:64]
    for op, arg in items:
        if str(op) == "LITERAL":
            return [chr(arg)]
        if str(op) == "RANGE":
            return [chr(c) for c in range(arg[0], min(arg[1], arg[0] + 63) + 1)]
    return []


def _in_item(char: str, item: tuple[Any, Any]) -> bool:
    op, arg = str(item[0]), item[1]
    code = ord(char)
    if op == "LITERAL":
        return bool(code == arg)
    if op == "RANGE":
        return bool(arg[0] <= code <= arg[1])
    if op == "CATEGORY":
        category = str(arg)
        tests = {
            "CATEGORY_DIGIT": char.isdigit(),
            "CATEGORY_NOT_DIGIT": not char.isdigit(),
            "CATEGORY_SPACE": char.isspace(),
            "CATEGORY_NOT_SPACE": not char.isspace(),
            "CATEGORY_WORD": char.isalnum() or char == "_",
            "CATEGORY_NOT_WORD": not (char.isalnum() or char == "_"),
        }
        return tests.get(category, False)
    return False
