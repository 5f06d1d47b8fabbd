"""Credential masking (issue 18 C): the child sees same-shaped dummies; the proxy looks into
TLS to the hosts the credentials are for and puts the real token back; nothing the child can
read holds a real value. A real HTTPS origin (its own process, a test CA the server is told
to trust), a real curl in a real sandbox."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exec_server.network.credentials import mask_environment
from exec_server.network.mitm import UPSTREAM_CA_ENV
from exec_server.network.providers import ProviderError, compile_provider
from exec_server.sandbox.bwrap import support

from .support import PATH_ENV, Client, RpcFailure, python_server
from .test_network_proxy import ORIGIN, client, decisions, network_proxy  # noqa: F401

REAL_GH = "ghp_" + "R3alS3cretT0kenValue" * 2  # 44 characters
REAL_OPENAI = "sk-proj-" + "A1b2C3d4" * 7


def test_dummies_keep_the_shape_and_hide_the_value() -> None:
    masked = mask_environment(
        {"GITHUB_TOKEN": REAL_GH, "OPENAI_API_KEY": REAL_OPENAI, "PATH": "/bin"}
    )
    gh, openai = masked.env["GITHUB_TOKEN"], masked.env["OPENAI_API_KEY"]
    assert gh.startswith("ghp_masked") and len(gh) == len(REAL_GH) and gh != REAL_GH
    assert openai.startswith("sk-proj-masked") and len(openai) == len(REAL_OPENAI)
    assert all(a.isdigit() == b.isdigit() for a, b in zip(gh[10:], REAL_GH[10:], strict=True))
    assert masked.env["CODEX_NETWORK_PROXY_CREDENTIAL_BROKER_ACTIVE"] == "1"
    assert json.loads(masked.env["CODEX_NETWORK_PROXY_BROKERED_CREDENTIALS"]) == [
        ["@alias:GITHUB_TOKEN", gh],
        ["@alias:OPENAI_API_KEY", openai],
        ["GITHUB_TOKEN", gh],
        ["OPENAI_API_KEY", openai],
    ]
    assert REAL_GH not in json.dumps(masked.env) and REAL_OPENAI not in json.dumps(masked.env)
    assert masked.env["PATH"] == "/bin"


def test_the_real_value_goes_only_to_its_hosts() -> None:
    masked = mask_environment({"GITHUB_TOKEN": REAL_GH, "OPENAI_API_KEY": REAL_OPENAI})
    dummy = masked.env["GITHUB_TOKEN"]
    assert masked.authorization("api.github.com", f"Bearer {dummy}") == f"Bearer {REAL_GH}"
    assert masked.authorization("x.ghe.com", f"token {dummy}") == f"Bearer {REAL_GH}"
    assert masked.authorization("evil.test", f"Bearer {dummy}") is None
    assert masked.authorization("api.openai.com", f"Bearer {dummy}") is None
    assert masked.bound_to("github.com") and not masked.bound_to("example.test")


def test_an_enterprise_token_needs_its_host() -> None:
    without = mask_environment({"GH_ENTERPRISE_TOKEN": REAL_GH})
    assert "GH_ENTERPRISE_TOKEN" not in without.env and without.removed == ("GH_ENTERPRISE_TOKEN",)
    bound = mask_environment({"GH_ENTERPRISE_TOKEN": REAL_GH, "GH_HOST": "GHE.Example.Test"})
    dummy = bound.env["GH_ENTERPRISE_TOKEN"]
    assert bound.authorization("ghe.example.test", f"Bearer {dummy}") == f"Bearer {REAL_GH}"
    assert bound.authorization("api.github.com", f"Bearer {dummy}") is None


# ---- through a real sandboxed child ------------------------------------------------------------


def _test_ca(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a certificate for 127.0.0.1 it signed: (ca.pem, leaf.pem, leaf.key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test origin CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "leaf.pem", directory / "leaf.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@contextlib.contextmanager
def _tls_origin(directory: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> Iterator[int]:
    """``origin.py --tls ... args`` on 127.0.0.1, its CA trusted by the server under test (the
    operator's setting); yields its port."""
    ca, leaf, key = _test_ca(directory)
    monkeypatch.setenv(UPSTREAM_CA_ENV, str(ca))
    with python_server(ORIGIN, "--tls", str(leaf), str(key), *args) as port:
        yield port


@pytest.fixture
def https_origin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """An HTTPS origin on 127.0.0.1 that answers ``auth-ok`` only to the real token."""
    with _tls_origin(tmp_path, monkeypatch, "--bearer", REAL_GH) as port:
        yield port


@pytest.mark.skipif(not support().usable, reason="bubblewrap cannot run here")
@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_the_origin_gets_the_real_token_and_the_child_never_sees_it(
    client: Client,  # noqa: F811
    https_origin: int,
) -> None:
    env = {**PATH_ENV, "GH_HOST": "127.0.0.1", "GH_ENTERPRISE_TOKEN": REAL_GH}
    script = (
        'echo "token=$GH_ENTERPRISE_TOKEN"; env; cat "$SSL_CERT_FILE" | head -c 0; '
        f'curl -s -H "Authorization: Bearer $GH_ENTERPRISE_TOKEN" https://127.0.0.1:{https_origin}/'
    )
    proxy = network_proxy({"127.0.0.1": "allow"}, credentialMasking=True)
    result = await client.start("p1", ["sh", "-c", script], env=env, networkProxy=proxy)
    assert result["sandboxType"] == "linuxSeccomp"
    out = (await client.wait_closed("p1")).data().decode()
    assert REAL_GH not in out
    shown = out.split("token=", 1)[1].split("\n", 1)[0]
    assert shown.startswith("ghp_masked") and len(shown) == len(REAL_GH)
    assert "CODEX_NETWORK_PROXY_CREDENTIAL_BROKER_ACTIVE=1" in out
    assert "SSL_CERT_FILE=/dev/exec-server-network/ca-bundle.pem" in out
    assert out.endswith("auth-ok\n"), out
    [audit] = decisions(client, "p1")
    assert (audit["protocol"], audit["decision"]) == ("https_connect", "allow")


# ---- custom providers (credentialProviders) -----------------------------------------------------

REAL_VENDOR = "vendor_" + "r3alvend0rs3cret" * 2
VENDOR_PATTERN = "^vendor_[a-z0-9]{32}$"


def _vendor(url_prefixes: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "env": ["VENDOR_TOKEN"],
        "patterns": [VENDOR_PATTERN],
        "url_prefixes": url_prefixes,
        **extra,
    }


def test_a_custom_dummy_has_the_patterns_shape() -> None:
    provider = compile_provider("vendor", _vendor(["api.vendor.test"]))
    masked = mask_environment({"VENDOR_TOKEN": REAL_VENDOR, "PATH": "/bin"}, [provider])
    dummy = masked.env["VENDOR_TOKEN"]
    assert re.fullmatch(VENDOR_PATTERN, dummy) and dummy != REAL_VENDOR
    assert json.loads(masked.env["CODEX_NETWORK_PROXY_BROKERED_CREDENTIALS"]) == [
        ["@alias:VENDOR_TOKEN", dummy],
        ["VENDOR_TOKEN", dummy],
    ]
    assert REAL_VENDOR not in json.dumps(masked.env) and masked.env["PATH"] == "/bin"
    other = mask_environment({"VENDOR_TOKEN": REAL_VENDOR}, [provider]).env["VENDOR_TOKEN"]
    assert other != dummy  # drawn afresh for each process


def test_a_custom_value_goes_back_only_at_its_destinations() -> None:
    provider = compile_provider(
        "vendor",
        _vendor(
            ["https://api.vendor.test/v1", "127.0.0.1:8080/", "*.vendor.example"],
            auth=["bearer", "basic", "header"],
            header="X-Api-Key",
            prefix="Key ",
        ),
    )
    masked = mask_environment({"VENDOR_TOKEN": REAL_VENDOR}, [provider])
    dummy = masked.env["VENDOR_TOKEN"]
    bearer = [("Authorization", f"Bearer {dummy}")]

    def swap(scheme: str, host: str, port: int, path: str, headers: Any = bearer) -> Any:
        return masked.swap_headers(scheme, host, port, path, headers)

    real = {"authorization": f"Bearer {REAL_VENDOR}"}
    assert swap("https", "API.vendor.test", 443, "/v1/models") == real
    assert swap("https", "api.vendor.test", 443, "/v1") == real
    assert swap("https", "api.vendor.test", 443, "/v10") == {}  # a prefix of whole segments
    assert swap("https", "api.vendor.test", 443, "/v1/../admin") == {}
    assert swap("https", "api.vendor.test", 443, "/v1%2f..%2fadmin") == {}
    assert swap("https", "api.vendor.test", 8443, "/v1") == {}  # another port
    assert swap("http", "api.vendor.test", 443, "/v1") == {}  # HTTP only for loopback
    assert swap("http", "127.0.0.1", 8080, "/anything") == real  # bare loopback: HTTP
    assert swap("https", "eu.vendor.example", 443, "/") == real
    assert swap("https", "vendor.example", 443, "/") == {}  # *.x is below x only
    assert swap("https", "evil.test", 443, "/v1") == {}
    assert masked.intercepts("https", "api.vendor.test", 443)
    assert not masked.intercepts("https", "api.vendor.test", 80)
    assert not masked.intercepts("https", "github.com", 443)
    keyed = [("X-Api-Key", f"Key {dummy}"), ("Authorization", f"bearer {dummy}")]
    assert swap("https", "api.vendor.test", 443, "/v1", keyed) == {
        "x-api-key": f"Key {REAL_VENDOR}",
        "authorization": f"bearer {REAL_VENDOR}",
    }
    import base64

    pair = base64.b64encode(f"user:{dummy}".encode()).decode()
    [(_, basic)] = swap(
        "https", "api.vendor.test", 443, "/v1", [("Authorization", f"Basic {pair}")]
    ).items()
    assert base64.b64decode(basic.split()[1]).decode() == f"user:{REAL_VENDOR}"
    assert swap("https", "api.vendor.test", 443, "/v1", [("Authorization", f"token {dummy}")]) == {}
    raw = compile_provider("raw", _vendor(["a.test"], auth=["header"], header="Authorization"))
    raw_masked = mask_environment({"VENDOR_TOKEN": REAL_VENDOR}, [raw])
    raw_dummy = raw_masked.env["VENDOR_TOKEN"]
    headers = [("Authorization", raw_dummy)]
    assert raw_masked.swap_headers("https", "a.test", 443, "/", headers) == {
        "authorization": REAL_VENDOR
    }
    assert (
        swap("https", "api.vendor.test", 443, "/v1", [("Authorization", f"Bearer x{dummy}")]) == {}
    )


def test_copies_of_a_real_value_in_other_variables_are_masked_too() -> None:
    provider = compile_provider("vendor", _vendor(["api.vendor.test"]))
    env = {
        "VENDOR_TOKEN": REAL_VENDOR,
        "GH_TOKEN": REAL_GH,
        "AUTH_HEADER": f"Bearer {REAL_VENDOR}",
        "BOTH": f"{REAL_GH}:{REAL_VENDOR}",
    }
    masked = mask_environment(env, [provider])
    vendor, gh = masked.env["VENDOR_TOKEN"], masked.env["GH_TOKEN"]
    assert masked.env["AUTH_HEADER"] == f"Bearer {vendor}"
    assert masked.env["BOTH"] == f"{gh}:{vendor}"
    assert REAL_VENDOR not in json.dumps(masked.env) and REAL_GH not in json.dumps(masked.env)


def test_a_custom_value_the_provider_cannot_protect_is_removed() -> None:
    provider = compile_provider("vendor", _vendor(["api.vendor.test"]))
    masked = mask_environment({"VENDOR_TOKEN": "not-a-vendor-token", "PATH": "/bin"}, [provider])
    assert "VENDOR_TOKEN" not in masked.env and masked.removed == ("VENDOR_TOKEN",)
    assert masked.credentials == ()
    unset = mask_environment({"PATH": "/bin"}, [provider])
    assert unset.removed == () and unset.env["CODEX_NETWORK_PROXY_BROKERED_CREDENTIALS"] == "[]"


def test_url_prefix_from_env_adds_an_exact_destination() -> None:
    provider = compile_provider(
        "vendor",
        {
            "env": ["VENDOR_TOKEN"],
            "patterns": [VENDOR_PATTERN],
            "url_prefix_from_env": "VENDOR_URL",
        },
    )
    env = {"VENDOR_TOKEN": REAL_VENDOR, "VENDOR_URL": "https://eu.vendor.test/api"}
    masked = mask_environment(env, [provider])
    dummy = masked.env["VENDOR_TOKEN"]
    headers = [("Authorization", f"Bearer {dummy}")]
    assert masked.swap_headers("https", "eu.vendor.test", 443, "/api/x", headers)
    assert not masked.swap_headers("https", "us.vendor.test", 443, "/api/x", headers)
    wild = mask_environment({**env, "VENDOR_URL": "*.vendor.test"}, [provider])
    assert not wild.intercepts("https", "eu.vendor.test", 443)  # no wildcard from the env


def test_patterns_run_in_linear_time() -> None:
    """A pattern that makes a backtracking engine take exponential time on a near miss is
    matched by RE2 at once (with Python's ``re`` this test would not end)."""
    provider = compile_provider(
        "slow", {"env": ["SLOW"], "patterns": ["(a|aa)+c"], "url_prefixes": ["s.test"]}
    )
    masked = mask_environment({"SLOW": "a" * 5000}, [provider])
    assert masked.removed == ("SLOW",)


BAD_PROVIDERS: list[tuple[dict[str, Any], str]] = [
    ({"": _vendor(["a.test"])}, "credential provider name must not be empty"),
    (
        {"v": {"patterns": ["x"], "url_prefixes": ["a.test"]}},
        "credential provider `v` has no environment keys",
    ),
    (
        {"v": {"env": ["V"], "patterns": [], "url_prefixes": ["a.test"]}},
        "credential provider `v` has no credential patterns",
    ),
    (
        {"v": {"env": ["V"], "patterns": ["x"]}},
        "credential provider `v` has no destination URL prefixes",
    ),
    (
        {"v": {"env": ["1V"], "patterns": ["x"], "url_prefixes": ["a.test"]}},
        "credential provider `v` has an invalid environment key",
    ),
    (
        {"v": {"env": ["GH_TOKEN"], "patterns": ["x"], "url_prefixes": ["a.test"]}},
        "credential provider `v` overlaps a built-in credential source",
    ),
    (
        {"v": {"env": ["V"], "patterns": ["x"], "url_prefixes": ["http://a.test"]}},
        "invalid destination for credential provider `v`: credential destination must use HTTPS unless it targets loopback over HTTP",
    ),
    (
        {"v": {"env": ["V"], "patterns": ["x"], "url_prefixes": ["a.test"], "auth": ["header"]}},
        "credential provider `v` requires a header name exactly when using header authentication",
    ),
    (
        {"v": {"env": ["V"], "patterns": ["x*"], "url_prefixes": ["a.test"]}},
        "invalid credential pattern for provider `v`: credential pattern must not match an empty value",
    ),
    (
        {"v": {"env": ["V"], "patterns": ["vendor-*("], "url_prefixes": ["a.test"]}},
        "invalid credential pattern for provider `v`: regex parse error: missing ): vendor-*(",
    ),
    (
        {"a": _vendor(["a.test"]), "b": _vendor(["b.test"])},
        "credential provider `b` overlaps the environment source `VENDOR_TOKEN` of credential provider `a`",
    ),
]


async def test_bad_provider_definitions_are_refused(client: Client) -> None:  # noqa: F811
    """The reference's words; where it logs the provider and runs the command with the value
    unmasked, we refuse the start (-32602): the client asked for a protection it would not get."""
    for number, (providers, message) in enumerate(BAD_PROVIDERS):
        proxy = network_proxy({}, credentialMasking=True, credentialProviders=providers)
        with pytest.raises(RpcFailure) as caught:
            await client.start(f"bad{number}", ["true"], networkProxy=proxy)
        assert caught.value.code == -32602
        assert caught.value.message == f"invalid network proxy config: {message}"
    unknown = {"v": {**_vendor(["a.test"]), "bogus": 1}}
    proxy = network_proxy({}, credentialMasking=True, credentialProviders=unknown)
    with pytest.raises(RpcFailure) as caught:
        await client.start("bad-field", ["true"], networkProxy=proxy)
    assert caught.value.code == -32602 and "bogus" in caught.value.message


def test_compiling_checks_each_definition_alone() -> None:
    with pytest.raises(
        ProviderError, match="requires header authentication to use a header prefix"
    ):
        compile_provider("v", _vendor(["a.test"], prefix="Key "))
    with pytest.raises(ProviderError, match="invalid header for credential provider `v`"):
        compile_provider("v", _vendor(["a.test"], auth=["header"], header="X Bad"))
    with pytest.raises(ProviderError, match="has an invalid host environment key"):
        compile_provider("v", _vendor([], url_prefix_from_env="VENDOR_TOKEN"))
    with pytest.raises(ProviderError, match="credential pattern exceeds 2048 bytes"):
        compile_provider("v", {**_vendor(["a.test"]), "patterns": ["a" * 2049]})
    with pytest.raises(ProviderError, match="must generate bounded UTF-8 values"):
        compile_provider("v", {**_vendor(["a.test"]), "patterns": ["[a-z]{900}"]})


def _costly_class() -> str:
    """A negated class of every printable ASCII character, one item each: drawing from it
    means testing its 94 items against two thousand other code points."""
    return "[^" + "".join(re.escape(chr(c)) for c in range(0x21, 0x7F)) + "]{8}"


def test_patterns_too_costly_to_draw_from_are_refused() -> None:
    """Compiling runs on the event loop: a request's patterns have a bounded cost."""
    costly = {**_vendor(["a.test"]), "patterns": [_costly_class()]}
    with pytest.raises(ProviderError, match="too costly to draw a dummy from"):
        compile_provider("v", costly)
    many = {**_vendor(["a.test"]), "patterns": [f"tok{n}_[a-z]{{8}}" for n in range(65)]}
    with pytest.raises(ProviderError, match="more than 64 credential patterns in one request"):
        compile_provider("v", many)
    assert compile_provider("v", {**many, "patterns": many["patterns"][:64]}).name == "v"


@pytest.mark.skipif(not support().usable, reason="bubblewrap cannot run here")
@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_a_custom_providers_origin_gets_the_real_value_and_nobody_else(
    client: Client,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HTTPS (looked into) and loopback HTTP destinations get the real value in the headers
    of the provider's methods; a path outside the prefix and another allowed origin get the
    dummy; the child's output, environment and files hold no real value."""
    keyed = ["--bearer", REAL_VENDOR, "--api-key", f"Key {REAL_VENDOR}"]
    with (
        _tls_origin(tmp_path, monkeypatch, "--bearer", REAL_VENDOR) as tls,
        python_server(ORIGIN, *keyed) as plain,
        python_server(ORIGIN, "--echo") as echo,
    ):
        provider = _vendor(
            [f"https://127.0.0.1:{tls}/api", f"127.0.0.1:{plain}/v1"],
            auth=["bearer", "header"],
            header="X-Api-Key",
            prefix="Key ",
        )
        curl = 'curl -s -H "Authorization: Bearer $VENDOR_TOKEN" -H "X-Api-Key: Key $VENDOR_TOKEN"'
        script = (
            f'echo "token=$VENDOR_TOKEN"; env > {tmp_path}/env.txt; '
            f"{curl} https://127.0.0.1:{tls}/api/models; "
            f"{curl} https://127.0.0.1:{tls}/other; "
            f"{curl} http://127.0.0.1:{plain}/v1/x; "
            f"{curl} http://127.0.0.1:{plain}/v10; "
            f"{curl} http://127.0.0.1:{echo}/v1"
        )
        proxy = network_proxy(
            {"127.0.0.1": "allow"}, credentialMasking=True, credentialProviders={"vendor": provider}
        )
        env = {**PATH_ENV, "VENDOR_TOKEN": REAL_VENDOR}
        await client.start(
            "p1", ["sh", "-c", script], env=env, networkProxy=proxy, cwd=str(tmp_path)
        )
        out = (await client.wait_closed("p1")).data().decode()
    lines = out.splitlines()
    dummy = lines[0].removeprefix("token=")
    assert re.fullmatch(VENDOR_PATTERN, dummy) and dummy != REAL_VENDOR
    assert lines[1:] == [
        "auth-ok",
        "auth-wrong",
        "auth-ok",
        "auth-wrong",
        f"seen:Bearer {dummy}",
    ], out
    written = (tmp_path / "env.txt").read_text()
    assert f"VENDOR_TOKEN={dummy}" in written
    assert REAL_VENDOR not in out and REAL_VENDOR not in written


PROFILE = {
    "permissions": {
        "type": "managed",
        "file_system": {
            "type": "restricted",
            "entries": [
                {"path": {"type": "special", "value": {"kind": "root"}}, "access": "read"},
                {"path": {"type": "special", "value": {"kind": "slash_tmp"}}, "access": "write"},
            ],
        },
        "network": "enabled",
    },
    "cwd": "file:///tmp",
    "workspaceRoots": ["file:///tmp"],
    "windowsSandboxLevel": "disabled",
    "windowsSandboxProxySettingsMode": "reconcile",
    "useLegacyLandlock": False,
}
"""The profile codex sends with a managed network (the reference masks only under one)."""


@pytest.mark.skipif(not support().usable, reason="bubblewrap cannot run here")
@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_the_reference_answers_the_same_request_alike(client: Client) -> None:  # noqa: F811
    """The same process/start against the 0.169 reference and ours: a dummy of the pattern,
    the brokered list, the real value at the destination only; a definition the reference
    only logs (no patterns) runs there with the real value shown, and is refused here."""
    from .codex.reference import reference_client

    with (
        python_server(ORIGIN, "--bearer", REAL_VENDOR) as port,
        python_server(ORIGIN, "--echo") as echo,
    ):
        curl = 'curl -s -H "Authorization: Bearer $VENDOR_TOKEN"'
        script = (
            'echo "token=$VENDOR_TOKEN"; echo "$CODEX_NETWORK_PROXY_BROKERED_CREDENTIALS"; '
            f"{curl} http://127.0.0.1:{port}/v1/x; {curl} http://127.0.0.1:{port}/v10; "
            f"{curl} http://127.0.0.1:{echo}/v1"
        )

        def params(providers: dict[str, Any]) -> dict[str, Any]:
            proxy = network_proxy(
                {"127.0.0.1": "allow"},
                socks5=False,
                credentialMasking=True,
                credentialProviders=providers,
            )
            return {
                "cwd": "file:///tmp",
                "env": {**PATH_ENV, "VENDOR_TOKEN": REAL_VENDOR},
                "sandbox": PROFILE,
                "enforceManagedNetwork": True,
                "networkProxy": proxy,
            }

        good = {"vendor": _vendor([f"http://127.0.0.1:{port}/v1"])}
        no_patterns = {"vendor": {**_vendor([f"127.0.0.1:{port}"]), "patterns": []}}
        outputs = {}
        async with reference_client() as reference:
            for name, server in (("reference", reference), ("ours", client)):
                await server.start("p1", ["/bin/bash", "-c", script], **params(good))
                outputs[name] = (await server.wait_closed("p1", 30)).data().decode()
            await reference.start(
                "p2", ["/bin/bash", "-c", "echo $VENDOR_TOKEN"], **params(no_patterns)
            )
            unmasked = (await reference.wait_closed("p2", 30)).data().decode()
        with pytest.raises(RpcFailure) as caught:
            await client.start(
                "p2", ["/bin/bash", "-c", "echo $VENDOR_TOKEN"], **params(no_patterns)
            )
    for name, out in outputs.items():
        token, brokered, *rest = out.splitlines()
        dummy = token.removeprefix("token=")
        assert re.fullmatch(VENDOR_PATTERN, dummy) and dummy != REAL_VENDOR, (name, out)
        assert json.loads(brokered) == [["@alias:VENDOR_TOKEN", dummy], ["VENDOR_TOKEN", dummy]]
        assert rest == ["auth-ok", "auth-wrong", f"seen:Bearer {dummy}"], (name, out)
    assert unmasked == f"{REAL_VENDOR}\n"  # the reference's fail-open, which we do not copy
    assert caught.value.code == -32602
    assert "credential provider `vendor` has no credential patterns" in caught.value.message


def test_the_upstream_tls_context_is_built_once_per_ca_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Building one reads the system's roots (tens of milliseconds of the event loop): each
    intercepted connection reuses it, and an operator's CA file still gets its own."""
    from exec_server.network.mitm import upstream_context

    monkeypatch.delenv(UPSTREAM_CA_ENV, raising=False)
    system = upstream_context()
    assert upstream_context() is system
    ca, _, _ = _test_ca(tmp_path)
    monkeypatch.setenv(UPSTREAM_CA_ENV, str(ca))
    operator = upstream_context()
    assert operator is not system and upstream_context() is operator
    assert len(operator.get_ca_certs()) == len(system.get_ca_certs()) + 1


def test_the_leaf_certificates_kept_are_bounded() -> None:
    """A wildcard destination lets a child name any number of hosts: the server keeps the
    most recently used leaf contexts only."""
    from exec_server.network.mitm import MAX_LEAF_CONTEXTS, authority

    ca = authority()
    first, kept = ca.context_for("h0.leaf.test"), ca.context_for("kept.leaf.test")
    for n in range(1, MAX_LEAF_CONTEXTS):
        ca.context_for(f"h{n}.leaf.test")
        if n % 64 == 0:
            assert ca.context_for("kept.leaf.test") is kept  # used: stays
    assert ca.context_for("kept.leaf.test") is kept
    assert ca.context_for("h0.leaf.test") is not first  # the oldest went, made again
