"""Fuzzing the server through its real transports: strategies and a harness (no tests here).

A fuzz example is a short batch of frames, pipelined on one connection to a real
``exec-server`` process: requests for every method the server registers (well-typed,
wrongly typed, with fields missing or extra, huge, deeply nested, odd numbers), requests
with invalid ids, invalid UTF-8 inside ``params``, text that is not JSON, and over
WebSocket binary and fragmented frames. :func:`exchange` sends a batch followed by a
cheap probe and checks that every request with a valid id got exactly one reply of
JSON-RPC shape, that each unreadable frame got exactly one id -1 error, and that the
probe was answered (the connection survived).

Safety, because the server really does what it is asked:

* ``process/start`` runs only programs of :func:`programs` (``true``, ``echo``, ``cat``,
  ``sleep``, ``head`` of ``/dev/zero``, and programs that do not exist), never a drawn
  string. Values drawn for a field of the wrong type are never lists of strings there.
* Every ``fs/*`` path is under the fuzz's own fresh directory, or is not absolute (and so
  refused): drawn text never holds ``/`` or ``:``, path segments are never ``.`` or ``..``.
* ``http/request`` URLs come from a fixed list: a loopback port held closed by the test,
  and URLs refused before any connection. The server is also started with every
  non-loopback network denied (``--http-deny``), which turns environment proxies off.
* ``forward/open`` names addresses, never a name to resolve: loopback's port held closed,
  or addresses in networks the server denies.
* Offsets of ``fs/writeBlock`` are small or out of every file system's range, so no large
  sparse file is made for ``fs/copy`` to fill.
* :func:`check_safe` looks at every request before it is sent and fails the test if a
  strategy ever broke these rules.

Some long-lived children are drawn (``sleep 30``, ``cat`` reading a pipe); none is left to
block a request by design: ``sleep`` never gets a stdin to fill, ``cat`` always reads what it
is given, signals that stop a process are never drawn, and long polls wait at most 300 ms.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import posixpath
import queue
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote_to_bytes, urlsplit

import psutil
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect

from exec_server.methods import METHODS

from .sandbox_support import workspace_write
from .support import REPO, server_command

# ---- JSON text beyond what json.dumps writes ----------------------------------------------


@dataclass(frozen=True)
class RawJson:
    """JSON text written as it is. ``valid``: whether it is JSON a conforming parser reads
    (``1e400``, ``-0``, a 400-digit integer) or not (``NaN``, ``01``, ``+1``): a message
    holding invalid text anywhere is unreadable, answered with id -1."""

    text: bytes
    valid: bool = True


@dataclass(frozen=True)
class Nested:
    """Arrays (or objects) nested ``depth`` deep, written without recursion. Up to
    :data:`SHALLOW` levels a request holding it is answered under its id; from
    :data:`TOO_DEEP` on it is unreadable (id -1), as the reference's parser also says."""

    depth: int
    objects: bool = False

    def text(self) -> bytes:
        if self.objects:
            return b'{"a":' * self.depth + b"0" + b"}" * self.depth
        return b"[" * self.depth + b"]" * self.depth


SHALLOW = 60
TOO_DEEP = 5000


@dataclass(frozen=True)
class BadUtf8:
    """A JSON string holding ``raw`` bytes that are not UTF-8 between two ordinary parts."""

    before: str
    raw: bytes
    after: str


INVALID_UTF8 = [
    b"\xff",
    b"\xfe\xff",
    b"\xc3\x28",
    b"\xc0\xaf",
    b"\xed\xa0\x80",
    b"\xf8\x88\x80\x80",
]
"""A lone 0xFF, two bytes never in UTF-8, a broken pair, an overlong '/', an encoded
surrogate, a five-byte form."""


def encode(value: Any, *, ascii_only: bool = True) -> bytes:
    """``value`` as JSON bytes; :class:`RawJson`, :class:`Nested` and :class:`BadUtf8`
    are written as they are."""
    if isinstance(value, RawJson):
        return value.text
    if isinstance(value, Nested):
        return value.text()
    if isinstance(value, BadUtf8):
        return b"".join(
            (
                encode(value.before, ascii_only=ascii_only)[:-1],
                value.raw,
                encode(value.after, ascii_only=ascii_only)[1:],
            )
        )
    if isinstance(value, dict):
        items = (
            encode(str(k), ascii_only=ascii_only) + b":" + encode(v, ascii_only=ascii_only)
            for k, v in value.items()
        )
        return b"{" + b",".join(items) + b"}"
    if isinstance(value, list | tuple):
        return b"[" + b",".join(encode(v, ascii_only=ascii_only) for v in value) + b"]"
    return json.dumps(value, ensure_ascii=ascii_only, allow_nan=False).encode()


def unreadable(value: Any) -> bool:
    """Whether ``value`` holds JSON text no conforming parser reads, or nesting too deep."""
    if isinstance(value, RawJson):
        return not value.valid
    if isinstance(value, Nested):
        return value.depth >= TOO_DEEP
    if isinstance(value, dict):
        return any(unreadable(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(unreadable(v) for v in value)
    return False


def plain_text(value: Any) -> Any:
    """``value`` as the server can read it (for :func:`check_safe`): a :class:`BadUtf8`
    string is no string at all (decoding refuses it), so it is read as None."""
    if isinstance(value, BadUtf8):
        return None
    if isinstance(value, dict):
        return {k: plain_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_text(v) for v in value]
    return value


# ---- values ---------------------------------------------------------------------------------

TEXT = st.text(st.characters(codec="utf-8", exclude_characters="/:"), max_size=12)
"""Drawn text: any Unicode but surrogates, never a ``/`` or a ``:``, so never an absolute
path, a URI or a program path (NUL, newlines and control characters included)."""

HUGE_TEXT = st.builds(
    lambda n, c: c * n, st.sampled_from([1 << 16, 1 << 20]), st.sampled_from(["x", "é", "\u2603"])
)
"""Up to 1 Mi characters (3 MiB as UTF-8, 6 MiB escaped)."""

ODD_INTS = st.sampled_from(
    [0, 1, -1, 7, 255, 65536, 2**63 - 1, 2**63, 2**64, -(2**63), -(2**63) - 1, 10**30]
)
"""Integers at and past every bound the wire has; nothing between 2**17 and 2**63-1, which
as an ``fs/writeBlock`` offset would make a large sparse file."""

ODD_FLOATS = st.sampled_from([1.5, -0.0, 0.1, 2.0, 1e300, -1e-300])

VALID_NUMBER_TEXT = [
    b"1e400",
    b"-1e400",
    b"1E2",
    b"-0",
    b"1.0e-400",
    b"18446744073709551616",
    b"1" + b"0" * 400,
    b"0.0",
]
INVALID_NUMBER_TEXT = [
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"+1",
    b"01",
    b".5",
    b"1.",
    b"0x10",
    b"1e",
    b"--1",
    b"nul",
    b"tru",
]

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-1000, 1000),
    ODD_INTS,
    ODD_FLOATS,
    TEXT,
    st.sampled_from(VALID_NUMBER_TEXT).map(RawJson),
)

