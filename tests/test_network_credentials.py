"""Credential masking (issue 18 C): the child sees same-shaped dummies; the proxy looks into
TLS to the hosts the credentials are for and puts the real token back; nothing the child can
read holds a real value. A real HTTPS origin (its own process, a test CA the server is told
to trust), a real curl in a real sandbox."""

from __future__ import annotations

import datetime
import ipaddress
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from exec_server.network.credentials import mask_environment
from exec_server.network.mitm import UPSTREAM_CA_ENV
from exec_server.sandbox.bwrap import support

from .support import PATH_ENV, Client, python_server
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


@pytest.fixture
def https_origin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """An HTTPS origin on 127.0.0.1 that answers ``auth-ok`` only to the real token; the
    server under test trusts its CA (the operator's setting)."""
    ca, leaf, key = _test_ca(tmp_path)
    monkeypatch.setenv(UPSTREAM_CA_ENV, str(ca))
    with python_server(ORIGIN, "--tls", str(leaf), str(key), "--bearer", REAL_GH) as port:
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
