"""The environment policy (PROTOCOL.md §8): every step, pattern matching, and one end-to-end run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exec_server.process.env import CORE_VARIABLES, DEFAULT_EXCLUDES, child_environment, matches

from .support import Client, running_server
from .test_process_helpers import error_of, no_stray_children

__all__ = ["no_stray_children"]

SERVER_ENV = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/home/me",
    "Path": "mixed-case core name",
    "tmpdir": "/lower/tmp",
    "LANG": "C.UTF-8",
    "EDITOR": "vi",
    "xray": "x",
    "SECRET_THING": "s",
    "MY_API_KEY": "k",
    "GITHUB_TOKEN": "t",
    "keychain": "lowercase key",
    "MONKEY": "contains KEY",
}


def _env(
    inherit: Any,
    *,
    request_env: Mapping[str, str] | None = None,
    ignore_default_excludes: bool = False,
    exclude: tuple[str, ...] = (),
    set_vars: Mapping[str, str] | None = None,
    include_only: tuple[str, ...] = (),
    server_env: Mapping[str, str] = SERVER_ENV,
) -> dict[str, str]:
    return child_environment(
        request_env=request_env or {},
        inherit=inherit,
        ignore_default_excludes=ignore_default_excludes,
        exclude=exclude,
        set_vars=set_vars,
        include_only=include_only,
        server_env=server_env,
    )


# ---- pattern matching ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("PATH", "PATH", True),
        ("PATH", "path", True),  # case-insensitive
        ("path", "PATH", True),
        ("PATH", "PATHX", False),  # whole-name
        ("PATH", "XPATH", False),
        ("PAT", "PATH", False),
        ("", "", True),
        ("", "A", False),
        ("*", "", True),  # any run, even empty
        ("*", "ANYTHING_AT_ALL", True),
        ("X*", "X", True),
        ("X*", "xray", True),
        ("X*", "AX", False),
        ("*KEY*", "MY_API_KEY", True),
        ("*KEY*", "keychain", True),
        ("*KEY*", "KEY", True),
        ("*KEY*", "KE_Y", False),
        ("A*B*C", "ABC", True),
        ("A*B*C", "A1B2C", True),
        ("A*B*C", "A1B2C3", False),
        ("?", "A", True),  # exactly one character
        ("?", "", False),
        ("?", "AB", False),
        ("A?C", "ABC", True),
        ("A?C", "AC", False),
        ("??*", "A", False),
        ("??*", "AB", True),
        ("[AB]", "A", False),  # no character classes
        ("[AB]", "[AB]", True),
        ("[!A]", "B", False),
        ("A.C", "ABC", False),  # no regex metacharacters
        ("A.C", "A.C", True),
        ("A+", "AA", False),
        ("A+", "A+", True),
        ("(A|B)", "A", False),
        ("^A$", "A", False),
        ("\\*", "X", False),  # no escapes: the backslash is literal, then any run
        ("\\*", "\\anything", True),
        ("{A,B}", "A", False),
        ("A*", "A\nB", True),  # '*' spans any character
    ],
)
def test_pattern_matching(pattern: str, name: str, expected: bool) -> None:
    assert matches(pattern, name) is expected


# ---- each step -------------------------------------------------------------------------------


def test_no_policy_is_exactly_the_request_env() -> None:
    request = {"A": "1", "MY_TOKEN": "kept", "PATH": "/x"}
    assert _env(None, request_env=request) == request
    assert _env(None) == {}  # may even lack PATH


def test_inherit_all_drops_default_secrets() -> None:
    env = _env("all")
    assert env == {
        "PATH": "/usr/bin:/bin",
        "HOME": "/home/me",
        "Path": "mixed-case core name",
        "tmpdir": "/lower/tmp",
        "LANG": "C.UTF-8",
        "EDITOR": "vi",
        "xray": "x",
    }


def test_inherit_all_ignoring_default_excludes_is_everything() -> None:
    assert _env("all", ignore_default_excludes=True) == SERVER_ENV


def test_inherit_none() -> None:
    assert _env("none") == {}
    assert _env("none", ignore_default_excludes=True) == {}


def test_inherit_core_keeps_only_core_names_case_insensitively() -> None:
    assert _env("core") == {
        "PATH": "/usr/bin:/bin",
        "HOME": "/home/me",
        "Path": "mixed-case core name",
        "tmpdir": "/lower/tmp",
        "LANG": "C.UTF-8",
    }


def test_core_list_is_the_reference_list() -> None:
    names = ["PATH", "SHELL", "TMPDIR", "TEMP", "TMP", "HOME", "LANG", "LC_ALL", "LC_CTYPE"]
    names += ["LOGNAME", "USER"]
    assert {n.casefold() for n in names} == set(CORE_VARIABLES)
    server = {name: name.lower() for name in names} | {"LC_NUMERIC": "no", "USERNAME": "no"}
    assert _env("core", server_env=server) == {name: name.lower() for name in names}


def test_default_excludes_are_key_secret_token() -> None:
    assert DEFAULT_EXCLUDES == ("*KEY*", "*SECRET*", "*TOKEN*")
    server = {"KEYRING": "1", "a_secret": "2", "token": "3", "TOKE": "4", "SECRE": "5"}
    assert _env("all", server_env=server) == {"TOKE": "4", "SECRE": "5"}


def test_excludes_apply_to_core_names_too() -> None:
    assert "HOME" not in _env("core", exclude=("HOME",))
    assert "PATH" not in _env("core", exclude=("p*",))


def test_exclude_patterns() -> None:
    env = _env("all", exclude=("X*", "LANG", "?DITOR"))
    assert env == {
        "PATH": "/usr/bin:/bin",
        "HOME": "/home/me",
        "Path": "mixed-case core name",
        "tmpdir": "/lower/tmp",
    }


def test_exclude_with_ignore_default_excludes() -> None:
    env = _env("all", ignore_default_excludes=True, exclude=("*KEY*",))
    assert "MY_API_KEY" not in env and "keychain" not in env and "MONKEY" not in env
    assert env["SECRET_THING"] == "s" and env["GITHUB_TOKEN"] == "t"


def test_set_overrides_and_is_not_filtered_by_excludes() -> None:
    env = _env(
        "none",
        exclude=("MY_*",),
        set_vars={"MY_TOKEN": "set survives", "HOME": "/set/home"},
    )
    assert env == {"MY_TOKEN": "set survives", "HOME": "/set/home"}
    env = _env("core", set_vars={"HOME": "/override"})
    assert env["HOME"] == "/override"


def test_include_only_keeps_matching_names_including_set_ones() -> None:
    env = _env(
        "all",
        set_vars={"KEEP_ME": "1", "DROP_ME": "2"},
        include_only=("keep_*", "path", "?ANG"),
    )
    assert env == {
        "PATH": "/usr/bin:/bin",
        "Path": "mixed-case core name",
        "LANG": "C.UTF-8",
        "KEEP_ME": "1",
    }


def test_empty_include_only_keeps_everything() -> None:
    assert _env("all", include_only=()) == _env("all")


def test_include_only_does_not_bring_back_excluded_names() -> None:
    env = _env("all", include_only=("*",), exclude=("EDITOR",))
    assert "EDITOR" not in env and "MY_API_KEY" not in env


def test_request_env_wins_over_everything_and_is_never_filtered() -> None:
    env = _env(
        "all",
        request_env={"X_FROM_REQUEST": "r", "HOME": "/request", "API_KEY": "r-key"},
        exclude=("X*", "HOME"),
        set_vars={"HOME": "/set"},
        include_only=("PATH",),
    )
    assert env == {
        "PATH": "/usr/bin:/bin",
        "Path": "mixed-case core name",
        "X_FROM_REQUEST": "r",
        "HOME": "/request",
        "API_KEY": "r-key",
    }


def test_the_server_env_is_not_modified() -> None:
    server = dict(SERVER_ENV)
    _env("all", set_vars={"NEW": "1"}, request_env={"PATH": "/r"}, server_env=server)
    assert server == SERVER_ENV


# ---- end to end ------------------------------------------------------------------------------


def _parse_env(output: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in output.decode().splitlines())


async def test_env_policy_end_to_end(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_THING", "server secret")
    monkeypatch.setenv("MY_API_KEY", "server key")
    monkeypatch.setenv("EXEC_SERVER_TEST_PLAIN", "not core")
    monkeypatch.setenv("HOME", "/home/from-server")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    async with running_server() as (_, url), Client.connect(url) as client:
        await client.initialize()
        policy = {
            "inherit": "core",
            "ignoreDefaultExcludes": False,
            "exclude": ["LANG", "LC_*"],
            "set": {"MY_TOKEN": "from set", "HOME": "/home/from-set", "DROPPED": "x"},
            "includeOnly": ["PATH", "HOME", "MY_*", "SHELL", "TMP*", "USER"],
        }
        env = {"HOME": "/home/from-request", "X_REQUEST": "wins", "MY_API_KEY": "request key"}
        events = await client.run("env", ["/usr/bin/env"], env=env, envPolicy=policy)
        child = _parse_env(events.data())
        assert child["PATH"] == "/usr/bin:/bin"  # inherited core name
        assert child["HOME"] == "/home/from-request"  # request env wins over set
        assert child["X_REQUEST"] == "wins"  # request env is not filtered by includeOnly
        assert child["MY_API_KEY"] == "request key"  # nor by the default excludes
        assert child["MY_TOKEN"] == "from set"  # set survives the default excludes
        assert "SECRET_THING" not in child
        assert "EXEC_SERVER_TEST_PLAIN" not in child  # not a core name
        assert "DROPPED" not in child  # includeOnly also filters set
        assert not any(name.startswith(("LANG", "LC_")) for name in child)

        # Without a policy the child gets exactly `env`: nothing from the server.
        events = await client.run("exact", ["/usr/bin/env"], env={"ONLY": "this"})
        assert _parse_env(events.data()) == {"ONLY": "this"}

        # inherit all, with default excludes ignored, passes the server's secrets on.
        policy = {
            "inherit": "all",
            "ignoreDefaultExcludes": True,
            "exclude": [],
            "set": {},
            "includeOnly": [],
        }
        events = await client.run("all", ["/usr/bin/env"], env={}, envPolicy=policy)
        child = _parse_env(events.data())
        assert child["SECRET_THING"] == "server secret"
        assert child["EXEC_SERVER_TEST_PLAIN"] == "not core"


@pytest.mark.parametrize(
    "policy",
    [
        {"inherit": "bogus"},
        {"inherit": "ALL"},
        {"inherit": None},
        {"inherit": 1},
    ],
)
async def test_bad_policy_is_invalid_params(client: Client, policy: dict[str, Any]) -> None:
    full = {
        "inherit": "all",
        "ignoreDefaultExcludes": False,
        "exclude": [],
        "set": {},
        "includeOnly": [],
        **policy,
    }
    params = {
        "processId": "bad",
        "argv": ["true"],
        "cwd": "/tmp",
        "env": {},
        "tty": False,
        "envPolicy": full,
    }
    error = await error_of(client, "process/start", params)
    assert error["code"] == -32602
    assert "inherit" in error["message"]
    await client.run("bad", ["/bin/true"], env={})  # the connection is still usable


@pytest.mark.parametrize(
    "missing", ["inherit", "ignoreDefaultExcludes", "exclude", "set", "includeOnly"]
)
async def test_every_policy_field_is_required(client: Client, missing: str) -> None:
    policy: dict[str, Any] = {
        "inherit": "all",
        "ignoreDefaultExcludes": False,
        "exclude": [],
        "set": {},
        "includeOnly": [],
    }
    del policy[missing]
    params = {
        "processId": "bad",
        "argv": ["true"],
        "cwd": "/tmp",
        "env": {},
        "tty": False,
        "envPolicy": policy,
    }
    error = await error_of(client, "process/start", params)
    assert error["code"] == -32602
    assert missing in error["message"]


def _reference_match(pattern: str, name: str) -> bool:
    """The glob by the standard library's translation to a regex (backtracking, but fine at
    these sizes): what ``matches`` must agree with."""
    import re

    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(body, name, re.IGNORECASE | re.DOTALL) is not None


@settings(max_examples=500, deadline=None)
@given(
    st.text(alphabet="ab*?_", max_size=8),
    st.text(alphabet="abAB_", max_size=10),
)
def test_glob_agrees_with_a_regex(pattern: str, name: str) -> None:
    assert matches(pattern, name) == _reference_match(pattern, name)


def test_a_pathological_pattern_is_decided_at_once() -> None:
    """Issue 11: ``*A*A*...*AB`` against a long name took a backtracking regex seconds (12
    stars: minutes) while the event loop stood still. Counted in steps, not timed: the
    matcher looks at each run between stars once."""
    pattern = "*A" * 12 + "B"
    name = "A" * 4000
    assert not matches(pattern, name)
    assert matches(pattern, "A" * 12 + "B")
    assert not matches("*A*A*A*A*A*A*A*AB", "A" * 40)


async def test_operator_excludes_win_over_everything_the_client_asks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--env-exclude: names never passed to a child, whether inherited, set by the policy
    or given in env (issue 11: inherit all passed DATABASE_URL and any *PASSWORD*)."""
    from exec_server.config import Guards

    monkeypatch.setenv("DATABASE_URL", "postgres://u:pw@db")
    monkeypatch.setenv("MY_PASSWORD_FILE", "/secret")
    monkeypatch.setenv("HARMLESS", "ok")
    guards = Guards(env_exclude=("DATABASE_URL", "*password*"))
    async with running_server(guards=guards) as (_, url), Client.connect(url) as client:
        await client.initialize()
        policy = {
            "inherit": "all",
            "ignoreDefaultExcludes": True,
            "exclude": [],
            "set": {"DB_PASSWORD": "set-by-client"},
            "includeOnly": [],
        }
        events = await client.run(
            "env",
            ["/usr/bin/env"],
            env={"PATH": "/usr/bin:/bin", "Database_Url": "given-by-client"},
            envPolicy=policy,
        )
        names = {line.split("=", 1)[0] for line in events.data().decode().splitlines()}
        assert "HARMLESS" in names
        assert not {"DATABASE_URL", "Database_Url", "MY_PASSWORD_FILE", "DB_PASSWORD"} & names
