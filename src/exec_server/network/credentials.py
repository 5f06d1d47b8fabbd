"""Credential masking (issue 18 C): the child sees same-shaped dummies of the built-in
providers' tokens; the proxy puts the real one back, on requests to the hosts it is for.

Providers (the reference's built-in ones): ``GH_TOKEN``/``GITHUB_TOKEN`` for github.com,
api.github.com and ``*.ghe.com``; ``GH_ENTERPRISE_TOKEN``/``GITHUB_ENTERPRISE_TOKEN`` for the
host named by ``GH_HOST`` (removed from the child's environment when there is none: it could
not be protected); ``OPENAI_API_KEY`` for api.openai.com. A dummy keeps the real value's
prefix (``ghp_``, ``github_pat_``, ``sk-proj-``...), length and the class of each character,
with ``masked`` after the prefix; the rest comes from SHA-256 of the provider and a counter.

Custom providers (``providers.py``) add variables of their own: a value that is one of the
provider's patterns gets a dummy of that pattern, swapped back only in the headers of the
provider's auth methods, on requests to its destinations (scheme, host, port and path prefix).
A value the provider cannot protect (no pattern matches, no header could carry it, no dummy) is
removed from the child's environment rather than shown to it. Sans-I/O.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from .policy import normalize_host
from .providers import Destination, Provider

GITHUB_PREFIXES = ("github_pat_", "ghp_", "gho_", "ghu_", "ghs_", "ghr_")
GITHUB_MIN_LEN = 40
OPENAI_MIN_LEN = 51
GITHUB_CLOUD_VARS = ("GH_TOKEN", "GITHUB_TOKEN")
GITHUB_ENTERPRISE_VARS = ("GH_ENTERPRISE_TOKEN", "GITHUB_ENTERPRISE_TOKEN")
OPENAI_VARS = ("OPENAI_API_KEY",)
MARK = "masked"


@dataclass(frozen=True, slots=True)
class Credential:
    """One masked variable: its real value, the dummy the child sees, where it is for: a
    built-in's hosts (``github_cloud``: GitHub's; else the exact host names, HTTPS), or a
    custom ``provider``'s ``destinations``."""

    variable: str
    real: str
    dummy: str
    hosts: tuple[str, ...]
    github_cloud: bool = False
    provider: Provider | None = None
    destinations: tuple[Destination, ...] = ()

    def intercepts(self, scheme: str, host: str, port: int) -> bool:
        """Whether requests to ``scheme://host:port`` may carry this credential (then the
        proxy reads them: inside TLS for HTTPS)."""
        if self.provider is None:
            return scheme == "https" and self.bound_to(host)
        return any(d.scheme == scheme and d.matches_host(host, port) for d in self.destinations)

    def bound_to(self, host: str) -> bool:
        """A built-in credential's hosts (any port); custom ones say no (see
        :meth:`intercepts`)."""
        if self.provider is not None:
            return False
        name = normalize_host(host)
        if self.github_cloud and (
            name in ("github.com", "api.github.com") or name.endswith(".ghe.com")
        ):
            return True
        return name in self.hosts


@dataclass(frozen=True)
class MaskedEnvironment:
    """The child's environment with dummies, and the credentials behind them."""

    env: dict[str, str]
    credentials: tuple[Credential, ...]
    removed: tuple[str, ...]

    def bound_to(self, host: str) -> bool:
        """Whether a request to ``host`` may carry one of the built-in real values."""
        return any(c.bound_to(host) for c in self.credentials)

    def intercepts(self, scheme: str, host: str, port: int) -> bool:
        """Whether the proxy must read requests to ``scheme://host:port`` to put a real value
        back (``https``: it ends the child's TLS for that)."""
        return any(c.intercepts(scheme, host, port) for c in self.credentials)

    def authorization(self, host: str, value: str) -> str | None:
        """The built-ins' swap: the ``Authorization`` header to send instead of ``value`` to
        ``host``: ``Bearer <real>`` when exactly one built-in dummy bound to ``host`` appears
        in it; None to leave it alone."""
        found = [c for c in self.credentials if c.dummy in value and c.bound_to(host)]
        return f"Bearer {found[0].real}" if len(found) == 1 else None

    def swap_headers(
        self, scheme: str, host: str, port: int, path: str, headers: Sequence[tuple[str, str]]
    ) -> dict[str, str]:
        """The headers (lower-case name -> value) to send instead of the child's on a request
        to ``scheme://host:port`` + ``path``: the built-ins' ``Authorization`` (HTTPS), and
        each custom credential at its destinations, in the headers of its provider's
        methods; a header two credentials would write differently is left alone."""
        proposals: dict[str, set[str]] = {}
        if scheme == "https":
            for name, value in headers:
                if name.lower() == "authorization":
                    swapped = self.authorization(host, value)
                    if swapped is not None:
                        proposals.setdefault("authorization", set()).add(swapped)
        for credential in self.credentials:
            provider = credential.provider
            if provider is None or not any(
                d.matches(scheme, host, port, path) for d in credential.destinations
            ):
                continue
            for name, value in provider.swapped(headers, credential.dummy, credential.real).items():
                proposals.setdefault(name, set()).add(value)
        return {name: values.pop() for name, values in proposals.items() if len(values) == 1}

    def rewrite(
        self,
        scheme: str,
        host: str,
        port: int,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
    ) -> list[tuple[bytes, bytes]]:
        """A request's headers as the origin gets them (:meth:`swap_headers`); ``target`` is
        the request line's (origin or absolute form)."""
        path = urlsplit(target.decode("latin-1")).path or "/"
        text = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers]
        swapped = self.swap_headers(scheme, host, port, path, text)
        if not swapped:
            return list(headers)
        return [
            (n, swapped[n.decode("latin-1").lower()].encode("latin-1"))
            if n.decode("latin-1").lower() in swapped
            else (n, v)
            for n, v in headers
        ]


