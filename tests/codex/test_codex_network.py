"""codex 0.169's managed network (issue 18) against an executor: the recording of the
reference is the contract (``recordings/network_proxy_0.169.jsonl``: an unmodified
`codex exec` with ``features.network_proxy`` and a permissions profile with network domains,
through :mod:`relay`), and the same run against ours must show the same.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from exec_server.network.mitm import CA_ENV_KEYS
from exec_server.protocol.process import ProcessStartParams

from ..support import python_server
from ..test_network_proxy import ORIGIN, POLICY_FIELDS
from . import relay
from .harness import Executor, ExecutorKind, Workspace, run_turn
from .model import Turn, exec_command

pytestmark = pytest.mark.timeout(240)

RECORDING = Path(__file__).with_name("recordings") / "network_proxy_0.169.jsonl"

CONFIG_TOP = 'default_permissions = "net"\n'
CONFIG_TABLES = """
[features]
network_proxy = true

[permissions.net]
extends = ":workspace"

[permissions.net.network]
enabled = true
mode = "full"
domains = { "127.0.0.1" = "allow", "denied.test" = "deny" }
"""
"""What the recording was made with (no ``-s``: the profile decides)."""


def _executor(
    codex: Path, workspace: Workspace, impl: str, *, record: bool = True
) -> tuple[Executor, Path]:
    """``impl`` (``reference`` or ``ours``) as a stdio executor, skipped for ours where
    bubblewrap cannot run; with ``record``, behind the recorder writing the returned log."""
    if impl == "ours":
        from exec_server.sandbox.bwrap import support

        if not support().usable:
            pytest.skip(f"bubblewrap cannot run here: {support().reason}")
    kind = ExecutorKind(impl, "stdio")
    log = workspace.root / "wire.jsonl"
    command = kind.command(codex, "stdio")
    if record:
        command = relay.recording_command(command, log)
    return Executor(kind, "mark", stdio_command=command), log


def _command_output(
    codex: Path,
    workspace: Workspace,
    executor: Executor,
    command: str,
    *,
    top: str = CONFIG_TOP,
    tables: str = CONFIG_TABLES,
    later: list[Turn] | None = None,
    **options: Any,
) -> str:
    """What ``command``, codex's first tool call (``c1``), printed, the network profile on
    (``top``/``tables`` of config.toml; ``later``: the model's next turns); codex must end
    well."""
    turns: list[Turn] = [[exec_command("c1", command)], *(later or [])]
    model, run = run_turn(
        codex, workspace, executor, turns, sandbox=None, config=(top, tables), **options
    )
    assert run.returncode == 0, run.stderr[-4000:]
    return model.output_of("c1")


def _proxied_start(rows: list[dict[str, Any]]) -> dict[str, Any]:
    for row in rows:
        message = row["message"]
        if message.get("method") == "process/start" and "networkProxy" in message["params"]:
            return dict(message["params"])
    raise AssertionError("no process/start with networkProxy in the recording")


def _verdicts(rows: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    return [
        (p["decision"], p["reason"], p["protocol"], p["host"])
        for row in rows
        if row["message"].get("method") == "network/policyDecision"
        for p in [row["message"]["params"]]
    ]


EXPECTED_VERDICTS = [
    ("allow", "allow", "http", "127.0.0.1"),
    ("deny", "not_allowed", "http", "example.test"),
    ("deny", "denied", "http", "denied.test"),
]


def test_recorded_contract_decodes_and_matches() -> None:
    """What codex sent the reference decodes as our ProcessStartParams, with the fields this
    server acts on; the audit records have the twelve fields in the reference's order."""
    rows = relay.read_log(RECORDING, {})
    start = _proxied_start(rows)
    params = msgspec.convert(start, ProcessStartParams)
    assert params.enforce_managed_network is True and params.managed_network is None
    assert params.network_proxy is not None
    proxy = params.network_proxy.proxy
    assert (proxy.enabled, proxy.enable_socks5, proxy.mode) == (True, True, "full")
    assert proxy.domains == {"127.0.0.1": "allow", "denied.test": "deny"}
    assert params.network_proxy.audit_metadata["originator"] == "codex_exec"
    assert start["sandbox"]["permissions"]["network"] == "enabled"
    assert _verdicts(rows) == EXPECTED_VERDICTS
    for row in rows:
        if row["message"].get("method") == "network/policyDecision":
            assert list(row["message"]["params"]) == POLICY_FIELDS


@pytest.fixture
def origin() -> Iterator[int]:
    with python_server(ORIGIN) as port:
        yield port


@pytest.mark.sandbox
@pytest.mark.parametrize("impl", ["reference", "ours"])
def test_codex_exec_with_managed_network(
    codex: Path, workspace: Workspace, origin: int, impl: str
) -> None:
    """An allowed fetch works, an unlisted host gets the 403 with its JSON body, a denied one
    a 403, a direct connection fails; the executor reports the same three verdicts."""
    executor, log = _executor(codex, workspace, impl)
    command = (
        f"curl -s http://127.0.0.1:{origin}/; curl -s -i http://example.test/; echo; "
        "curl -s -o /dev/null -w '%{http_code}' http://denied.test/; echo; "
        f"curl -s -m 5 --noproxy '*' http://127.0.0.1:{origin}/; echo direct=$?"
    )
    output = _command_output(codex, workspace, executor, command).replace("\r\n", "\n")
    assert "Output:\nhello-origin\nHTTP/1.1 403 Forbidden\n" in output, output
    assert "x-proxy-error: blocked-by-allowlist" in output
    body = output.split("\n\n", 1)[1].splitlines()[0]
    assert json.loads(body)["message"] == "Domain not in allowlist."
    assert output.endswith("\n403\ndirect=7\n"), output
    rows = relay.read_log(log, {})
    assert _verdicts(rows) == EXPECTED_VERDICTS
    start = _proxied_start(rows)
    assert start["enforceManagedNetwork"] is True


REAL_GH = "ghp_" + "R3alS3cretT0kenValue" * 2


@pytest.mark.sandbox
@pytest.mark.parametrize("impl", ["reference", "ours"])
def test_codex_exec_with_credential_masking(codex: Path, workspace: Workspace, impl: str) -> None:
    """`--enable credential_masking`: the command sees a same-shaped dummy of the GH_TOKEN the
    executor inherited, the brokered list and the CA variables, and never the real value."""
    executor, _ = _executor(codex, workspace, impl, record=False)
    tables = CONFIG_TABLES.replace(
        "network_proxy = true", "network_proxy = true\ncredential_masking = true"
    )
    names = "|".join(CA_ENV_KEYS)
    command = (
        'echo "gh=$GH_TOKEN"; env | grep -c R3alS3cret; '
        f"env | grep -E '^({names}|CODEX_NETWORK_PROXY_BROKERED_CREDENTIALS)=' | sort"
    )
    output = _command_output(
        codex, workspace, executor, command, tables=tables, extra_env={"GH_TOKEN": REAL_GH}
    )
    assert REAL_GH not in output
    lines = output.split("Output:\n", 1)[1].splitlines()
    dummy = lines[0].removeprefix("gh=")
    assert dummy.startswith("ghp_masked") and len(dummy) == len(REAL_GH)
    assert lines[1] == "0"  # no variable holds the real value
    env = dict(line.split("=", 1) for line in lines[2:])
    brokered = json.loads(env.pop("CODEX_NETWORK_PROXY_BROKERED_CREDENTIALS"))
    assert brokered == [["@alias:GH_TOKEN", dummy], ["GH_TOKEN", dummy]]
    assert sorted(env) == sorted(CA_ENV_KEYS)
    bundles = set(env.values())
    assert len(bundles) == 1 and bundles.pop().endswith(".pem")


# ---- review: network/policyRequest answered by codex's auto-reviewer --------------------------

REVIEW_TOP = CONFIG_TOP + 'approval_policy = "on-request"\napprovals_reviewer = "auto_review"\n'
"""Codex sends ``policyDecisionTimeoutMs`` (so the executor asks it) only when approvals go to
its auto-reviewer, which asks the model."""
REQUIREMENTS = '[experimental_network]\nreview_domains = ["localhost"]\n'
"""Managed requirements (``/etc/codex/requirements.toml``), shown to codex alone through an
overlay in a mount namespace of its own."""


def _review_reply(outcome: str) -> dict[str, Any]:
    return {
        "type": "message",
        "role": "assistant",
        "id": "msg_review",
        "content": [{"type": "output_text", "text": json.dumps({"outcome": outcome})}],
    }


def _private_etc(workspace: Workspace) -> list[str]:
    """A prefix that runs codex with ``/etc/codex/requirements.toml`` in its own view."""
    base = workspace.root / "etc-overlay"
    for part in ("upper/codex", "work"):
        (base / part).mkdir(parents=True)
    (base / "upper" / "codex" / "requirements.toml").write_text(REQUIREMENTS)
    mount = (
        'mount -t overlay overlay -o "lowerdir=/etc,upperdir=$0/upper,workdir=$0/work" /etc'
        ' && exec "$@"'
    )
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", mount, str(base)]


@pytest.mark.sandbox
@pytest.mark.parametrize("impl", ["reference", "ours"])
@pytest.mark.parametrize("outcome", ["allow", "deny"])
def test_codex_answers_the_executors_question(
    codex: Path, workspace: Workspace, origin: int, impl: str, outcome: str
) -> None:
    """A review domain (``localhost``, allowed by the profile) is put to codex with
    ``network/policyRequest``; codex's auto-reviewer (the scripted model) decides, and the
    executor follows: the fetch works after an allow and is blocked after a deny."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a private /etc/codex")
    executor, log = _executor(codex, workspace, impl)
    tables = CONFIG_TABLES.replace('"127.0.0.1" = "allow"', '"localhost" = "allow"')
    command = f"curl -s http://localhost:{origin}/; echo; echo curl=$?"
    output = _command_output(
        codex,
        workspace,
        executor,
        command,
        top=REVIEW_TOP,
        tables=tables,
        later=[[_review_reply(outcome)]],
        prefix=_private_etc(workspace),
    )
    rows = relay.read_log(log, {})
    asked = [r["message"] for r in rows if r["message"].get("method") == "network/policyRequest"]
    assert asked and asked[0]["params"]["request"] == {
        "protocol": "http",
        "host": "localhost",
        "port": origin,
    }
    start = _proxied_start(rows)
    assert start["networkProxy"].get("policyDecisionTimeoutMs")
    answers = [
        r["message"]
        for r in rows
        if r["from"] == "codex"
        and r["message"].get("id") == asked[0]["id"]
        and "method" not in r["message"]
    ]
    assert answers and answers[0]["result"]["decision"]["type"] == outcome
    verdicts = [
        r["message"]["params"]
        for r in rows
        if r["message"].get("method") == "network/policyDecision"
    ]
    if outcome == "allow":
        assert "hello-origin" in output, output
        assert (verdicts[-1]["decision"], verdicts[-1]["source"]) == ("allow", "decider")
        assert verdicts[-1]["policyOverride"] is True
    else:  # the executor blocks the fetch; codex then rejects the command, and may end the
        # executor before its audit record is out
        assert "hello-origin\n" not in output, output
        assert all((v["decision"], v["source"]) == ("deny", "decider") for v in verdicts)


# ---- custom credential providers (credentialMaskingCustomProviders) ---------------------------

REAL_VENDOR = "vendor_" + "r3alvend0rs3cret" * 2
VENDOR_PATTERN = "^vendor_[a-z0-9]{32}$"


def _custom_provider_tables(port: int) -> str:
    """``[features.network_proxy.credentials.<name>]``: a custom provider in codex's config
    (the ``network_proxy`` feature as a table, so it can hold one)."""
    features = CONFIG_TABLES.split("[permissions.net]", 1)
    assert features[0].strip() == "[features]\nnetwork_proxy = true"
    return f"""
[features]
credential_masking = true

[features.network_proxy]
enabled = true

[features.network_proxy.credentials.vendor]
env = ["VENDOR_TOKEN"]
patterns = ["{VENDOR_PATTERN}"]
url_prefixes = ["127.0.0.1:{port}/v1"]

[permissions.net]{features[1]}"""


@pytest.mark.sandbox
@pytest.mark.parametrize("impl", ["reference", "ours"])
def test_codex_exec_with_a_custom_credential_provider(
    codex: Path, workspace: Workspace, impl: str
) -> None:
    """A provider from codex's config reaches the executor as ``credentialProviders``; the
    command sees a dummy of the provider's pattern, the provider's destination (loopback
    HTTP, path under ``/v1``) gets the real value, a path outside it the dummy."""
    executor, log = _executor(codex, workspace, impl)
    with python_server(ORIGIN, "--bearer", REAL_VENDOR) as port:
        curl = f'curl -s -H "Authorization: Bearer $VENDOR_TOKEN" http://127.0.0.1:{port}'
        command = f'echo "vendor=$VENDOR_TOKEN"; {curl}/v1/models; {curl}/v10'
        output = _command_output(
            codex,
            workspace,
            executor,
            command,
            tables=_custom_provider_tables(port),
            extra_env={"VENDOR_TOKEN": REAL_VENDOR},
        )
    assert REAL_VENDOR not in output
    lines = output.split("Output:\n", 1)[1].splitlines()
    dummy = lines[0].removeprefix("vendor=")
    assert re.fullmatch(VENDOR_PATTERN, dummy) and dummy != REAL_VENDOR, output
    assert lines[1:3] == ["auth-ok", "auth-wrong"], output
    start = _proxied_start(relay.read_log(log, {}))
    proxy = start["networkProxy"]["proxy"]
    assert proxy["credentialMasking"] is True
    assert proxy["credentialProviders"]["vendor"]["patterns"] == [VENDOR_PATTERN]
