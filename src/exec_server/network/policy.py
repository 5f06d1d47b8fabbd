"""The managed network's policy: which destinations a proxied child may reach.

Sans-I/O except for name resolution, which the caller supplies (:class:`Resolver`). The rules,
as the 0.169 reference applies them (probed):

1. a ``deny`` entry matching the host blocks it (``denied``): deny wins over allow;
2. a local name or address (``localhost``, a loopback, private, link-local or otherwise
   non-public IP literal) is blocked (``not_allowed_local``) unless that exact name or literal
   has an ``allow`` entry, or ``allowLocalBinding`` is on and an entry allows it;
3. a host no ``allow`` entry matches is blocked (``not_allowed``), without resolving it;
4. an allowed name is resolved, and every address must be public (else ``not_allowed_local``,
   also when it does not resolve); the connection then goes to one of those checked addresses,
   never to a second lookup's answer, so a rebinding name cannot slip past the check;
5. in ``limited`` mode only GET, HEAD and OPTIONS pass (``method_not_allowed``), and a
   CONNECT tunnel, whose requests the proxy cannot see, is refused (``mitm_required``).

Patterns: ``host`` (exactly), ``*.host`` (subdomains only), ``**.host`` (the host and its
subdomains), ``*`` (any host; local ones still need an exact entry).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

REASON_ALLOW = "allow"
REASON_DENIED = "denied"
REASON_NOT_ALLOWED = "not_allowed"
REASON_NOT_ALLOWED_LOCAL = "not_allowed_local"
REASON_METHOD_NOT_ALLOWED = "method_not_allowed"
REASON_MITM_REQUIRED = "mitm_required"

LIMITED_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
"""What ``limited`` mode lets through: requests that read."""

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""Resolves a host name to its IP addresses (an empty list when it does not resolve)."""


@dataclass(frozen=True, slots=True)
class Answer:
    """What the client (the decider) said about a host: ``allow``, ``deny`` or ``ask``."""

    verdict: str
    reason: str = REASON_NOT_ALLOWED


Ask = Callable[[str, int], Awaitable[Answer]]
"""Asks the client about ``host:port`` (an allow-list miss or a review domain)."""


class PatternError(ValueError):
    """A ``domains`` key that is not a pattern; ``str()`` is the reference's wording."""


class Mode(enum.Enum):
    FULL = "full"
    LIMITED = "limited"


class Protocol(enum.Enum):
    """How the child asked: the ``protocol`` of audit records and review requests."""

    HTTP = "http"
    HTTPS_CONNECT = "https_connect"
    SOCKS5_TCP = "socks5_tcp"
    SOCKS5_UDP = "socks5_udp"


@dataclass(frozen=True, slots=True)
class Pattern:
    """One ``domains`` key, parsed: ``host`` without the wildcard prefix, and which names
    it covers."""

    text: str
    host: str
    apex: bool
    subdomains: bool

    def matches(self, host: str) -> bool:
        if self.host == "":  # the global "*"
            return True
        if self.apex and host == self.host:
            return True
        return self.subdomains and host.endswith("." + self.host)

    @property
    def exact(self) -> bool:
        """Names one host and nothing else (what lets a local destination through)."""
        return self.apex and not self.subdomains


def parse_pattern(text: str) -> Pattern:
    """A ``domains`` key as a :class:`Pattern`; :class:`PatternError` when it is none."""
    pattern = text.strip().lower().rstrip(".")
    if not pattern:
        raise PatternError("domain pattern is empty")
    if pattern == "*":
        return Pattern(text, "", apex=True, subdomains=True)
    if pattern.startswith("**."):
        return _checked(Pattern(text, pattern[3:], apex=True, subdomains=True))
    if pattern.startswith("*."):
        return _checked(Pattern(text, pattern[2:], apex=False, subdomains=True))
    if pattern.startswith("[") and pattern.endswith("]"):
        pattern = pattern[1:-1]  # a bracketed IPv6 literal
    return _checked(Pattern(text, pattern, apex=True, subdomains=False))


def _checked(pattern: Pattern) -> Pattern:
    host = pattern.host
    if _ip(host) is not None:
        return pattern
    bad = not host or any(c in host for c in "/:@?#*[] \t") or ".." in host
    if bad:
        raise PatternError(f"unsupported domain pattern syntax: {pattern.text}")
    return pattern


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict on one destination: ``reason`` is ``allow`` when allowed; ``source`` is
    ``baseline_policy`` (the lists) or ``mode_guard`` (limited mode); ``addresses`` are the
    checked addresses to connect to (the literal itself for an IP)."""

    allowed: bool
    reason: str
    source: str = "baseline_policy"
    addresses: tuple[str, ...] = ()
    verdict: str | None = None
    """``allow``, ``deny`` or ``ask`` (what the decider said); None: from ``allowed``."""
    policy_override: bool = False
    """The decider allowed what the lists did not."""

    @property
    def decision(self) -> str:
        """The audit record's ``decision``."""
        return self.verdict or ("allow" if self.allowed else "deny")

    @property
    def scope(self) -> str:
        """``domain`` for a verdict on the destination, ``non_domain`` for one on the method."""
        return "domain" if self.source == "baseline_policy" else "non_domain"