JUNK: st.SearchStrategy[Any] = st.one_of(
    st.recursive(
        SCALARS,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)
        ),
        max_leaves=8,
    ),
    HUGE_TEXT,
    st.builds(Nested, st.integers(1, SHALLOW), st.booleans()),
)
"""Any JSON value, valid and readable, never holding a ``/`` or a ``:`` in a string."""

POISON: st.SearchStrategy[Any] = st.one_of(
    st.sampled_from(INVALID_NUMBER_TEXT).map(lambda t: RawJson(t, valid=False)),
    st.builds(Nested, st.sampled_from([TOO_DEEP, 100_000]), st.booleans()),
)
"""Values that make the whole message unreadable (answered with id -1)."""

NON_STRING_LISTS = st.lists(
    st.one_of(st.none(), st.booleans(), st.integers(), ODD_FLOATS, st.just([])), min_size=1
)


def wrong_for_list_of_strings() -> st.SearchStrategy[Any]:
    """Wrongly typed values for a list-of-strings field whose strings would be run or
    opened: anything but a list of strings."""
    return st.one_of(
        SCALARS, NON_STRING_LISTS, st.dictionaries(TEXT, SCALARS, max_size=2), HUGE_TEXT
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


BASE64 = st.binary(max_size=256).map(b64)
"""Standard base64 of up to 256 bytes."""

NOT_BASE64 = st.sampled_from(["!!!!", "eA=", "e", "eA==\n", "é", "eA==eA=="])

SMALL_OR_HUGE_BASE64 = st.one_of(BASE64, BASE64, BASE64, st.just(b64(b"z" * (1 << 20))))


# ---- what one test's fuzz may touch ---------------------------------------------------------


@dataclass
class World:
    """What strategies need to know of the fuzz's surroundings."""

    root: str
    """A fresh directory: every fs/* path drawn is in it or refused."""
    closed_port: int
    """A loopback port bound and never listened on: a connection there is refused."""
    session_id: str = ""

    @property
    def urls(self) -> list[str]:
        port = self.closed_port
        return [
            f"http://127.0.0.1:{port}/x",
            f"https://127.0.0.1:{port}/",
            f"http://127.0.0.1:{port}/%ff?q=\u2603",
            "ftp://127.0.0.1/",
            "file:///nonexistent",
            "http://",
            "http://%41:80/",
            "http:///x",
            "",
        ]


SAFE_SEGMENT = st.one_of(
    st.sampled_from(["d", "f", "g", "new"]),
    st.text(alphabet="abcé -_%\u2603", min_size=1, max_size=6),
)
"""A path segment: mostly a name of :func:`populate`'s, never ``.`` or ``..``, never ``/``."""


def remove_world(world: World) -> None:
    """Remove what the fuzz made, deep trees included (which the standard library's
    rmtree, recursive before Python 3.12, would fail on when pytest cleans up)."""
    for path in (world.root, world.root + "-codex-home"):
        subprocess.run(["rm", "-rf", "--", path], check=True)


def populate(root: str) -> None:
    """The files the fuzz works on, made again before each example (an earlier one may have
    removed or changed them): ``d/`` holding ``f``, and ``g``."""
    for directory in (root, os.path.join(root, "d")):
        if os.path.lexists(directory) and not os.path.isdir(directory):
            os.unlink(directory)  # an earlier example wrote a file there
        os.makedirs(directory, exist_ok=True)
    for name in ("d/f", "g"):
        target = os.path.join(root, name)
        if not os.path.isfile(target):
            with contextlib.suppress(OSError), open(target, "wb") as f:
                f.write(b"fuzz\n")


PROCESS_IDS = [f"p{n}" for n in range(24)]
"""Process ids: enough that starts keep succeeding (an id stays taken while its process is
retained), few enough that the other methods find the processes."""
HANDLE_IDS = ["h0", "h1", "h2"]
STOP_SIGNALS = {"STOP", "TSTP", "TTIN", "TTOU", "19", "20", "21", "22"}


def _stops(value: Any) -> bool:
    """Whether ``value`` could name a signal that stops a process (never drawn: a stopped
    ``cat`` stops reading, and a write to it would wait by design)."""
    if isinstance(value, dict):
        return any(_stops(k) for k in value)
    if isinstance(value, bool) or not isinstance(value, int | str):
        return False
    name = str(value).strip().upper()
    return name.removeprefix("SIG") in STOP_SIGNALS or name in STOP_SIGNALS


@dataclass(frozen=True)
class Program:
    """A child the fuzz may start, with the modes it may run in."""

    argv: tuple[str, ...]
    ttys: tuple[bool, ...] = (False, True)
    pipe_stdins: tuple[bool, ...] = (False, True)


def programs(world: World) -> list[Program]:
    """The programs the fuzz may start; the last two do not exist."""
    return [
        Program(("true",)),
        Program(("false",)),
        Program(("echo", "x")),
        Program(("head", "-c", "70000", "/dev/zero")),
        Program(("cat",), ttys=(False,)),  # reads whatever it is given, in pipe mode
        Program(("sleep", "30"), ttys=(False,), pipe_stdins=(False,)),  # never given a stdin
        Program((posixpath.join(world.root, "no-such-program"),)),
        Program(("no-such-program-for-fuzzing",)),
    ]


class Field:
    """One field of a params object: its well-typed values, its wrong ones, whether it is
    required. ``bad=None`` draws any readable JSON (:data:`JUNK`)."""

    def __init__(
        self,
        good: st.SearchStrategy[Any],
        *,
        required: bool = True,
        bad: st.SearchStrategy[Any] | None = None,
    ) -> None:
        self.good = good
        self.required = required
        self.bad = JUNK if bad is None else bad


@st.composite
def params_object(draw: st.DrawFn, fields: dict[str, Field]) -> dict[str, Any]:
    """A params object: well-typed (six times in ten), with one field missing or wrongly
    typed, or with every field left to chance; now and then with an extra member the server
    must ignore."""
    roll = draw(st.integers(0, 9))
    mode = "valid" if roll < 6 else "one-off" if roll < 9 else "chaos"
    names = list(fields)
    odd_one = draw(st.sampled_from(names)) if mode == "one-off" else None
    params: dict[str, Any] = {}
    for name, spec in fields.items():
        if mode == "chaos":
            fate = draw(st.sampled_from(["good", "good", "bad", "missing"]))
        elif name == odd_one:
            fate = draw(st.sampled_from(["bad", "missing"]))
        else:
            fate = "good" if spec.required or draw(st.booleans()) else "missing"
        if fate != "missing":
            params[name] = draw(spec.good if fate == "good" else spec.bad)
    if draw(st.integers(0, 4)) == 0:
        params["x-" + draw(TEXT)] = draw(JUNK)  # "-" keeps it apart from every field name
    return params


@dataclass(frozen=True)
class Paths:
    """Paths for ``fs/*`` and cwd fields: ``good`` ones name :func:`populate`'s files (or a
    new name beside them) in every spelling; ``bad`` ones are refused or fail (or, a tree
    1200 levels deep, take long enough to be drawn less often)."""

    good: st.SearchStrategy[str]
    bad: st.SearchStrategy[Any]


def paths(root: str) -> Paths:
    known = st.sampled_from(["", "d", "d/f", "g", "new", "d/new", "new/new"]).map(
        lambda name: posixpath.join(root, name) if name else root
    )
    under = st.lists(SAFE_SEGMENT, max_size=3).map(lambda parts: posixpath.join(root, *parts))
    named = st.one_of(known, known, under)
    good = st.one_of(
        named,
        named,
        named,
        named.map(lambda p: p + "/"),
        named.map(lambda p: "file://" + quote(p)),
        named.map(lambda p: "file://localhost" + quote(p)),
        named.map(lambda p: p.replace(root, root + "//", 1)),
    )
    bad = st.one_of(
        st.just(root + "/d" * 1200),  # deep, yet short enough: valid, but costly, so rarer
        st.just(root + "/a\0b"),
        st.just("file://" + quote(root) + "/%00"),
        st.just("file://" + quote(root) + "/%FF%FE"),  # not UTF-8: the OS's bytes
        st.just(root + "/" + "n" * 300),  # a name too long
        st.just(root + "/d" * 2100),  # a path too long
        st.just("file://elsewhere" + quote(root)),  # a remote host: refused
        TEXT,  # relative: refused
        JUNK,
    )
    return Paths(good, bad)


def sandboxes(world: World) -> Field:
    profile = workspace_write("file://" + quote(world.root))
    return Field(
        st.one_of(
            st.none(),
            st.none(),
            st.none(),
            st.just(profile),
            st.just({**profile, "permissions": {"type": "disabled"}}),
        ),
        required=False,
        bad=st.one_of(st.dictionaries(TEXT, JUNK, max_size=2), JUNK),
    )


MILLISECONDS = Field(
    st.one_of(st.none(), st.sampled_from([0, 1, 50, 1000, 2**53 + 1, 2**63 - 1])),
    required=False,
    bad=st.one_of(JUNK, ODD_INTS, ODD_FLOATS),
)
"""Time values: none, small, huge (an overflow in a timer would show), and invalid."""

ENV_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="/:=\0"), max_size=12)
"""Text an environment takes as a name or value (no NUL, no ``=``)."""


