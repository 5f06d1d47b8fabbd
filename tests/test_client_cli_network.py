"""``exec-server run`` behind the managed network, answering the server's
``network/policyRequest`` questions (issue 18 B): by ``--approve`` patterns, at a y/n prompt
in a real pseudo-terminal (``--ask``), and refusing to prompt without a terminal. A real
server process, real bubblewrap, a real curl child and an origin on loopback."""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
from collections.abc import Iterator
from typing import Any

import pexpect
import pytest

from exec_server.client._cli_network import POLICY_REQUEST, Answerer, Prompter
from exec_server.network.policy import parse_pattern
from exec_server.sandbox.bwrap import support as bwrap_support

from .client_support import CLI, cli, server_process, spawn_in_terminal
from .support import python_server
from .test_network_proxy import ORIGIN, needs_curl

bwrap = pytest.mark.skipif(not bwrap_support().usable, reason="bubblewrap cannot run here")

OTHER = "127.0.0.2"
"""A loopback host the proxy refuses (nothing listens there: the 403 comes first)."""


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with server_process("ours-subprocess") as found:
        yield found


@pytest.fixture
def origin() -> Iterator[int]:
    with python_server(ORIGIN) as port:
        yield port


def reviewed(*hosts: str) -> list[str]:
    """Options that allow ``hosts`` (loopback needs an exact entry) and yet ask about them."""
    options: list[str] = []
    for host in hosts:
        options += ["--allow-domain", host, "--review-domain", host]
    return options


def fetch_both(port: int) -> list[str]:
    """A child that fetches the origin, then the other host, printing each status line."""
    script = (
        f"curl -s -i http://127.0.0.1:{port}/ | head -1; echo; "
        f"curl -s -i http://{OTHER}:{port}/ | tr -d '\\r'"
    )
    return ["--", "sh", "-c", script]


@bwrap
@needs_curl
def test_approve_lets_matching_hosts_through_and_denies_the_rest(url: str, origin: int) -> None:
    options = [*reviewed("127.0.0.1", OTHER), "--approve", "127.0.0.1"]
    done = cli("run", *options, *fetch_both(origin), url=url)
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr
    assert "200 OK" in out.splitlines()[0], out
    assert "HTTP/1.1 403 Forbidden" in out
    assert '"reason":"not approved (--approve)"' in out


@bwrap
@needs_curl
def test_a_deny_list_entry_wins_without_a_question(url: str, origin: int) -> None:
    options = ["--allow-domain", "127.0.0.1", "--deny-domain", "127.0.0.1", "--approve", "**.x"]
    done = cli("run", *options, "--", "curl", "-s", f"http://127.0.0.1:{origin}/", url=url)
    assert '"reason":"denied"' in done.stdout.decode()


@bwrap
@needs_curl
@pytest.mark.parametrize(("typed", "allowed"), [("y", True), ("n", False)])
def test_ask_puts_the_question_to_the_terminal(
    url: str, origin: int, typed: str, allowed: bool
) -> None:
    command = [*CLI, "run", "--url", url, *reviewed("127.0.0.1"), "--ask"]
    command += ["--", "curl", "-s", f"http://127.0.0.1:{origin}/"]
    terminal = spawn_in_terminal(shlex.join(command))
    terminal.expect_exact(f"let the command reach 127.0.0.1:{origin}? [y/N]")
    terminal.sendline(typed)
    if allowed:
        terminal.expect_exact("hello-origin")
    else:
        terminal.expect_exact('"reason":"refused at the terminal"')
    terminal.expect(pexpect.EOF)
    terminal.close()
    assert terminal.exitstatus == 0


def test_ask_without_a_terminal_says_so(url: str) -> None:
    env = {key: value for key, value in os.environ.items() if key != "EXEC_SERVER_TOKEN"}
    done = subprocess.run(
        [*CLI, "run", "--url", url, "--ask", "--", "true"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=env,
        start_new_session=True,  # no controlling terminal: /dev/tty cannot be opened
        timeout=60,
    )
    assert done.returncode == 1
    assert b"--ask needs a terminal to ask on" in done.stderr
    assert b"--approve PATTERN" in done.stderr


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (["--approve", "a b"], b"--approve a b: unsupported domain pattern syntax"),
        (["--review-domain", "x.org"], b"--review-domain needs --approve or --ask"),
        (["-d", "--allow-domain", "x.org"], b"-d cannot be used with the managed-network"),
    ],
)
def test_bad_network_options_are_usage_errors(options: list[str], said: bytes) -> None:
    done = cli("run", *options, "--", "true", url="ws://127.0.0.1:9")
    assert done.returncode == 2 and said in done.stderr


def test_ask_refuses_to_share_the_terminal_with_i() -> None:
    command = [*CLI, "run", "--url", "ws://127.0.0.1:9", "-i", "--ask", "--", "true"]
    terminal = spawn_in_terminal(shlex.join(command))
    terminal.expect_exact("--ask prompts on the terminal that -i gives the command")
    terminal.expect(pexpect.EOF)
    terminal.close()
    assert terminal.exitstatus == 2


# ---- the answerer and the prompt, on a real pseudo-terminal ------------------------------------


def question(host: str) -> dict[str, Any]:
    return {"processId": "p1", "request": {"protocol": "http", "host": host, "port": 80}}


async def test_approve_patterns_answer_without_a_prompter() -> None:
    answer = Answerer([parse_pattern("**.example.com"), parse_pattern("10.1.2.3")], None)
    for host in ("example.com", "A.Example.COM.", "10.1.2.3"):
        assert await answer(POLICY_REQUEST, question(host)) == {
            "decision": {"type": "allow", "reason": "approved by --approve"}
        }
    assert await answer(POLICY_REQUEST, question("example.org")) == {
        "decision": {"type": "deny", "reason": "not approved (--approve)"}
    }
    with pytest.raises(ValueError):
        await answer("other/method", {})


async def test_the_prompt_reads_one_line_and_discards_earlier_keys() -> None:
    controller, terminal = os.openpty()
    try:
        prompter = Prompter(terminal, timeout=0.5)
        answer = Answerer([parse_pattern("ok.org")], prompter)
        os.write(controller, b"y\n")  # typed before the question: not an answer
        assert await answer(POLICY_REQUEST, question("x.org")) == {
            "decision": {"type": "deny", "reason": "nobody answered in time"}
        }
        asking = asyncio.ensure_future(answer(POLICY_REQUEST, question("x.org")))
        shown = b""
        while b"[y/N]" not in shown:
            shown += await asyncio.to_thread(os.read, controller, 1024)
        assert b"let the command reach x.org:80?" in shown
        os.write(controller, b"yes\n")
        assert (await asking)["decision"]["type"] == "allow"
        assert await answer(POLICY_REQUEST, question("ok.org")) == {
            "decision": {"type": "allow", "reason": "approved by --approve"}
        }
    finally:
        os.close(controller)
        os.close(terminal)
