"""deploy/: the Kubernetes manifests validate offline against a current Kubernetes, the two
variants stay the same pod, the grace periods cover the drain, the seccomp profile generator
adds only what bubblewrap needs, and the helpers that adapt them do what they say. No containers."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from .support import ROOT

KUBE = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.37.0"
"""The newest Kubernetes that kubernetes-validate (dev extra) knows."""
BWRAP_SYSCALLS = {"clone", "unshare", "mount", "umount2", "pivot_root"}


def manifests() -> list[Path]:
    return sorted(p for p in KUBE.rglob("*.yaml") if p.name != "kustomization.yaml")


def load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    return document


def validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet"]
    command += ["-k", KUBERNETES_VERSION, *map(str, paths)]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)


def test_every_manifest_validates_strictly() -> None:
    done = validate(*manifests())
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_validator_refuses_an_unknown_field(tmp_path: Path) -> None:
    text = (KUBE / "deployment.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("allowPrivilegeEscalation", "allowPrivilegeEscalaton"))
    done = validate(bad)
    assert done.returncode == 1 and "allowPrivilegeEscalaton" in done.stdout + done.stderr


def test_kustomizations_name_every_manifest_once() -> None:
    named: list[Path] = []
    for kustomization in KUBE.rglob("kustomization.yaml"):
        for resource in load(kustomization)["resources"]:
            path = (kustomization.parent / resource).resolve()
            assert path.exists(), f"{kustomization}: {resource} does not exist"
            named += [path] if path.is_file() else []
    assert sorted(named) == [p.resolve() for p in manifests()]


def pod_spec(path: Path) -> dict[str, Any]:
    spec: dict[str, Any] = load(path)["spec"]["template"]["spec"]
    return spec


def test_statefulset_runs_the_deployments_pod() -> None:
    deployment = load(KUBE / "deployment.yaml")["spec"]["template"]
    statefulset = load(KUBE / "statefulset" / "statefulset.yaml")["spec"]["template"]
    assert statefulset == deployment


def seconds(text: str) -> int:
    match = re.fullmatch(r"(\d+)s?", str(text))
    assert match, text
    return int(match.group(1))


def drain_timeout(args: list[str]) -> int:
    (value,) = [a.split("=", 1)[1] for a in args if a.startswith("--drain-timeout=")]
    return seconds(value)


def test_grace_periods_cover_the_drain() -> None:
    spec = pod_spec(KUBE / "deployment.yaml")
    drain = drain_timeout(spec["containers"][0]["args"])
    assert spec["terminationGracePeriodSeconds"] > drain
    service = load(ROOT / "deploy" / "swarm" / "stack.yml")["services"]["exec-server"]
    assert seconds(service["stop_grace_period"]) > drain_timeout(service["command"])


def test_probes_and_privileges() -> None:
    spec = pod_spec(KUBE / "deployment.yaml")
    (container,) = spec["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 10001
    assert spec["hostUsers"] is False
    context = container["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert context["procMount"] == "Unmasked"
    profile = spec["securityContext"]["seccompProfile"]
    assert profile["type"] == "Localhost"
    # podman kube play --seccomp-profile-root build/seccomp finds it as a node would.
    assert profile["localhostProfile"] == make_profile.LOCALHOST_PROFILE
    assert make_profile.OUTPUT == ROOT / "build" / "seccomp" / make_profile.LOCALHOST_PROFILE
    assert container["resources"]["limits"] and container["resources"]["requests"]


def test_network_policy_admits_only_the_harness_namespace() -> None:
    policy = load(KUBE / "common" / "networkpolicy.yaml")["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    (source,) = rule["from"]
    assert set(source) == {"namespaceSelector"}
    assert rule["ports"] == [{"port": 8765, "protocol": "TCP"}]


def load_make_profile() -> ModuleType:
    """deploy/seccomp/make_profile.py (a script, not a package) as a module."""
    spec = importlib.util.spec_from_file_location("make_profile", ROOT / "deploy/seccomp/make_profile.py")  # fmt: skip
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_profile = load_make_profile()

DEFAULT = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "defaultErrnoRet": 1,
    "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]}],
    "syscalls": [
        {"names": ["read", "write", "clone", "mount"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
        {
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": 2114060288, "op": "SCMP_CMP_MASKED_EQ"}],
        },
        {
            "names": ["mount", "umount2", "unshare", "pivot_root"],
            "action": "SCMP_ACT_ALLOW",
            "includes": {"caps": ["CAP_SYS_ADMIN"]},
        },
        {"names": ["reboot"], "action": "SCMP_ACT_ERRNO"},
    ],
}
"""A made-up default in the shape of Docker's and containers-common's: the five calls are
granted unconditionally (as containers-common does), by flags, and with CAP_SYS_ADMIN."""


def granting(profile: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [r for r in profile["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" and name in r["names"]]  # fmt: skip


def test_the_profile_is_the_default_plus_one_rule_for_bubblewrap() -> None:
    profile = make_profile.with_bubblewrap(copy.deepcopy(DEFAULT))
    *kept, ours = profile["syscalls"]
    assert set(ours["names"]) == BWRAP_SYSCALLS
    assert ours["action"] == "SCMP_ACT_ALLOW" and not {"args", "includes", "excludes"} & set(ours)
    for name in BWRAP_SYSCALLS:
        assert granting(profile, name) == [ours], name  # only our rule grants it
    # Everything else as the default had it: other names, the refusing rules, the header.
    assert kept == [
        {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
        DEFAULT["syscalls"][1],
        DEFAULT["syscalls"][4],
    ]
    assert {k: v for k, v in profile.items() if k != "syscalls"} == {
        k: v for k, v in DEFAULT.items() if k != "syscalls"
    }


def test_make_profile_writes_the_file_and_refuses_what_is_not_a_default(tmp_path: Path) -> None:
    source, output = tmp_path / "default.json", tmp_path / "out" / "exec-server" / "p.json"
    source.write_text(json.dumps(DEFAULT))
    command = [sys.executable, str(ROOT / "deploy/seccomp/make_profile.py")]
    done = subprocess.run([*command, "--from", str(source), str(output)], capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(output.read_text()) == make_profile.with_bubblewrap(DEFAULT)
    # Its own output again, an allow-all profile, a missing file: refused with the reason.
    allow_all = tmp_path / "allow.json"
    allow_all.write_text(json.dumps({**DEFAULT, "defaultAction": "SCMP_ACT_ALLOW"}))
    for bad, reason in [
        (output, "already a profile made by make_profile.py"),
        (allow_all, "defaultAction"),
        (tmp_path / "missing.json", "does not exist"),
    ]:
        done = subprocess.run([*command, "--from", str(bad), str(tmp_path / "x.json")], capture_output=True, text=True, check=False)  # fmt: skip
        assert done.returncode == 1 and reason in done.stderr, (bad, done.stderr)
    assert not (tmp_path / "x.json").exists()


def test_no_copied_seccomp_profile_is_in_the_tree() -> None:
    assert not list((ROOT / "deploy").rglob("*.json"))


def pip_settings(tmp_path: Path, settings: dict[str, str]) -> tuple[str, list[str]]:
    """deploy/pip_settings.py with only ``settings`` (PIP_* variables; no config files)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env |= {"PIP_CONFIG_FILE": os.devnull, **settings}
    out = tmp_path / "pipenv"
    done = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "pip_settings.py"), str(out)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert out.stat().st_mode & 0o077 == 0
    return out.read_text(), done.stdout.split()