def method_params(world: World) -> dict[str, st.SearchStrategy[Any]]:
    """For every method the server registers, a strategy of its params."""
    path = paths(world.root)
    sandbox = sandboxes(world)
    no_params = st.one_of(st.just(ABSENT), st.none(), st.just({}), JUNK)
    progs = programs(world)

    def fs_path(required: bool = True) -> Field:
        return Field(path.good, required=required, bad=path.bad)

    @st.composite
    def start(draw: st.DrawFn) -> dict[str, Any]:
        real, missing = progs[:-2], progs[-2:]
        program = draw(
            st.one_of(st.sampled_from(real), st.sampled_from(real), st.sampled_from(missing))
        )
        argv: list[Any] = list(program.argv)
        if program.argv[0] == "echo" and draw(st.booleans()):
            argv.append(draw(st.one_of(TEXT, HUGE_TEXT)))
        fields = {
            "processId": Field(
                st.one_of(  # an id of the others' (maybe taken), or one of its own
                    st.sampled_from(PROCESS_IDS), st.integers(0, 10**9).map(lambda n: f"q{n}")
                ),
                bad=st.one_of(JUNK, HUGE_TEXT),
            ),
            "argv": Field(
                st.just(argv),
                bad=st.one_of(
                    wrong_for_list_of_strings(),
                    st.just([]),
                    st.just([program.argv[0] + "\0x"]),
                ),
            ),
            "cwd": Field(
                st.sampled_from([world.root, world.root + "/d", "file://" + quote(world.root)]),
                bad=st.one_of(
                    path.good,  # most do not exist, or are files
                    path.bad,
                    st.sampled_from(["/tmp\0/nope", "file:///tmp%00/x"]),
                ),
            ),
            "env": Field(
                st.one_of(
                    st.just({"PATH": "/usr/bin:/bin"}),
                    st.just({}),
                    st.dictionaries(ENV_TEXT.filter(bool), ENV_TEXT, max_size=3),
                ),
                bad=st.one_of(
                    JUNK,
                    st.sampled_from(
                        [
                            {"PATH": "/usr/bin:/bin", "A": "x\0y"},
                            {"A\0B": "x"},
                            {"A=": "x"},
                            {"": "x"},
                            {"BIG": "v" * (1 << 20)},
                        ]
                    ),
                ),
            ),
            "tty": Field(st.sampled_from(program.ttys), bad=SCALARS.filter(_not_bool)),
            "pipeStdin": Field(
                st.sampled_from(program.pipe_stdins), required=False, bad=SCALARS.filter(_not_bool)
            ),
            "envPolicy": Field(
                st.one_of(st.none(), env_policies(valid=True)),
                required=False,
                bad=st.one_of(JUNK, env_policies(valid=False)),
            ),
            "arg0": Field(
                st.one_of(st.none(), ENV_TEXT), required=False, bad=st.one_of(JUNK, st.just("a\0b"))
            ),
            "size": Field(
                st.one_of(
                    st.none(),
                    st.fixed_dictionaries(
                        {"rows": st.integers(1, 500), "cols": st.integers(1, 500)}
                    ),
                ),
                required=False,
                bad=st.one_of(
                    JUNK,
                    st.fixed_dictionaries(
                        {"rows": st.one_of(st.integers(0, 70000), ODD_INTS), "cols": ODD_INTS}
                    ),
                ),
            ),
            "timeoutMs": MILLISECONDS,
            "idleTimeoutMs": MILLISECONDS,
            "drainTimeoutMs": MILLISECONDS,
            "sandbox": sandbox,
            "enforceManagedNetwork": Field(st.just(False), required=False, bad=st.just(True)),
        }
        return draw(params_object(fields))

    def obj(**fields: Field) -> st.SearchStrategy[dict[str, Any]]:
        return params_object(fields)

    process_id = Field(st.sampled_from(PROCESS_IDS), bad=st.one_of(JUNK, HUGE_TEXT))
    handle_id = Field(st.sampled_from(HANDLE_IDS), bad=JUNK)
    optional_bool = Field(st.one_of(st.none(), st.booleans()), required=False)
    offset = Field(
        st.one_of(st.integers(0, 70000), st.just(2**63 - 1)),
        bad=st.one_of(JUNK, st.sampled_from([-1, 2**64, 1.5])),
    )
    strategies: dict[str, st.SearchStrategy[Any]] = {
        "initialize": obj(
            clientName=Field(st.one_of(TEXT, HUGE_TEXT)),
            resumeSessionId=Field(
                st.one_of(st.none(), st.just(world.session_id), TEXT), required=False
            ),
        ),
        "environment/info": no_params,
        "environment/status": no_params,
        "environmentConfig/read": obj(
            cwd=Field(st.one_of(st.just(world.root), path.good), bad=path.bad),
            configPaths=Field(st.lists(st.lists(TEXT, max_size=3), max_size=3)),
            requirementsPaths=Field(st.lists(st.lists(TEXT, max_size=3), max_size=3)),
        ),
        "process/start": start(),
        "process/read": obj(
            processId=process_id,
            afterSeq=Field(
                st.one_of(st.none(), st.integers(0, 10)),
                required=False,
                bad=st.one_of(JUNK, ODD_INTS),
            ),
            maxBytes=Field(
                st.one_of(st.none(), st.integers(0, 100), st.just(2**63 - 1)),
                required=False,
                bad=st.one_of(JUNK, ODD_INTS),
            ),
            waitMs=Field(
                st.one_of(st.none(), st.integers(0, 300)),
                required=False,
                bad=st.one_of(TEXT, ODD_FLOATS, st.sampled_from([-1, 2**64, -(2**63) - 1])),
            ),
        ),
        "process/write": obj(
            processId=process_id,
            chunk=Field(SMALL_OR_HUGE_BASE64, bad=st.one_of(JUNK, NOT_BASE64)),
            writeId=Field(
                st.one_of(st.none(), TEXT.filter(bool)),
                required=False,
                bad=st.one_of(JUNK, st.just("")),
            ),
        ),
        "process/terminate": obj(processId=process_id, graceMs=MILLISECONDS),
        "process/signal": obj(
            processId=process_id,
            signal=Field(
                st.one_of(
                    st.sampled_from(["interrupt", "TERM", "SIGKILL", "int", "Hup", "0"]),
                    st.integers(0, 64),
                    st.just({"interrupt": None}),
                ).filter(lambda v: not _stops(v)),
                bad=st.one_of(
                    JUNK, st.sampled_from(["NOPE", -2, 65, {"kill": None, "term": None}])
                ).filter(lambda v: not _stops(v)),
            ),
        ),
        "process/closeStdin": obj(processId=process_id),
        "process/resize": obj(
            processId=process_id,
            rows=Field(st.integers(1, 500), bad=st.one_of(JUNK, ODD_INTS, st.just(70000))),
            cols=Field(st.integers(1, 500), bad=st.one_of(JUNK, ODD_INTS, st.just(70000))),
        ),
        "process/list": no_params,
        "fs/readFile": obj(path=fs_path(), sandbox=sandbox),
        "fs/getMetadata": obj(path=fs_path(), sandbox=sandbox),
        "fs/readDirectory": obj(path=fs_path(), sandbox=sandbox),
        "fs/canonicalize": obj(path=fs_path(), sandbox=sandbox),
        "fs/writeFile": obj(
            path=fs_path(),
            dataBase64=Field(BASE64, bad=st.one_of(JUNK, NOT_BASE64)),
            sandbox=sandbox,
        ),
        "fs/createDirectory": obj(path=fs_path(), recursive=optional_bool, sandbox=sandbox),
        "fs/remove": obj(
            path=fs_path(), recursive=optional_bool, force=optional_bool, sandbox=sandbox
        ),
        "fs/copy": obj(
            sourcePath=fs_path(),
            destinationPath=fs_path(),
            recursive=Field(st.booleans()),
            sandbox=sandbox,
        ),
        "fs/open": obj(
            handleId=handle_id,
            path=fs_path(),
            mode=Field(
                st.sampled_from(["read", "replace"]),
                required=False,
                bad=st.one_of(JUNK, st.sampled_from(["append", "READ"])),
            ),
            sandbox=sandbox,
        ),
        "fs/readBlock": obj(
            handleId=handle_id,
            offset=offset,
            len=Field(
                st.integers(1, 70000),
                bad=st.one_of(JUNK, st.sampled_from([0, (1 << 20) + 1, 2**63 - 1])),
            ),
        ),
        "fs/writeBlock": obj(
            handleId=handle_id,
            offset=offset,
            chunk=Field(BASE64, bad=st.one_of(JUNK, NOT_BASE64)),
        ),
        "fs/close": obj(handleId=handle_id),
        "fs/watchMissing": obj(
            watchId=Field(st.integers(0, 5), bad=st.one_of(JUNK, ODD_INTS, st.just(2**64 - 1))),
            missing=Field(
                st.lists(path.good, max_size=3),
                bad=st.one_of(
                    wrong_for_list_of_strings(),
                    st.lists(path.bad.filter(_is_str), min_size=1, max_size=2),
                ),
            ),
            present=Field(st.one_of(st.none(), path.good), required=False, bad=path.bad),
        ),
        "http/request": obj(
            method=Field(
                st.sampled_from(["GET", "POST", "get", "BREW"]),
                bad=st.one_of(JUNK, st.sampled_from(["G T", "", "GET\r\n"])),
            ),
            url=Field(
                st.sampled_from(world.urls[:3]),
                bad=st.one_of(JUNK, st.sampled_from(world.urls[3:])),
            ),
            requestId=Field(st.one_of(st.sampled_from(["r0", "r1"]), TEXT), bad=JUNK),
            headers=Field(
                st.lists(
                    st.fixed_dictionaries(
                        {
                            "name": st.sampled_from(["accept", "x-a"]),
                            "value": st.sampled_from(["*/*", ""]),
                        }
                    ),
                    max_size=2,
                ),
                required=False,
                bad=st.one_of(
                    JUNK,
                    st.lists(
                        st.fixed_dictionaries({"name": TEXT, "value": st.one_of(TEXT, HUGE_TEXT)}),
                        min_size=1,
                        max_size=2,
                    ),
                ),
            ),
            bodyBase64=Field(
                st.one_of(st.none(), BASE64), required=False, bad=st.one_of(JUNK, NOT_BASE64)
            ),
            timeoutMs=Field(
                st.one_of(st.none(), st.sampled_from([1, 100, 500, 2**63 - 1])), required=False
            ),
            streamResponse=Field(st.booleans(), required=False),
            redirectPolicy=Field(
                st.one_of(st.none(), st.sampled_from(["follow", "stop"])),
                required=False,
                bad=st.one_of(JUNK, st.just("nope")),
            ),
        ),
        **forward_strategies(world, obj),
    }
    missing = set(METHODS) - set(strategies)
    assert not missing, f"methods without a fuzz strategy: {sorted(missing)}"
    return strategies


