"""``process/start``: argv and arg0, PATH lookup, cwd forms, and every way a start can fail."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from exec_server.paths import to_file_uri

from .support import Client
from .test_process_helpers import error_of, no_stray_children

__all__ = ["no_stray_children"]

MODES = [pytest.param(False, id="pipe"), pytest.param(True, id="pty")]


def _text(data: bytes, tty: bool) -> str:
    return data.decode().replace("\r\n", "\n") if tty else data.decode()


def _start_params(process_id: str, argv: list[str], **extra: object) -> dict[str, object]:
    return {
        "processId": process_id,
        "argv": argv,
        "cwd": "/tmp",
        "env": {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        "tty": False,
        **extra,
    }


async def _still_usable(client: Client) -> None:
    events = await client.run(f"after-{len(client.processes)}", ["echo", "ok"])
    assert events.data() == b"ok\n"


# ---- argv, arg0, PATH ------------------------------------------------------------------------


@pytest.mark.parametrize("tty", MODES)
async def test_arg0_is_what_the_program_sees_as_argv0(client: Client, tty: bool) -> None:
    events = await client.run("a0", ["sh", "-c", "echo $0"], tty=tty, arg0="myname")
    assert _text(events.data(), tty) == "myname\n"


@pytest.mark.parametrize("tty", MODES)
async def test_without_arg0_argv0_is_unchanged(client: Client, tty: bool) -> None:
    events = await client.run("a0", ["sh", "-c", "echo $0"], tty=tty)
    assert _text(events.data(), tty) == "sh\n"


@pytest.mark.parametrize("tty", MODES)
async def test_arg0_does_not_choose_the_program(client: Client, tty: bool) -> None:
    # The program is argv[0]; arg0 naming something else (even a missing file) changes nothing.
    events = await client.run("a0", ["echo", "hi"], tty=tty, arg0="/nonexistent-prog")
    assert _text(events.data(), tty) == "hi\n"


@pytest.mark.parametrize("tty", MODES)
async def test_program_is_looked_up_on_the_child_path(
    client: Client, tmp_path: Path, tty: bool
) -> None:
    program = tmp_path / "only-here"
    program.write_text("#!/bin/sh\necho found me\n")
    program.chmod(0o755)
    path = f"{tmp_path}:/usr/bin:/bin"
    events = await client.run("lookup", ["only-here"], env={"PATH": path}, tty=tty)
    assert _text(events.data(), tty) == "found me\n"
    # The server's own PATH does not have it: the child's PATH decides.
    error = await error_of(client, "process/start", _start_params("lookup2", ["only-here"]))
    assert error["code"] == -32603


@pytest.mark.parametrize("tty", MODES)
@pytest.mark.parametrize("program", ["true", "sleep"])
async def test_no_path_at_all_uses_the_libc_default(
    client: Client, tty: bool, program: str
) -> None:
    argv = [program] if program == "true" else [program, "0"]
    events = await client.run("nopath", argv, env={}, tty=tty)
    assert events.exited is not None and events.exited["exitCode"] == 0
    events = await client.run("env", ["/usr/bin/env"], env={}, tty=tty)
    assert events.data() == b""  # nothing inherited, PATH included


# ---- cwd -------------------------------------------------------------------------------------


@pytest.mark.parametrize("tty", MODES)
async def test_cwd_as_path_and_as_file_uri(client: Client, tmp_path: Path, tty: bool) -> None:
    odd = tmp_path / "with space%and é"
    odd.mkdir()
    events = await client.run("path", ["pwd"], cwd=str(odd), tty=tty)
    assert _text(events.data(), tty) == f"{odd}\n"
    uri = to_file_uri(str(odd))
    assert "%20" in uri and "%25" in uri
    events = await client.run("uri", ["pwd"], cwd=uri, tty=tty)
    assert _text(events.data(), tty) == f"{odd}\n"
    events = await client.run("uri-host", ["pwd"], cwd="file://localhost" + str(tmp_path), tty=tty)
    assert _text(events.data(), tty) == f"{tmp_path}\n"


@pytest.mark.parametrize("cwd", ["tmp", "./x", "", "http://example.com/tmp", "file:relative"])
async def test_relative_or_foreign_cwd_is_invalid_params(client: Client, cwd: str) -> None:
    error = await error_of(client, "process/start", _start_params("rel", ["true"], cwd=cwd))
    assert error["code"] == -32602
    assert "cwd" in error["message"]
    await _still_usable(client)


@pytest.mark.parametrize("tty", MODES)
async def test_missing_cwd_fails_naming_the_directory(
    client: Client, tmp_path: Path, tty: bool
) -> None:
    missing = tmp_path / "not-there"
    params = _start_params("nocwd", ["true"], cwd=str(missing), tty=tty)
    error = await error_of(client, "process/start", params)
    assert error["code"] == -32603
    assert str(missing) in error["message"]
    assert "No such file or directory" in error["message"]
    # The reservation is gone: the id can be used.
    await client.run("nocwd", ["true"], tty=tty)


@pytest.mark.parametrize("tty", MODES)
async def test_cwd_that_is_a_file_fails(client: Client, tmp_path: Path, tty: bool) -> None:
    file = tmp_path / "file"
    file.write_text("")
    params = _start_params("filecwd", ["true"], cwd=str(file), tty=tty)
    error = await error_of(client, "process/start", params)
    assert error["code"] == -32603
    assert "Not a directory" in error["message"] and str(file) in error["message"]


# ---- failures --------------------------------------------------------------------------------


@pytest.mark.parametrize("tty", MODES)
@pytest.mark.parametrize("program", ["no-such-program-xyz", "/no/such/program", ""])
async def test_missing_program_is_an_internal_error(
    client: Client, tty: bool, program: str
) -> None:
    params = _start_params("noprog", [program, "arg"], tty=tty)
    error = await error_of(client, "process/start", params)
    assert error["code"] == -32603
    assert error["message"]
    await client.run("noprog", ["true"], tty=tty)  # the id was released


async def test_not_executable_program(client: Client, tmp_path: Path) -> None:
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n")
    error = await error_of(client, "process/start", _start_params("noexec", [str(script)]))
    assert error["code"] == -32603
    assert "Permission denied" in error["message"]


async def test_empty_argv(client: Client) -> None:
    error = await error_of(client, "process/start", _start_params("empty", []))
    assert error == {"code": -32602, "message": "argv must not be empty"}


async def test_empty_argv_is_checked_before_duplicate_id(client: Client) -> None:
    await client.run("dup", ["true"])
    error = await error_of(client, "process/start", _start_params("dup", []))
    assert error == {"code": -32602, "message": "argv must not be empty"}


async def test_duplicate_process_id(client: Client) -> None:
    await client.start("dup", ["sleep", "100"])
    error = await error_of(client, "process/start", _start_params("dup", ["true"]))
    assert error == {"code": -32600, "message": "process dup already exists"}
    await client.call("process/terminate", {"processId": "dup"})
    await client.wait_closed("dup")
    # Closed but not yet evicted: still taken.
    error = await error_of(client, "process/start", _start_params("dup", ["true"]))
    assert error == {"code": -32600, "message": "process dup already exists"}
    # The first process's events are untouched by the refused start.
    assert client.processes["dup"].exited is not None
    assert client.processes["dup"].exited["exitCode"] == 137


@pytest.mark.parametrize(
    ("env", "argv"),
    [
        ({"BAD=NAME": "x"}, ["true"]),
        ({"NUL\u0000NAME": "x"}, ["true"]),
        ({"OK": "nul\u0000value"}, ["true"]),
        ({}, ["echo", "nul\u0000arg"]),
        ({}, ["tr\u0000ue"]),
    ],
    ids=["eq-in-name", "nul-in-name", "nul-in-value", "nul-in-arg", "nul-in-program"],
)
@pytest.mark.parametrize("tty", MODES)
async def test_unrepresentable_env_or_argv_is_an_error_not_a_crash(
    client: Client, env: dict[str, str], argv: list[str], tty: bool
) -> None:
    params = _start_params("bad", argv, env={"PATH": "/usr/bin:/bin", **env}, tty=tty)
    error = await error_of(client, "process/start", params)
    assert error["code"] in (-32602, -32603)
    assert error["message"]
    await _still_usable(client)
    await client.run("bad", ["true"], tty=tty)  # nothing was left reserved


async def test_nul_in_cwd_is_an_error(client: Client) -> None:
    error = await error_of(client, "process/start", _start_params("bad", ["true"], cwd="/tm\0p"))
    assert error["code"] in (-32602, -32603)
    await _still_usable(client)


async def test_start_result_shape(client: Client) -> None:
    result = await client.start("shape", ["true"])
    assert result == {"processId": "shape", "sandboxType": "none"}
    await client.wait_closed("shape")
