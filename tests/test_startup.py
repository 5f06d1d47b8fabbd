"""Start-up of a stdio server (one per codex session): it imports nothing the first
``initialize`` does not need, and its argparse-free path means what the parser means."""

from __future__ import annotations

import subprocess
import sys

import pytest

from exec_server.cli import STDIO_ARGV, build_parser, options_from_args, plain_stdio_options

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


def test_method_decoders_are_built_on_first_use_not_at_import() -> None:
    check = (
        "import exec_server.methods as m; "
        "print('REQUESTS' in vars(m), len(m.BY_REQUEST_TYPE)); "
        "m.METHODS['initialize'].decode(b'{\"clientName\": \"t\"}'); "
        "m.REQUESTS; print('REQUESTS' in vars(m), len(m.BY_REQUEST_TYPE) == len(m.METHODS))"
    )
    done = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=30, cwd=REPO
    )
    assert done.stdout.split("\n")[:2] == ["False 0", "True True"], done.stderr