FORWARD_HOSTS = ("127.0.0.1", "::1", "10.0.0.1", "192.0.2.1")
"""Only addresses (never a name to resolve); all but the first are in denied networks."""


def forward_strategies(world: World, obj: Any) -> dict[str, st.SearchStrategy[dict[str, Any]]]:
    """``forward/*``: only to loopback's port held closed (refused), or to names the server
    refuses before connecting (non-loopback networks are denied, see the module docstring)."""
    stream_id = Field(st.sampled_from(["s0", "s1"]), bad=st.one_of(JUNK, st.just(""), HUGE_TEXT))
    return {
        "forward/open": obj(
            streamId=stream_id,
            host=Field(
                st.sampled_from(FORWARD_HOSTS),
                bad=st.sampled_from([None, 7, "", "a\0b", ["127.0.0.1"]]),  # never a name
            ),
            port=Field(
                st.just(world.closed_port), bad=st.one_of(JUNK, st.sampled_from([0, 70000]))
            ),
            window=Field(st.integers(1, 1 << 20), required=False, bad=st.one_of(JUNK, st.just(0))),
        ),
        "forward/write": obj(
            streamId=stream_id, data=Field(BASE64, bad=st.one_of(JUNK, NOT_BASE64))
        ),
        "forward/credit": obj(
            streamId=stream_id,
            bytes=Field(st.integers(0, 1 << 20), bad=st.one_of(JUNK, ODD_INTS)),
        ),
        "forward/shutdown": obj(streamId=stream_id),
        "forward/close": obj(streamId=stream_id),
    }


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _not_bool(value: Any) -> bool:
    return not isinstance(value, bool)


