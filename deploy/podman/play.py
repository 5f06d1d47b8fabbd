"""deploy/kubernetes/ as podman 4.3's ``kube play`` can run it, on one machine.

Prints one YAML stream (the token Secret and the Deployment, or the StatefulSet) to stdout:

    python3 deploy/podman/play.py --token-file token > /tmp/exec-server-kube.yaml
    make seccomp-profile    # build/seccomp/exec-server/bubblewrap.json, the pods' profile
    podman kube play --network none --seccomp-profile-root "$PWD/build/seccomp" \\
        /tmp/exec-server-kube.yaml

The manifests are read, not copied: what changes, and why, is each function below and
deploy/README.md's table of podman 4.3 quirks. Needs PyYAML (in the project's dev extra).
"""

from __future__ import annotations

import argparse
import binascii
import sys
from pathlib import Path
from typing import Any

import yaml

KUBERNETES = Path(__file__).resolve().parent.parent / "kubernetes"


def load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    return document


def without_published_ports(container: dict[str, Any]) -> None:
    """podman 4.3 publishes every containerPort on the host's 0.0.0.0 at the same port, so a
    second replica cannot start (and the first is open to the network): keep none. Clients
    reach each pod in its own network namespace (deploy/README.md)."""
    container.pop("ports", None)


def without_http_probes(container: dict[str, Any]) -> None:
    """podman 4.3 turns an httpGet probe into ``curl http://localhost:<port>`` (a named port
    becomes 0, and the image has no curl) and ignores readinessProbe: the image's own
    HEALTHCHECK (Python's urllib on /healthz) stands in, run by ``podman healthcheck run``."""
    container.pop("livenessProbe", None)
    container.pop("readinessProbe", None)


def with_host_users(pod: dict[str, Any]) -> None:
    """``hostUsers: false`` makes podman 4.3 ask for ``--userns=auto``, which needs
    /etc/subuid and /etc/subgid ranges for the user ``containers``; without them every pod
    fails with "could not find enough available IDs". Where they exist, keep it
    (``--keep-host-users false``); otherwise the pod shares the host's users: the executor
    is still uid 10001, without privileges or capabilities."""
    pod.pop("hostUsers", None)


def token_secret(token: str) -> dict[str, Any]:
    """podman 4.3 ignores ``stringData`` and writes a ``data`` value into the mounted file as
    it is, base64 text and all (it only checks that it decodes; fixed in 4.4), and 0644
    whatever ``defaultMode`` says. So the token goes in ``data`` verbatim, and must be valid
    base64 itself: a hex token (``secrets.token_hex(32)``) is."""
    try:
        binascii.a2b_base64(token.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        raise SystemExit(
            "podman 4.3 needs a token that is valid base64 text, e.g. 64 hex digits: "
            "python3 -c 'import secrets; print(secrets.token_hex(32))'"
        ) from None
    secret = load(KUBERNETES / "common" / "secret.yaml")
    secret.pop("stringData", None)
    secret["data"] = {"token": token}
    return secret


def render(
    variant: str,
    replicas: int,
    host_users: bool,
    token: str,
    image: str | None = None,
) -> str:
    """The YAML stream for ``podman kube play``."""
    secret = token_secret(token)
    if variant == "statefulset":
        workload = load(KUBERNETES / "statefulset" / "statefulset.yaml")
    else:
        workload = load(KUBERNETES / "deployment.yaml")
    workload["spec"]["replicas"] = replicas
    pod = workload["spec"]["template"]["spec"]
    if not host_users:
        with_host_users(pod)
    for container in pod["containers"]:
        container["image"] = image or container["image"]
        without_published_ports(container)
        without_http_probes(container)
    return yaml.safe_dump_all([secret, workload], sort_keys=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=["deployment", "statefulset"], default="deployment")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument(
        "--token-file", required=True, help="the bearer token (64 hex digits), in a file"
    )
    parser.add_argument("--image", help="the image to run instead of the manifests' own")
    parser.add_argument(
        "--keep-host-users",
        choices=["true", "false"],
        default="true",
        help="false keeps hostUsers: false (needs subuid/subgid ranges for 'containers')",
    )
    args = parser.parse_args(argv)
    host_users = args.keep_host_users == "false"
    token = Path(args.token_file).read_text().strip()
    text = render(args.variant, args.replicas, host_users, token, args.image)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