def mask_environment(
    env: Mapping[str, str], providers: Sequence[Provider] = ()
) -> MaskedEnvironment:
    """Replace the built-in and the custom ``providers``' variables in ``env`` by dummies
    (see the module's doc)."""
    masked = dict(env)
    credentials: list[Credential] = []
    removed: list[str] = []
    gh_host = normalize_host(env.get("GH_HOST", ""))
    enterprise_host = gh_host if gh_host and not _github_cloud(gh_host) else None
    counter = 0
    for variable in (*GITHUB_CLOUD_VARS, *GITHUB_ENTERPRISE_VARS, *OPENAI_VARS):
        real = env.get(variable, "")
        if not real:
            continue
        if variable in GITHUB_ENTERPRISE_VARS and enterprise_host is None:
            del masked[variable]  # bound to no host we know: not given to the child at all
            removed.append(variable)
            continue
        counter += 1
        if variable in OPENAI_VARS:
            dummy = _dummy(real, _openai_prefix(real), OPENAI_MIN_LEN, "openai", counter)
            credential = Credential(variable, real, dummy, ("api.openai.com",))
        elif variable in GITHUB_CLOUD_VARS:
            dummy = _dummy(real, _github_prefix(real), GITHUB_MIN_LEN, "github", counter)
            credential = Credential(variable, real, dummy, (), github_cloud=True)
        else:
            assert enterprise_host is not None
            dummy = _dummy(real, _github_prefix(real), GITHUB_MIN_LEN, "github", counter)
            credential = Credential(variable, real, dummy, (enterprise_host,))
        masked[variable] = dummy
        credentials.append(credential)
    for provider in providers:
        _mask_custom(env, provider, masked, credentials, removed)
    _mask_copies(masked, credentials)
    masked["CODEX_NETWORK_PROXY_CREDENTIAL_BROKER_ACTIVE"] = "1"
    pairs = sorted(
        [
            pair
            for c in credentials
            for pair in ([f"@alias:{c.variable}", c.dummy], [c.variable, c.dummy])
        ]
    )
    masked["CODEX_NETWORK_PROXY_BROKERED_CREDENTIALS"] = json.dumps(pairs, separators=(",", ":"))
    return MaskedEnvironment(masked, tuple(credentials), tuple(removed))


def _mask_copies(masked: dict[str, str], credentials: Sequence[Credential]) -> None:
    """A real value inside any other variable (``AUTH_HEADER=Bearer <real>``) becomes its
    dummy there too: the child reads no real value anywhere in its environment."""
    longest_first = sorted(credentials, key=lambda c: len(c.real), reverse=True)
    for name, value in masked.items():
        for credential in longest_first:
            if credential.real in value:
                value = value.replace(credential.real, credential.dummy)
        masked[name] = value


def _mask_custom(
    env: Mapping[str, str],
    provider: Provider,
    masked: dict[str, str],
    credentials: list[Credential],
    removed: list[str],
) -> None:
    """One custom provider's variables: dummies, or removed when they cannot be protected."""
    destinations = provider.bound_destinations(env)
    for variable in provider.variables:
        real = env.get(variable, "").strip()
        if not real:
            continue
        same = next((c for c in credentials if c.provider is provider and c.real == real), None)
        dummy = same.dummy if same is not None else None
        if dummy is None and provider.matches_value(real) and provider.carries(real):
            taken = [value for c in credentials for value in (c.real, c.dummy)]
            dummy = provider.dummy(real, taken)
        if dummy is None:
            del masked[variable]  # not a value this provider can protect: not the child's
            removed.append(variable)
            continue
        masked[variable] = dummy
        credentials.append(Credential(variable, real, dummy, (), False, provider, destinations))


def _github_cloud(host: str) -> bool:
    return host in ("github.com", "api.github.com") or host.endswith(".ghe.com")


def _github_prefix(value: str) -> str:
    return next((p for p in GITHUB_PREFIXES if value.startswith(p)), "ghp_")


def _openai_prefix(value: str) -> str:
    if not value.startswith("sk-"):
        return "sk-"
    dash = value.find("-", 3)
    return value[: dash + 1] if dash != -1 else "sk-"


def _dummy(real: str, prefix: str, minimum: int, seed: str, counter: int) -> str:
    """``prefix`` + ``masked`` + characters of the real value's classes, to its length."""
    length = max(len(real), minimum, len(prefix) + len(MARK) + 16)
    digest = hashlib.sha256(f"{seed}:{counter}".encode()).digest()
    out = [prefix, MARK]
    for index in range(len(prefix) + len(MARK), length):
        entropy = (digest[index % len(digest)] + index) % 256
        template = real[index] if index < len(real) else "a"
        if not template.isascii() or not template.isalnum():
            out.append(template)
        elif template.isdigit():
            out.append(chr(ord("0") + entropy % 10))
        elif template.isupper():
            out.append(chr(ord("A") + entropy % 26))
        else:
            out.append(chr(ord("a") + entropy % 26))
    return "".join(out)
