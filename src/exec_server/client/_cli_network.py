"""``exec-server run`` behind the server's managed network (issue 18 B).

``--allow-domain``/``--deny-domain`` make the proxy's lists (the server's pattern syntax:
``host``, ``*.host``, ``**.host``); ``--approve`` and ``--ask`` answer the server's
``network/policyRequest`` questions about allow-list misses: hosts matching an ``--approve``
pattern are allowed without asking, the rest are put to the person at the controlling
terminal (``--ask``) or denied. Each answer is ``{decision: {type: allow|deny, reason}}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import termios
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._cli_common import LOCAL_ERROR, Leave
from ._cli_config import ConfigError
from .client import ServerRequestHandler

if TYPE_CHECKING:
    from ..network.policy import Pattern

POLICY_REQUEST = "network/policyRequest"
TTY = "/dev/tty"
MARGIN_S = 5.0
"""How much longer the server waits than our prompt, so that our answer (even the deny
sent when nobody answered) arrives before it gives up."""
APPROVE_ONLY_TIMEOUT_MS = 10_000
"""The server's wait when only --approve answers (at once; this bounds a stuck client)."""


def add_options(parser: argparse.ArgumentParser) -> None:
    """The managed-network options of ``run``."""
    group = parser.add_argument_group(
        "managed network",
        "With these the command runs in the server's sandbox and reaches the network only "
        "through a proxy that applies the lists (docs/network.md).",
    )
    group.add_argument(
        "--allow-domain",
        action="append",
        default=[],
        metavar="PATTERN",
        help="let the command reach these hosts (PATTERN: host, *.host for subdomains, "
        "**.host for both; local addresses need an exact IP or localhost); repeatable. "
        "Nothing else is allowed",
    )
    group.add_argument(
        "--deny-domain",
        action="append",
        default=[],
        metavar="PATTERN",
        help="never let it reach these hosts, even if allowed or approved; repeatable",
    )
    group.add_argument(
        "--approve",
        action="append",
        default=[],
        metavar="PATTERN",
        help="when the command reaches a host not allowed, the server asks us: allow hosts "
        "matching PATTERN (same syntax), deny the rest (with --ask: ask); repeatable",
    )
    group.add_argument(
        "--review-domain",
        action="append",
        default=[],
        metavar="PATTERN",
        help="ask about these hosts (with --approve or --ask) even when --allow-domain "
        "lists them; local addresses are never asked about unless listed in both",
    )
    group.add_argument(
        "--ask",
        action="store_true",
        help="put those questions to you on the terminal (/dev/tty), y or n",
    )
    group.add_argument(
        "--ask-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="deny a question not answered within SECONDS (default 60)",
    )


def wanted(args: argparse.Namespace) -> bool:
    """Whether any managed-network option was given."""
    return bool(
        args.allow_domain or args.deny_domain or args.review_domain or args.approve or args.ask
    )


def check(args: argparse.Namespace) -> None:
    """Patterns parse and the options fit together; raises ConfigError (a usage error)."""
    if not wanted(args):
        return
    if args.detach:
        raise ConfigError("-d cannot be used with the managed-network options")
    if args.ask and args.interactive and os.isatty(0):
        raise ConfigError("--ask prompts on the terminal that -i gives the command: drop -i")
    if args.review_domain and not (args.approve or args.ask):
        raise ConfigError("--review-domain needs --approve or --ask to answer the questions")
    if args.ask_timeout <= 0:
        raise ConfigError("--ask-timeout must be positive")
    for option, patterns in (
        ("--allow-domain", args.allow_domain),
        ("--deny-domain", args.deny_domain),
        ("--review-domain", args.review_domain),
        ("--approve", args.approve),
    ):
        for text in patterns:
            from ..network.policy import PatternError, parse_pattern  # patterns given only

            try:
                parse_pattern(text)
            except PatternError as exc:
                raise ConfigError(f"{option} {text}: {exc}") from None


