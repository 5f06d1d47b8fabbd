"""Credential masking (issue 18 C): the child sees same-shaped dummies of the built-in
providers' tokens; the proxy puts the real one back, on requests to the hosts it is for.

Providers (the reference's built-in ones): ``GH_TOKEN``/``GITHUB_TOKEN`` for github.com,
api.github.com and ``*.ghe.com``; ``GH_ENTERPRISE_TOKEN``/``GITHUB_ENTERPRISE_TOKEN`` for the
host named by ``GH_HOST`` (removed from the child's environment when there is none: it could
not be protected); ``OPENAI_API_KEY`` for api.openai.com. A dummy keeps the real value's
prefix (``ghp_``, ``github_pat_``, ``sk-proj-``...), length and the class of each character,
with ``masked`` after the prefix; the rest comes from SHA-256 of the provider and a counter.
Sans-I/O.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

from .policy import normalize_host

GITHUB_PREFIXES = ("github_pat_", "ghp_", "gho_", "ghu_", "ghs_", "ghr_")
GITHUB_MIN_LEN = 40
OPENAI_MIN_LEN = 51
GITHUB_CLOUD_VARS = ("GH_TOKEN", "GITHUB_TOKEN")
GITHUB_ENTERPRISE_VARS = ("GH_ENTERPRISE_TOKEN", "GITHUB_ENTERPRISE_TOKEN")
OPENAI_VARS = ("OPENAI_API_KEY",)
MARK = "masked"


@dataclass(frozen=True, slots=True)
class Credential:
    """One masked variable: its real value, the dummy the child sees, the hosts it is for
    (``cloud``: GitHub's; else the exact host names)."""

    variable: str
    real: str
    dummy: str
    hosts: tuple[str, ...]
    github_cloud: bool = False

    def bound_to(self, host: str) -> bool:
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
        """Whether a request to ``host`` may carry one of the real values (then the proxy
        looks inside its TLS)."""
        return any(c.bound_to(host) for c in self.credentials)

    def authorization(self, host: str, value: str) -> str | None:
        """The header to send instead of ``value`` to ``host``: ``Bearer <real>`` when
        exactly one dummy bound to ``host`` appears in it; None to leave it alone."""
        found = [c for c in self.credentials if c.dummy in value and c.bound_to(host)]
        return f"Bearer {found[0].real}" if len(found) == 1 else None


def mask_environment(env: Mapping[str, str]) -> MaskedEnvironment:
    """Replace the providers' variables in ``env`` by dummies (see the module's doc)."""
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
    if credentials:
        masked["CODEX_NETWORK_PROXY_CREDENTIAL_BROKER_ACTIVE"] = "1"
        pairs = sorted(
            [
                pair
                for c in credentials
                for pair in ([f"@alias:{c.variable}", c.dummy], [c.variable, c.dummy])
            ]
        )
        masked["CODEX_NETWORK_PROXY_BROKERED_CREDENTIALS"] = json.dumps(
            pairs, separators=(",", ":")
        )
    return MaskedEnvironment(masked, tuple(credentials), tuple(removed))


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