def env_policies(*, valid: bool) -> st.SearchStrategy[Any]:
    pattern = st.one_of(st.text(alphabet="AB*?_a", max_size=30), st.just("*A" * 12 + "B"), ENV_TEXT)
    name = st.one_of(st.text(alphabet="AB_", min_size=1, max_size=8), st.just("A" * 5000))
    fields = {
        "inherit": Field(
            st.sampled_from(["all", "core", "none"]), bad=st.one_of(JUNK, st.just("ALL"))
        ),
        "ignoreDefaultExcludes": Field(st.booleans()),
        "exclude": Field(st.lists(pattern, max_size=3)),
        "set": Field(
            st.dictionaries(name, ENV_TEXT, max_size=3),
            bad=st.one_of(JUNK, st.just({"A\0": "x"}), st.just({"A": "\0"})),
        ),
        "includeOnly": Field(st.lists(pattern, max_size=3)),
    }
    if valid:
        return st.fixed_dictionaries({k: f.good for k, f in fields.items()})
    return params_object(fields)


# ---- drafts: what hypothesis draws; frames: what is sent --------------------------------------


class _Absent:
    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()
"""``params`` left out of the message."""

MALFORMED = object()
"""The reply expected for an unreadable frame: an error with id -1."""


@dataclass(frozen=True, repr=False)
class Draft:
    """One frame to send, before its id is known.

    ``id_style``: ``int``, ``near-max`` (2**63-1 less a count), ``negative`` or a string
    prefix. ``raw_id``: an invalid id written as it is (the reply is then id -1).
    ``garbage``: the whole frame, unreadable (no id). ``binary``/``fragments``: how a
    WebSocket sends it (stdio sends a line).
    """

    method: str = ""
    params: Any = ABSENT
    id_style: str = "int"
    raw_id: bytes | None = None
    garbage: bytes | None = None
    ascii_only: bool = True
    binary: bool = False
    fragments: int = 1

    def __repr__(self) -> str:
        """Short enough for a failure report (params may hold megabytes)."""
        shown = ", ".join(
            f"{name}={_short(getattr(self, name))}"
            for name in ("method", "params", "id_style", "raw_id", "garbage", "binary", "fragments")
        )
        return f"Draft({shown})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))  # hypothesis prints failing examples through this


@dataclass(frozen=True)
class Frame:
    """One frame as sent, and the answer it asks for."""

    data: bytes
    expect: Any
    """The id whose reply this frame asks for, or :data:`MALFORMED`."""
    binary: bool = False
    fragments: int = 1
    method: str = ""
    must_fail: bool = False
    """Whether only an error may answer it (bytes that are not UTF-8 in a field the method
    reads)."""


def materialize(draft: Draft, number: int) -> Frame:
    """The frame for ``draft``, its id made unique with ``number``."""
    if draft.garbage is not None:
        return Frame(draft.garbage, MALFORMED, draft.binary, draft.fragments)
    request_id: Any
    if draft.raw_id is not None:
        id_text = draft.raw_id
        request_id = MALFORMED
    else:
        if draft.id_style == "int":
            request_id = number
        elif draft.id_style == "near-max":
            request_id = 2**63 - 1 - number
        elif draft.id_style == "negative":
            request_id = -(2**63) + number  # never -1, the id of unreadable frames' errors
        else:
            request_id = f"{draft.id_style}#{number}"  # unique: the count follows the last '#'
        id_text = encode(request_id, ascii_only=draft.ascii_only)
    parts = [b'{"id":' + id_text, b'"method":' + encode(draft.method)]
    if draft.params is not ABSENT:
        parts.append(b'"params":' + encode(draft.params, ascii_only=draft.ascii_only))
    data = b",".join(parts) + b"}"
    expect = MALFORMED if unreadable(draft.params) else request_id
    must_fail = isinstance(draft.params, dict) and any(
        isinstance(v, BadUtf8) and not k.startswith("x-") for k, v in draft.params.items()
    )
    return Frame(data, expect, draft.binary, draft.fragments, draft.method, must_fail)


INVALID_IDS = [b"null", b"true", b"false", b"1.5", b"1.0", b"{}", b"[]", b"[1]", b'{"a":1}']
INVALID_IDS += [str(2**63).encode(), str(2**64).encode(), str(-(2**63) - 1).encode(), b"1e400"]