def launch(args: argparse.Namespace) -> dict[str, Any]:
    """``process/start.networkProxy`` for these options."""
    domains = {p: "allow" for p in args.allow_domain} | {p: "deny" for p in args.deny_domain}
    proxy = {
        "enabled": True,
        "enableSocks5": True,
        "enableSocks5Udp": True,
        "allowUpstreamProxy": False,
        "dangerouslyAllowAllUnixSockets": False,
        "allowLocalBinding": False,
        "mode": "full",
        "domains": domains,
        "unixSockets": None,
        "reviewDomains": list(args.review_domain),
    }
    config: dict[str, Any] = {"proxy": proxy, "environmentId": "exec-server-cli"}
    if args.ask:
        config["policyDecisionTimeoutMs"] = int((args.ask_timeout + MARGIN_S) * 1000)
    elif args.approve:
        config["policyDecisionTimeoutMs"] = APPROVE_ONLY_TIMEOUT_MS
    return config


# ---- answering ---------------------------------------------------------------------------


def allow(reason: str) -> dict[str, Any]:
    return {"decision": {"type": "allow", "reason": reason}}


def deny(reason: str) -> dict[str, Any]:
    return {"decision": {"type": "deny", "reason": reason}}


@dataclass
class Prompter:
    """Asks y/n questions on a terminal, one at a time; no answer in ``timeout`` is no."""

    fd: int
    timeout: float
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def ask(self, question: str) -> bool | None:
        """True for y, False for n (or anything else), None when nobody answered in time."""
        async with self._lock:
            with contextlib.suppress(termios.error):
                termios.tcflush(self.fd, termios.TCIFLUSH)  # keys typed before the question
            os.write(self.fd, f"\r\n{question} [y/N] ".encode())
            line = await _read_line(self.fd, self.timeout)
            if line is None:
                os.write(self.fd, b"\r\n(no answer: denied)\r\n")
                return None
            return line.strip().lower() in ("y", "yes")


async def _read_line(fd: int, timeout: float) -> str | None:
    """One line from ``fd`` (a terminal in canonical mode), or None at end or timeout."""
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()
    loop.add_reader(fd, ready.set)
    data = b""
    try:
        async with asyncio.timeout(timeout):
            while b"\n" not in data:
                await ready.wait()
                ready.clear()
                chunk = os.read(fd, 1024)
                if not chunk:
                    return None
                data += chunk
    except TimeoutError:
        return None
    finally:
        loop.remove_reader(fd)
    return data.decode(errors="replace").split("\n", 1)[0]


@dataclass
class Answerer:
    """Answers the server's policy questions: ``approve`` patterns, then the prompter."""

    approve: Sequence[Pattern]
    prompter: Prompter | None
    command: str = "run"

    async def __call__(self, method: str, params: Any) -> Any:
        if method != POLICY_REQUEST:
            raise ValueError(f"this client does not answer `{method}`")
        from ..network.policy import normalize_host  # a question came: patterns are in use

        request = params.get("request") or {}
        host = normalize_host(str(request.get("host", "")))
        port = request.get("port")
        if any(pattern.matches(host) for pattern in self.approve):
            return allow("approved by --approve")
        if self.prompter is None:
            return deny("not approved (--approve)")
        question = f"exec-server {self.command}: let the command reach {host}:{port}?"
        said = await self.prompter.ask(question)
        if said is None:
            return deny("nobody answered in time")
        return allow("approved at the terminal") if said else deny("refused at the terminal")


@contextlib.asynccontextmanager
async def answering(args: argparse.Namespace) -> AsyncIterator[ServerRequestHandler | None]:
    """The handler for these options (None when nobody is to be asked), with the terminal
    open while it is in use; :class:`Leave` when ``--ask`` has no terminal."""
    if not (args.approve or args.ask):
        yield None
        return
    from ..network.policy import parse_pattern  # --approve or --ask given

    approve = [parse_pattern(text) for text in args.approve]
    if not args.ask:
        yield Answerer(approve, None)
        return
    try:
        fd = os.open(TTY, os.O_RDWR | os.O_NOCTTY)
    except OSError as exc:
        raise Leave(
            LOCAL_ERROR,
            f"--ask needs a terminal to ask on, and there is none ({TTY}: "
            f"{exc.strerror}); use --approve PATTERN to answer without one",
        ) from None
    try:
        yield Answerer(approve, Prompter(fd, args.ask_timeout))
    finally:
        os.close(fd)
