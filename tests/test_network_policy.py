"""The managed network's policy, without sockets: patterns, deny wins, local addresses,
resolve-then-check (one lookup, whose checked addresses are the ones connected to), limited
mode. The expectations are what the 0.169 reference answered when probed."""

from __future__ import annotations

import os
from collections.abc import Sequence

import pytest

from exec_server.network.managed import _descends_from
from exec_server.network.policy import (
    Mode,
    NetworkPolicy,
    PatternError,
    parse_pattern,
)


class Resolver:
    """Answers from a table, and counts lookups (a rebinding name answers differently on the
    second lookup: there must be none)."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.lookups.append(host)
        return self.table.get(host, [])


async def verdict(domains: dict[str, str], host: str, **kw: object) -> tuple[bool, str]:
    policy = NetworkPolicy.from_domains(domains, **kw)  # type: ignore[arg-type]
    decision = await policy.decide(host, 443, Resolver({"public.test": ["93.184.216.34"]}))
    return decision.allowed, decision.reason


@pytest.mark.parametrize(
    ("pattern", "host", "matches"),
    [
        ("example.test", "example.test", True),
        ("example.test", "a.example.test", False),
        ("*.example.test", "a.example.test", True),
        ("*.example.test", "a.b.example.test", True),
        ("*.example.test", "example.test", False),
        ("**.example.test", "example.test", True),
        ("**.example.test", "a.example.test", True),
        ("**.example.test", "badexample.test", False),
        ("Example.TEST.", "example.test", True),
        ("*", "anything.test", True),
    ],
)
def test_patterns(pattern: str, host: str, matches: bool) -> None:
    assert parse_pattern(pattern).matches(host) is matches


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "domain pattern is empty"),
        ("http://x.test", "unsupported domain pattern syntax: http://x.test"),
        ("x.test/path", "unsupported domain pattern syntax: x.test/path"),
        ("a*.test", "unsupported domain pattern syntax: a*.test"),
    ],
)
def test_bad_patterns_are_refused(text: str, message: str) -> None:
    with pytest.raises(PatternError) as caught:
        parse_pattern(text)
    assert str(caught.value) == message


async def test_allow_list_first_and_deny_wins() -> None:
    assert await verdict({}, "public.test") == (False, "not_allowed")
    assert await verdict({"public.test": "allow"}, "public.test") == (True, "allow")
    both = {"**.public.test": "allow", "public.test": "deny"}
    assert await verdict(both, "public.test") == (False, "denied")
    assert await verdict({"public.test": "none"}, "public.test") == (False, "not_allowed")


async def test_local_destinations_need_an_exact_entry() -> None:
    assert await verdict({"*": "allow"}, "127.0.0.1") == (False, "not_allowed_local")
    assert await verdict({"*": "allow"}, "10.1.2.3") == (False, "not_allowed_local")
    assert await verdict({"*": "allow"}, "169.254.169.254") == (False, "not_allowed_local")
    assert await verdict({"*": "allow"}, "::ffff:127.0.0.1") == (False, "not_allowed_local")
    assert await verdict({"127.0.0.1": "allow"}, "localhost") == (False, "not_allowed_local")
    assert await verdict({"127.0.0.1": "allow"}, "127.0.0.1") == (True, "allow")
    assert await verdict({"[::1]": "allow"}, "[::1]") == (True, "allow")
    local_binding = {"*": "allow"}
    assert await verdict(local_binding, "10.1.2.3", allow_local_binding=True) == (True, "allow")
    assert await verdict({"*": "allow"}, "8.8.8.8") == (True, "allow")


async def test_names_are_checked_after_one_resolution() -> None:
    resolver = Resolver({"inside.test": ["10.0.0.5"], "mixed.test": ["93.184.216.34", "127.0.0.1"]})
    policy = NetworkPolicy.from_domains({"*.test": "allow", "**.public.test": "allow"})
    inside = await policy.decide("inside.test", 80, resolver)
    assert (inside.allowed, inside.reason) == (False, "not_allowed_local")
    mixed = await policy.decide("mixed.test", 80, resolver)
    assert (mixed.allowed, mixed.reason) == (False, "not_allowed_local")
    gone = await policy.decide("nowhere.test", 80, resolver)
    assert (gone.allowed, gone.reason) == (False, "not_allowed_local")  # as the reference
    resolver.table["www.public.test"] = ["93.184.216.34"]
    allowed = await policy.decide("www.public.test", 80, resolver)
    assert allowed.allowed and allowed.addresses == ("93.184.216.34",)
    assert resolver.lookups.count("www.public.test") == 1
    unlisted = NetworkPolicy.from_domains({"other.test": "allow"})
    await unlisted.decide("never.test", 80, resolver)
    assert "never.test" not in resolver.lookups  # a miss is refused without a lookup


def test_limited_mode_allows_only_reads() -> None:
    limited = NetworkPolicy.from_domains({}, Mode.LIMITED)
    assert [
        m for m in ("GET", "HEAD", "OPTIONS", "POST", "PUT", "delete") if limited.method_allowed(m)
    ] == [
        "GET",
        "HEAD",
        "OPTIONS",
    ]
    assert NetworkPolicy.from_domains({}).method_allowed("POST")


async def test_review_domains_are_not_allowed_without_a_decider() -> None:
    policy = NetworkPolicy.from_domains({"public.test": "allow"}, review=["public.test"])
    decision = await policy.decide("public.test", 443, Resolver({}))
    assert (decision.allowed, decision.reason) == (False, "not_allowed")


def test_handover_peer_must_descend_from_the_child() -> None:
    assert _descends_from(os.getpid(), os.getppid())
    assert _descends_from(os.getpid(), os.getpid())
    assert not _descends_from(os.getppid(), os.getpid())
    assert not _descends_from(1, os.getpid())