UNKNOWN_METHODS = ["no/such", "initialized", "fs/walk", "process/kill", "Initialize", ""]

ID_STYLES = st.one_of(
    st.sampled_from(["int", "int", "near-max", "negative", "s", ""]),
    TEXT.map(lambda t: t + "!"),
    st.just("i" * (1 << 16)),  # a string id of 64 KiB
)


def _framing(draw: st.DrawFn) -> tuple[bool, int]:
    return draw(st.booleans()), draw(st.sampled_from([1, 1, 1, 2, 5]))


@st.composite
def _request(
    draw: st.DrawFn, strategies: dict[str, st.SearchStrategy[Any]], method: str | None = None
) -> Draft:
    if method is None:
        method = draw(st.sampled_from(sorted(strategies)))
    binary, fragments = _framing(draw)
    return Draft(
        method=method,
        params=draw(strategies[method]),
        id_style=draw(ID_STYLES),
        ascii_only=draw(st.booleans()),
        binary=binary,
        fragments=fragments,
    )


@st.composite
def _unknown_method(draw: st.DrawFn) -> Draft:
    binary, fragments = _framing(draw)
    method = draw(st.one_of(st.sampled_from(UNKNOWN_METHODS), TEXT))
    return Draft(
        method=method,
        params=draw(st.one_of(st.just(ABSENT), JUNK)),
        binary=binary,
        fragments=fragments,
    )


@st.composite
def _bad_utf8(draw: st.DrawFn, strategies: dict[str, st.SearchStrategy[Any]]) -> Draft:
    """A request whose params hold bytes that are not UTF-8 inside a string (a field of the
    method's, or an extra one)."""
    request = draw(_request(strategies))
    params = request.params
    if not isinstance(params, dict):
        params = {}
    params = dict(params)
    strings = sorted(k for k, v in params.items() if isinstance(v, str))
    key = draw(st.sampled_from(strings)) if strings and draw(st.booleans()) else "x-note"
    text = params.get(key, "") if isinstance(params.get(key), str) else ""
    cut = draw(st.integers(0, len(text)))
    params[key] = BadUtf8(text[:cut], draw(st.sampled_from(INVALID_UTF8)), text[cut:])
    return Draft(
        method=request.method,
        params=params,
        id_style=request.id_style,
        binary=request.binary,
        fragments=request.fragments,
    )


@st.composite
def _poisoned(draw: st.DrawFn, strategies: dict[str, st.SearchStrategy[Any]]) -> Draft:
    """A request holding text that is not JSON, or nesting too deep: unreadable."""
    request = draw(_request(strategies))
    params = request.params if isinstance(request.params, dict) else {}
    key = draw(st.sampled_from(sorted(params) or ["x-poison"]))
    return Draft(
        method=request.method, params={**params, key: draw(POISON)}, id_style=request.id_style
    )


@st.composite
def _invalid_id(draw: st.DrawFn, strategies: dict[str, st.SearchStrategy[Any]]) -> Draft:
    request = draw(_request(strategies))
    raw_id = draw(
        st.one_of(
            st.sampled_from(INVALID_IDS),
            st.builds(lambda n: b"[" * n + b"]" * n, st.sampled_from([3, 5000])),
        )
    )
    return Draft(
        method=request.method,
        params=request.params,
        raw_id=raw_id,
        binary=request.binary,
        fragments=request.fragments,
    )


def _is_garbage(data: bytes) -> bool:
    """Whether ``data`` can only be unreadable: not blank (stdio skips blank lines), one line,
    and no member that could make it a message the server would act on."""
    if not data.strip() or b"\n" in data:
        return False
    return not any(word in data for word in (b'"method"', b'"result"', b'"error"'))


GARBAGE = st.one_of(
    st.binary(min_size=1, max_size=64),
    st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from(
        [
            b"not json",
            b"{}",
            b"[]",
            b'{"id":1}',
            b'{"id":1,"params":{}}',
            b"null",
            b"7",
            b'"text"',
            b"\xff\xfe\x00",
            b"\xef\xbb\xbf{}",
            b'{"id":1,"meth',
            b'[{"id":1}]',
            b"{" * 100_000,
            b"[" * 100_000 + b"]" * 100_000,
            b'{"id":' + b"[" * 3000 + b"]" * 3000 + b"}",
            b'{"id":"' + b"x" * (1 << 20) + b'"}',
        ]
    ),
).filter(_is_garbage)


@st.composite
def _garbage(draw: st.DrawFn) -> Draft:
    binary, fragments = _framing(draw)
    return Draft(garbage=draw(GARBAGE), binary=binary, fragments=fragments)


def batches(world: World, lead: str) -> st.SearchStrategy[list[Draft]]:
    """What one example sends: a request for ``lead`` (a method the server registers; the
    fuzz goes through them in turn, so each gets its share), then up to five more frames,
    about three in four of them requests for any method."""
    strategies = method_params(world)
    kinds: list[tuple[int, st.SearchStrategy[Draft]]] = [
        (75, _request(strategies)),
        (5, _unknown_method()),
        (5, _bad_utf8(strategies)),
        (5, _poisoned(strategies)),
        (5, _invalid_id(strategies)),
        (5, _garbage()),
    ]

    @st.composite
    def one(draw: st.DrawFn) -> Draft:
        roll = draw(st.integers(0, 99))
        for weight, kind in kinds:
            if roll < weight:
                return draw(kind)
            roll -= weight
        raise AssertionError("weights add up to 100")

    return st.builds(
        lambda first, rest: [first, *rest],
        _request(strategies, lead),
        st.lists(one(), max_size=5),
    )


def explicit_batches(world: World) -> dict[str, list[list[Draft]]]:
    """Batches every run sends first, by the method they are led by: what the fuzz once
    found (paths that are not UTF-8 in replies, trees deeper than Python's recursion
    limit, sandboxed starts that fail) and valid cases too costly to be drawn often."""
    root = world.root
    deep = root + "/d" * 1200
    not_utf8 = "file://" + quote(root) + "/%FF%FE"
    sandbox = workspace_write("file://" + quote(root))

    def request(method: str, **params: Any) -> Draft:
        return Draft(method=method, params=params)

    start = {"argv": ["true"], "env": {"PATH": "/usr/bin:/bin"}, "tty": False}
    return {
        "fs/createDirectory": [
            [
                request("fs/createDirectory", path=deep),
                request("fs/remove", path=root + "/d", recursive=True),
            ],
            [
                request("fs/createDirectory", path=deep, sandbox=sandbox),
                request("fs/remove", path=root + "/d", recursive=True, sandbox=sandbox),
            ],
        ],
        "fs/copy": [
            [
                request("fs/createDirectory", path=deep),
                request(
                    "fs/copy", sourcePath=root + "/d", destinationPath=root + "/new", recursive=True
                ),
                request("fs/remove", path=root + "/new", recursive=True),
            ]
        ],
        "fs/getMetadata": [[request("fs/getMetadata", path=not_utf8)]],
        "process/start": [
            [request("process/start", processId="u", cwd=not_utf8, **start)],
            [
                request(
                    "process/start", processId="s", cwd=root + "/missing", sandbox=sandbox, **start
                )
            ],
        ],
    }


# ---- the safety net -----------------------------------------------------------------------

PATH_FIELDS = ("path", "sourcePath", "destinationPath", "present", "cwd")


def _local_path(value: str) -> str | None:
    """The absolute path ``value`` names on this machine, or None if it is not one."""
    if value.startswith("file:"):
        parts = urlsplit(value)
        if parts.netloc not in ("", "localhost"):
            return None
        value = os.fsdecode(unquote_to_bytes(parts.path))
    if not value.startswith("/"):
        return None
    return value


def check_safe(draft: Draft, world: World) -> None:
    """Fail (a bug of the fuzz, not of the server) if a request could run anything but a
    program of :func:`programs`, touch a path outside the fuzz's directory, or leave this
    machine."""
    params = plain_text(draft.params)
    if not isinstance(params, dict):
        return
    argv = params.get("argv")
    if isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv):
        run = tuple(a.split("\0")[0] for a in argv)  # as a C string: up to a NUL, if let through
        allowed = {p.argv for p in programs(world)}
        harmless = run[0] in ("echo", "true", "false")  # whatever their arguments
        assert run in allowed or harmless, f"fuzz bug: argv {argv!r}"
    named = [params.get(name) for name in PATH_FIELDS]
    missing = params.get("missing")
    if isinstance(missing, list):
        named += missing
    for value in named:
        if not isinstance(value, str):
            continue
        local = _local_path(value)
        if local is None or "\0" in local:
            continue
        assert ".." not in local.split("/"), f"fuzz bug: path {value!r}"
        normal = posixpath.normpath(local)
        if normal.startswith("//"):
            normal = "/" + normal.lstrip("/")
        assert normal == world.root or normal.startswith(world.root + "/"), (
            f"fuzz bug: path {value!r} is outside {world.root}"
        )
    if draft.method == "forward/open":
        host, port = params.get("host"), params.get("port")
        assert not isinstance(host, str) or host in FORWARD_HOSTS or host in ("", "a\0b"), (
            f"fuzz bug: forward/open host {host!r} could be resolved"
        )
        local = host == "127.0.0.1" and isinstance(port, int) and 0 < port < 65536
        assert not local or port == world.closed_port, f"fuzz bug: forward to port {port!r}"
    url = params.get("url")
    if isinstance(url, str) and draft.method == "http/request":
        assert url in world.urls or ":" not in url, f"fuzz bug: url {url!r}"


# ---- transports ---------------------------------------------------------------------------


def server_env(world: World) -> dict[str, str]:
    """The environment of a fuzzed server: no proxies, a codex home of the fuzz's own (beside
    the fuzz's directory, which the fuzz may remove)."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    home = world.root + "-codex-home"
    os.makedirs(home, exist_ok=True)
    env["CODEX_HOME"] = home
    return env


HTTP_DENY = [
    "0.0.0.0/2",
    "64.0.0.0/3",
    "96.0.0.0/4",
    "112.0.0.0/5",
    "120.0.0.0/6",
    "124.0.0.0/7",
    "126.0.0.0/8",
    "128.0.0.0/1",
    "::/0",
]
"""Every network but 127.0.0.0/8: the fuzz's http/request stays on this machine."""


def server_args() -> list[str]:
    args = ["--detach-grace", "0"]
    for network in HTTP_DENY:
        args += ["--http-deny", network]
    return args


class Channel:
    """One connection to a fuzzed server: frames out, messages in (as text)."""

    malformed_prefix = ""
    proc: subprocess.Popen[bytes]

    def send(self, frame: Frame) -> None:
        raise NotImplementedError

    def recv(self, timeout: float) -> str:
        """The next message; raises TimeoutError."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _Drain(threading.Thread):
    """Reads a pipe to its end on a thread: lines into a queue, or all into a buffer."""

    def __init__(self, pipe: Any, lines: queue.Queue[bytes | None] | None = None) -> None:
        super().__init__(daemon=True)
        self.pipe = pipe
        self.lines = lines
        self.text = bytearray()
        self.start()

    def run(self) -> None:
        for line in self.pipe:
            if self.lines is not None:
                self.lines.put(line)
            else:
                self.text += line
        if self.lines is not None:
            self.lines.put(None)


class StdioChannel(Channel):
    """``exec-server --listen stdio`` as a child of the test."""

    malformed_prefix = "failed to parse JSON-RPC message from exec-server stdio: "

    def __init__(self, world: World) -> None:
        self.proc = subprocess.Popen(
            server_command("--listen", "stdio", *server_args()),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPO,
            env=server_env(world),
        )
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._out = _Drain(self.proc.stdout, self._lines)
        self.stderr = _Drain(self.proc.stderr)

    def send(self, frame: Frame) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(frame.data + b"\n")
        self.proc.stdin.flush()

    def recv(self, timeout: float) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError from None
        assert line is not None, "the stdio server closed its stdout"
        assert line.endswith(b"\n"), f"a reply line was cut: {line[:200]!r}"
        return line.decode()

    def close(self) -> None:
        """End of input: the server ends the session, kills its children and exits."""
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.close()
        self.proc.wait(30)
        self._out.join(30)
        self.stderr.join(30)


class WebSocketChannel(Channel):
    """A ``websockets`` client connected to ``exec-server --listen ws://127.0.0.1:0``."""

    def __init__(self, url: str, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self._open = contextlib.ExitStack()
        self.ws: ClientConnection = self._open.enter_context(
            connect(
                url,
                compression=None,
                max_size=None,
                max_queue=None,  # read everything as it comes: never a reason for the server to wait
                proxy=None,
                ping_interval=None,
                open_timeout=30,
            )
        )
        host, port = self.ws.local_address[:2]
        self.malformed_prefix = (
            f"failed to parse websocket JSON-RPC message from exec-server websocket {host}:{port}: "
        )

    def send(self, frame: Frame) -> None:
        data = frame.data
        if frame.fragments > 1:
            step = max(1, len(data) // frame.fragments + 1)
            self.ws.send(
                [data[i : i + step] for i in range(0, len(data), step)] or [b""],
                text=not frame.binary,
            )
        else:
            self.ws.send(data, text=not frame.binary)

    def recv(self, timeout: float) -> str:
        message = self.ws.recv(timeout=timeout)
        assert isinstance(message, str), "the server always sends text frames"
        return message

    def close(self) -> None:
        self._open.close()


@contextlib.contextmanager
def websocket_server(world: World) -> Iterator[tuple[str, subprocess.Popen[bytes], _Drain]]:
    """``exec-server`` on a free loopback port; yields its URL, process and stderr."""
    proc = subprocess.Popen(
        server_command("--listen", "ws://127.0.0.1:0", *server_args()),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
        env=server_env(world),
    )
    assert proc.stdout is not None and proc.stderr is not None
    stderr = _Drain(proc.stderr)
    try:
        url = proc.stdout.readline().decode().strip()
        assert url.startswith("ws://127.0.0.1:"), url
        yield url, proc, stderr
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        stderr.join(30)


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port held bound and never listened on: connections there are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


# ---- checking replies ---------------------------------------------------------------------


@dataclass
class Ledger:
    """Every id sent on one connection, and every id answered: a second answer, or one to
    an id never sent, fails at once."""

    sent: set[Any] = field(default_factory=set)
    answered: set[Any] = field(default_factory=set)
    count: int = 0
    examples: int = 0
    children: dict[int, float] = field(default_factory=dict)
    """Every descendant of the server seen, by pid, with its start time."""
    methods: dict[str, Any] = field(default_factory=dict)
    """Method of each request id sent (its key), to tell what the fuzz covered."""
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(method, "result" or the error code) of every reply."""
    malformed: int = 0
    """Frames answered with id -1."""

    def next_number(self) -> int:
        self.count += 1
        return self.count


def _key(request_id: Any) -> Any:
    return (type(request_id).__name__, request_id)


def _short(message: object) -> str:
    """A message for an assertion: replies may hold megabytes."""
    text = repr(message)
    return text if len(text) <= 600 else text[:600] + f"... ({len(text)} characters)"


def check_reply_shape(message: dict[str, Any]) -> None:
    """A reply is ``{"id", "result"}`` or ``{"id", "error": {"code": int, "message": str}}``."""
    assert set(message) in ({"id", "result"}, {"id", "error"}), _short(message)
    request_id = message["id"]
    assert isinstance(request_id, int | str) and not isinstance(request_id, bool), _short(message)
    if "error" in message:
        error = message["error"]
        assert isinstance(error, dict) and set(error) == {"code", "message"}, _short(message)
        assert isinstance(error["code"], int) and not isinstance(error["code"], bool), _short(
            message
        )
        assert isinstance(error["message"], str), _short(message)
        # A handler that raised where it should have refused (a bug the connection caught).
        assert not error["message"].startswith("internal error"), _short(message)


def exchange(
    channel: Channel, frames: Sequence[Frame], ledger: Ledger, timeout: float = 20
) -> None:
    """Send ``frames`` and a probe; wait for every answer they ask for, checking each."""
    probe_id = f"probe#{ledger.next_number()}"
    probe = Frame(encode({"id": probe_id, "method": "environment/status"}), probe_id)
    waiting: set[Any] = set()
    malformed = 0
    must_fail: set[Any] = set()
    for frame in (*frames, probe):
        if frame.expect is MALFORMED:
            malformed += 1
        else:
            key = _key(frame.expect)
            assert key not in ledger.sent, f"fuzz bug: id {frame.expect!r} sent twice"
            ledger.sent.add(key)
            ledger.methods[key] = frame.method
            waiting.add(key)
            if frame.must_fail:
                must_fail.add(key)
        channel.send(frame)
    deadline = time.monotonic() + timeout
    malformed_seen = 0
    probe_answered = False
    while waiting or malformed_seen < malformed or not probe_answered:
        remaining = deadline - time.monotonic()
        try:
            text = channel.recv(max(remaining, 0.01))
        except TimeoutError:
            raise AssertionError(
                f"no answer within {timeout} s to {sorted(map(str, waiting))}; "
                f"{malformed_seen} of {malformed} id -1 errors; frames: "
                f"{[f.data[:300] for f in frames]}"
            ) from None
        message = json.loads(text)
        assert isinstance(message, dict), _short(text)
        if "method" in message:
            assert "id" not in message and isinstance(message["method"], str), _short(text)
            continue
        check_reply_shape(message)
        request_id = message["id"]
        if request_id == -1:
            error = message.get("error")
            assert error is not None and error["code"] == -32600, _short(message)
            assert error["message"].startswith(channel.malformed_prefix), _short(message)
            malformed_seen += 1
            ledger.malformed += 1
            assert malformed_seen <= malformed, (
                f"an id -1 error nobody asked for: {_short(message)}"
            )
            continue
        key = _key(request_id)
        assert key in ledger.sent, f"a reply to an id never sent: {_short(message)}"
        assert key not in ledger.answered, f"a second reply to {request_id!r}: {_short(message)}"
        assert key not in must_fail or "error" in message, f"not UTF-8, yet read: {_short(message)}"
        ledger.answered.add(key)
        outcome = "result" if "result" in message else str(message["error"]["code"])
        ledger.outcomes[ledger.methods.get(key, ""), outcome] += 1
        waiting.discard(key)
        if request_id == probe_id:
            assert message == {"id": probe_id, "result": {"status": "ready"}}, _short(message)
            probe_answered = True


def handshake(channel: Channel, ledger: Ledger) -> str:
    """``initialize`` and ``initialized``; the session id."""
    request_id = ledger.next_number()
    ledger.sent.add(_key(request_id))
    channel.send(
        Frame(
            encode({"id": request_id, "method": "initialize", "params": {"clientName": "fuzz"}}),
            request_id,
        )
    )
    while True:
        message = json.loads(channel.recv(30))
        if message.get("id") == request_id:
            ledger.answered.add(_key(request_id))
            session_id = message["result"]["sessionId"]
            break
    channel.send(Frame(b'{"method":"initialized"}', None))  # a notification: no answer
    return str(session_id)


def record_children(proc: subprocess.Popen[bytes], ledger: Ledger) -> None:
    """Note every descendant of the server now running but its keeper."""
    try:
        found = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for child in found:
        with contextlib.suppress(psutil.Error):
            if child.name() != "exec-keeper":
                ledger.children.setdefault(child.pid, child.create_time())


def living(children: dict[int, float]) -> list[str]:
    """Those of ``children`` still running (same pid and start time, not a zombie)."""
    alive = []
    for pid, started in children.items():
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            if process.create_time() == started and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{pid} {process.cmdline()}")
    return alive
