"""Start-up of a stdio server (one per codex session): it imports nothing the first
``initialize`` does not need, and its argparse-free path means what the parser means."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from typing import Any

import pytest

import exec_server.methods as methods_package
from exec_server.cli import STDIO_ARGV, build_parser, options_from_args, plain_stdio_options
from exec_server.errors import INTERNAL_ERROR, RpcError
from exec_server.methods import METHODS, MODULES, Method, load_all, method

from .support import REPO

INITIALIZE = b'{"id":1,"method":"initialize","params":{"clientName":"t"}}\n'
REPORT_MODULES = (
    "import sys; from exec_server.cli import main; main(['--listen', 'stdio']); "
    "print(' '.join(sorted(sys.modules)), file=sys.stderr)"
)
NOT_AT_START = (
    "argparse",  # the plain stdio command line is read without it
    "shutil",
    "prometheus_client",  # the first scrape of /metrics loads it
    "websockets",  # a WebSocket listener's concern
    "httpx",  # http/request's, on its first use
    "uvloop",  # stdio takes the standard loop
    "exec_server.sandbox.bwrap",  # a sandboxed start's
    "exec_server.client",
    # Each method module is imported with its first request (methods/__init__.py, MODULES),
    # and with it its wire types and the domain modules behind it:
    "exec_server.methods.process",
    "exec_server.protocol.process",
    "exec_server.process.shell_snapshot",
    "exec_server.methods.network",
    "exec_server.network",
    "exec_server.methods.fs",
    "exec_server.methods.fs_paths",
    "exec_server.protocol.fs",
    "exec_server.fs",  # the handle budget too (Server.handle_budget)
    "exec_server.methods.http",
    "exec_server.protocol.http",
    "exec_server.methods.forward",
    "exec_server.protocol.forward",
    "exec_server.forwarding",
    "ipaddress",  # forwarding's, and a TCP listener's
    "exec_server.methods.capabilities",
    "exec_server.protocol.discovery",
    "exec_server.capability_discovery",
    "exec_server.skill_discovery",
    "exec_server.methods.config",
    "exec_server.protocol.config",
    "exec_server.environment_config",
)


@pytest.mark.parametrize("argv", STDIO_ARGV)
@pytest.mark.parametrize("no_native", ["", "1"])
def test_the_plain_stdio_path_gives_what_the_parser_gives(
    argv: list[str], no_native: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXEC_SERVER_NO_NATIVE_SPAWN", no_native)
    assert plain_stdio_options(argv) == options_from_args(build_parser().parse_args(argv))


@pytest.mark.parametrize("argv", [["--listen", "stdio", "--detach-grace", "1"], [], ["stdio"]])
def test_any_other_command_line_goes_through_the_parser(argv: list[str]) -> None:
    assert plain_stdio_options(argv) is None


def test_a_stdio_server_answers_initialize_without_loading_what_it_does_not_need() -> None:
    done = subprocess.run(
        [sys.executable, "-c", REPORT_MODULES],
        input=INITIALIZE,
        capture_output=True,
        timeout=30,
        cwd=REPO,
    )
    assert b'"result"' in done.stdout.splitlines()[0]
    loaded = set(done.stderr.decode().split())
    assert "exec_server.transport.stdio" in loaded  # the report is of the right process
    assert sorted(loaded.intersection(NOT_AT_START)) == []


def test_method_modules_and_decoders_are_loaded_on_first_use_not_at_import() -> None:
    check = (
        "import sys, exec_server.methods as m\n"
        "def state(): print(sorted(n for n, e in m.METHODS.items() if e.loaded),"
        " 'REQUESTS' in vars(m), sorted(e.name for e in m.BY_REQUEST_TYPE.values()))\n"
        "state()\n"
        "m.METHODS['initialize'].decode(b'{\"clientName\": \"t\"}'); m.REQUESTS; state()\n"
        "m.METHODS['fs/close'].decode(b'{\"handleId\": \"h\"}'); state()\n"
        "print('exec_server.methods.fs' in sys.modules, 'exec_server.methods.process' in sys.modules)\n"
        "m.REQUESTS; state()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=30, cwd=REPO
    )
    handshake = ["environment/info", "environment/status", "initialize"]
    fs = list(MODULES["fs"][1])  # methods/fs.py's (fs_paths.py's two stay unloaded)
    assert done.stdout.splitlines() == [
        f"{handshake} False []",  # only the handshake's module, no decoder built
        f"{handshake} True {handshake}",
        f"{sorted(handshake + fs)} False {handshake}",
        "True False",
        f"{sorted(handshake + fs)} True {sorted(handshake + fs)}",  # the one-step decoder again
    ], done.stderr


def test_every_method_of_the_table_is_registered_by_the_module_it_names() -> None:
    load_all()
    for name, entry in METHODS.items():
        assert entry.loaded, name
        assert entry.handler.__module__ == f"exec_server.methods.{entry.module}", name
        assert MODULES[entry.module][0] == entry.family
    listed = [name for _, names in MODULES.values() for name in names]
    assert len(listed) == len(set(listed)) == len(METHODS)  # no method under two modules


def test_every_module_of_the_methods_package_registers_only_what_the_table_lists() -> None:
    """A module that registers a method the table does not name fails at import; importing
    each one here is what makes a forgotten table entry fail a test, not a client."""
    for info in pkgutil.iter_modules(methods_package.__path__):
        importlib.import_module(f"exec_server.methods.{info.name}")
    assert all(entry.loaded for entry in METHODS.values())


def test_a_registration_the_table_does_not_list_is_refused() -> None:
    with pytest.raises(LookupError, match="does not list"):
        method("fs/noSuchThing", Any, "filesystem")(lambda connection, params: None)
    with pytest.raises(LookupError, match="does not list"):  # listed, but for another module
        method("fs/readFile", Any, "filesystem")(lambda connection, params: None)


def test_a_method_whose_module_cannot_be_imported_is_an_internal_error_for_that_request() -> None:
    broken = Method("fs/readFile", "no_such_module", "filesystem")
    with pytest.raises(RpcError) as raised:
        broken.decode(b'{"path": "/"}')
    assert raised.value.code == INTERNAL_ERROR
    assert raised.value.message.startswith("fs/readFile is unavailable on this server: ")