def test_pip_settings_reach_the_build_as_a_secret_and_read_only_volumes(tmp_path: Path) -> None:
    cert = tmp_path / "ca.pem"
    cert.write_text("not a real CA")
    index = tmp_path / "mirror" / "simple"
    index.mkdir(parents=True)
    settings = {
        "PIP_INDEX_URL": "https://user:s3cret@pypi.example/simple",
        "PIP_CERT": str(cert),
        "PIP_EXTRA_INDEX_URL": f"file://{index}",
    }
    env_file, volumes = pip_settings(tmp_path, settings)
    assert "PIP_INDEX_URL=https://user:s3cret@pypi.example/simple" in env_file.splitlines()
    assert f"PIP_CERT=/run/host-pip{cert}" in env_file.splitlines()
    # a file:// index is mounted from above its simple/, where its links point
    assert f"PIP_EXTRA_INDEX_URL=file:///run/host-pip{index}" in env_file.splitlines()
    assert sorted(volumes) == sorted(
        [
            f"--volume={cert}:/run/host-pip{cert}:ro",
            f"--volume={index.parent}:/run/host-pip{index.parent}:ro",
        ]
    )
    assert all("s3cret" not in volume for volume in volumes)


def play(tmp_path: Path, token: str, *extra: str) -> subprocess.CompletedProcess[str]:
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    command = [sys.executable, str(ROOT / "deploy/podman/play.py"), "--token-file", str(token_file)]
    return subprocess.run(
        [*command, *extra], capture_output=True, text=True, check=False, timeout=30
    )


def test_podman_rendering_keeps_the_pod_and_works_around_4_3(tmp_path: Path) -> None:
    token = "ab" * 32
    done = play(tmp_path, token, "--image", "localhost/x:y")
    assert done.returncode == 0, done.stderr
    secret, deployment = yaml.safe_load_all(done.stdout)
    assert secret["kind"] == "Secret" and secret["data"] == {"token": token}
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["image"] == "localhost/x:y"
    assert not {"ports", "livenessProbe", "readinessProbe"} & set(container)
    assert container["args"] == pod_spec(KUBE / "deployment.yaml")["containers"][0]["args"]
    assert "hostUsers" not in spec
    expected = pod_spec(KUBE / "deployment.yaml")["containers"][0]["securityContext"]
    assert container["securityContext"] == expected


@pytest.mark.parametrize("token", ["change-me-to-a-long-random-token", "abc"])
def test_podman_rendering_refuses_a_token_4_3_would_garble(tmp_path: Path, token: str) -> None:
    done = play(tmp_path, token)
    assert done.returncode != 0 and "token_hex" in done.stderr