@dataclass(frozen=True)
class NetworkPolicy:
    """The allow and deny lists, the mode, and whether local destinations may be allowed."""

    allow: tuple[Pattern, ...]
    deny: tuple[Pattern, ...]
    mode: Mode = Mode.FULL
    allow_local_binding: bool = False
    review: tuple[Pattern, ...] = ()
    """Hosts the client wants to be asked about; with nobody to ask they are not allowed."""

    @classmethod
    def from_domains(
        cls,
        domains: Mapping[str, str] | None,
        mode: Mode = Mode.FULL,
        allow_local_binding: bool = False,
        review: Sequence[str] = (),
    ) -> NetworkPolicy:
        """Lists from the wire's ``domains`` map (``allow``/``deny``/``none`` per pattern)
        and ``reviewDomains``; raises :class:`PatternError`."""
        allow: list[Pattern] = []
        deny: list[Pattern] = []
        for text, verdict in (domains or {}).items():
            pattern = parse_pattern(text)
            if verdict == "allow":
                allow.append(pattern)
            elif verdict == "deny":
                deny.append(pattern)
        reviewed = tuple(parse_pattern(text) for text in review)
        return cls(tuple(allow), tuple(deny), mode, allow_local_binding, reviewed)

    def method_allowed(self, method: str) -> bool:
        """Whether ``limited`` mode (if on) lets ``method`` through."""
        return self.mode is Mode.FULL or method.upper() in LIMITED_METHODS

    async def decide(
        self, host: str, port: int, resolve: Resolver, ask: Ask | None = None
    ) -> Decision:
        """The verdict on ``host:port`` (rules 1 to 4 above). With ``ask``, an allow-list
        miss or a review domain is put to the client; its ``allow`` still meets the
        local-address check, and an explicit deny or a local literal is never asked."""
        name = normalize_host(host)
        if any(p.matches(name) for p in self.deny):
            return Decision(False, REASON_DENIED)
        matching = [p for p in self.allow if p.matches(name)]
        local_ok = any(p.exact for p in matching) or (self.allow_local_binding and bool(matching))
        literal = _ip(name)
        if _is_local_name(name, literal) and not local_ok:
            return Decision(False, REASON_NOT_ALLOWED_LOCAL)
        override = False
        if not matching or any(p.matches(name) for p in self.review):  # review overrides allow
            if ask is None:
                return Decision(False, REASON_NOT_ALLOWED)
            answer = await ask(name, port)
            if answer.verdict != "allow":
                return Decision(False, answer.reason, "decider", verdict=answer.verdict)
            override = True
        addresses = await self._checked_addresses(name, literal, port, resolve, local_ok)
        if not addresses:
            return Decision(False, REASON_NOT_ALLOWED_LOCAL)
        if override:
            return Decision(True, REASON_NOT_ALLOWED, "decider", addresses, policy_override=True)
        return Decision(True, REASON_ALLOW, addresses=addresses)

    @staticmethod
    async def _checked_addresses(
        name: str,
        literal: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
        port: int,
        resolve: Resolver,
        local_ok: bool,
    ) -> tuple[str, ...]:
        """The addresses to connect to, all allowed; empty when any is not (or none)."""
        if literal is not None:
            return (str(literal),) if _public(literal) or local_ok else ()
        addresses = tuple(await resolve(name, port))
        for address in addresses:
            ip = _ip(address)
            if ip is None or (not _public(ip) and not local_ok):
                return ()
        return addresses


def _is_local_name(
    name: str, literal: ipaddress.IPv4Address | ipaddress.IPv6Address | None
) -> bool:
    """Local without a lookup: a non-public IP literal, or ``localhost`` and its subdomains."""
    if literal is not None:
        return not _public(literal)
    return name == "localhost" or name.endswith(".localhost")


def normalize_host(host: str) -> str:
    """Lower case, no trailing dot, no IPv6 brackets: the form patterns are matched against."""
    name = host.strip().lower().rstrip(".")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    return name


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


def _public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether an address is on the public internet (not loopback, private, link-local,
    unspecified, multicast or reserved; IPv4-mapped IPv6 judged by its IPv4 address)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast
