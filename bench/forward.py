"""`python -m bench.forward`: port forwarding, ours beside `ssh -L`, to the same loopback target.

Three processes per forwarder, as a person would run them: the target (a small TCP server in
its own process), the forwarder (ours: `exec-server --listen ws://127.0.0.1:0` and
`exec-server forward 0:127.0.0.1:TARGET`; ssh: a private `sshd` on a loopback port, with a
host key and a client key generated in a temporary directory, and `ssh -N -L`), and this
bench, which connects to the forwarder's local port:

- **upload**: N MiB sent through the forward, the target counts them and answers at EOF;
- **download**: the target sends N MiB through the forward;
- **connect**: a new connection to the local port, one byte echoed back (a new stream or
  channel each time: `forward/open` for ours, a `direct-tcpip` channel for ssh).

OpenSSH comes from Debian (`openssh-server`, `openssh-client`); `make bench-forward` installs
them when root. The system's sshd and its configuration are never touched. Without `sshd`
the ssh rows are skipped with the reason.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

from bench import report

MiB = 1 << 20
BLOCK = MiB
STEP_TIMEOUT = 120.0
RESULTS = Path(__file__).resolve().parent / "results"
SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/bin/sshd")


# ---- the target ---------------------------------------------------------------------------------


def _serve_target(listener: socket.socket) -> None:
    """Each connection's first byte says what to do: ``U`` upload (count to EOF, answer the
    count), ``D`` + 8 bytes download (send that many, close), ``E`` echo one byte."""
    block = os.urandom(BLOCK)

    def one(conn: socket.socket) -> None:
        with conn:
            command = conn.recv(1)
            if command == b"U":
                buffer, total = bytearray(BLOCK), 0
                while received := conn.recv_into(buffer):
                    total += received
                conn.sendall(b"%d\n" % total)
            elif command == b"D":
                size = int.from_bytes(_recv_exactly(conn, 8), "big")
                view = memoryview(block)
                while size > 0:
                    size -= conn.send(view[: min(size, BLOCK)])
                conn.shutdown(socket.SHUT_WR)
                conn.recv(1)
            elif command == b"E":
                conn.sendall(conn.recv(1))

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=one, args=(conn,), daemon=True).start()


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        piece = sock.recv(size - len(data))
        if not piece:
            raise ConnectionError("the peer closed early")
        data += piece
    return data


@contextlib.contextmanager
def target() -> Iterator[int]:
    """The target in its own process (so its work is not the bench's); yields its port."""
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.forward", "--target"],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert child.stdout is not None
        yield int(child.stdout.readline())
    finally:
        child.kill()
        child.wait()


# ---- the forwarders -----------------------------------------------------------------------------


def _read_port(stream: Any, pattern: str, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        text = line.decode(errors="replace") if isinstance(line, bytes) else line
        seen.append(text.strip())
        found = re.search(pattern, text)
        if found:
            return int(found[1])
    raise RuntimeError(f"no port announced: {' | '.join(seen[-3:])}")


@contextlib.contextmanager
def ours(target_port: int) -> Iterator[tuple[int, list[int]]]:
    """Our server and our `forward` CLI; yields the local port and their pids."""
    exe = Path(sys.executable).parent / "exec-server"
    server = subprocess.Popen(
        [str(exe), "--listen", "ws://127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    forwarder = None
    try:
        assert server.stdout is not None
        url = server.stdout.readline().decode().strip()
        forwarder = subprocess.Popen(
            [str(exe), "forward", "--url", url, f"0:127.0.0.1:{target_port}"],
            stderr=subprocess.PIPE,
        )
        port = _read_port(forwarder.stderr, r"forwarding 127\.0\.0\.1:(\d+)")
        yield port, [server.pid, forwarder.pid]
    finally:
        for child in (forwarder, server):
            if child is not None:
                child.terminate()
                child.wait()


def sshd_binary() -> str | None:
    for candidate in SSHD_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def ssh(target_port: int) -> Iterator[tuple[int, list[int]]]:
    """A private sshd on loopback and `ssh -N -L`; yields the local port and their pids."""
    sshd = sshd_binary()
    if sshd is None or shutil.which("ssh") is None:
        raise RuntimeError("OpenSSH is not installed (make bench-forward installs it as root)")
    with tempfile.TemporaryDirectory(prefix="forward-bench-") as tmp:
        home = Path(tmp)
        for name in ("host", "client"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / name)],
                check=True,
            )
        (home / "authorized_keys").write_text((home / "client.pub").read_text())
        port = _free_port()
        config = home / "sshd_config"
        config.write_text(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {home / 'host'}\n"
            f"AuthorizedKeysFile {home / 'authorized_keys'}\nPidFile {home / 'sshd.pid'}\n"
            "StrictModes no\nUsePAM no\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
            "PermitRootLogin prohibit-password\nAllowTcpForwarding yes\n"
        )
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # its privilege separation dir
        daemon = subprocess.Popen(
            [sshd, "-D", "-e", "-f", str(config)],
            stderr=subprocess.PIPE,
        )
        client = None
        try:
            _wait_listening(port, daemon)
            local = _free_port()
            client = subprocess.Popen(
                [
                    "ssh", "-N", "-F", "/dev/null", "-i", str(home / "client"),
                    "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                    "-o", f"UserKnownHostsFile={home / 'known_hosts'}",
                    "-o", "ExitOnForwardFailure=yes", "-p", str(port),
                    "-L", f"127.0.0.1:{local}:127.0.0.1:{target_port}",
                    f"{_user()}@127.0.0.1",
                ],
                stderr=subprocess.PIPE,
            )  # fmt: skip
            _wait_listening(local, client)
            yield local, [daemon.pid, client.pid]
        finally:
            for child in (client, daemon):
                if child is not None:
                    child.terminate()
                    child.wait()


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


def _wait_listening(port: int, child: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            err = child.stderr.read().decode(errors="replace") if child.stderr else ""
            raise RuntimeError(f"{child.args[0]} exited: {err.strip()[-300:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout:g} s")


# ---- the measurements -----------------------------------------------------------------------------


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=STEP_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def upload(port: int, size: int) -> float:
    """MiB/s of ``size`` bytes sent through the forward, until the target has counted them."""
    block = memoryview(os.urandom(BLOCK))
    with _connect(port) as sock:
        t0 = time.perf_counter()
        sock.sendall(b"U")
        left = size
        while left > 0:
            sock.sendall(block[: min(left, BLOCK)])
            left -= BLOCK
        sock.shutdown(socket.SHUT_WR)
        answer = sock.makefile("rb").readline()
        elapsed = time.perf_counter() - t0
    if int(answer) != size:
        raise RuntimeError(f"the target counted {answer!r} bytes, not {size}")
    return size / MiB / elapsed


def download(port: int, size: int) -> float:
    """MiB/s of ``size`` bytes sent by the target through the forward."""
    buffer = bytearray(BLOCK)
    with _connect(port) as sock:
        t0 = time.perf_counter()
        sock.sendall(b"D" + size.to_bytes(8, "big"))
        total = 0
        while received := sock.recv_into(buffer):
            total += received
        elapsed = time.perf_counter() - t0
    if total != size:
        raise RuntimeError(f"received {total} bytes, not {size}")
    return size / MiB / elapsed


def connect_latency(port: int, count: int) -> list[float]:
    """Milliseconds from connect() to a byte echoed back, each on a new connection."""
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        with _connect(port) as sock:
            sock.sendall(b"Ex")
            if _recv_exactly(sock, 1) != b"x":
                raise RuntimeError("the echo was wrong")
            times.append((time.perf_counter() - t0) * 1000)
    return times


FORWARDERS = {"ours": ours, "ssh": ssh}
ROWS = (
    ("upload_mibs", "forward upload (client -> target)", "MiB/s"),
    ("download_mibs", "forward download (target -> client)", "MiB/s"),
    ("cpu_s_per_gib", "forwarder CPU per GiB carried", "s"),
    ("connect_median_ms", "forward connect + 1-byte echo, median", "ms"),
    ("connect_p95_ms", "forward connect + 1-byte echo, p95", "ms"),
    ("cpu_us_per_connect", "forwarder CPU per connect", "us"),
)
CONNECT_ROWS = ("connect_median_ms", "connect_p95_ms", "cpu_us_per_connect")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes and all their descendants (sshd forks a
    process per connection; our server, its keeper)."""
    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for process in [root, *root.children(recursive=True)]:
                times = process.cpu_times()
                total += times.user + times.system
        except psutil.Error:
            continue
    return total


def measure(name: str, target_port: int, size: int, connects: int) -> dict[str, float]:
    """Every row for one forwarder; the connect rows only when ``size`` is 0."""
    result: dict[str, float] = {}
    with FORWARDERS[name](target_port) as (port, pids):
        download(port, MiB)  # warm up (our client's imports, ssh's first channel)
        if size:
            before = cpu_seconds(pids)
            ups = [upload(port, size) for _ in range(2)]
            downs = [download(port, size) for _ in range(2)]
            cpu = cpu_seconds(pids) - before
            result["upload_mibs"], result["download_mibs"] = max(ups), max(downs)
            result["cpu_s_per_gib"] = cpu / (4 * size / (1 << 30))
        before = cpu_seconds(pids)
        times = sorted(connect_latency(port, connects))
        result["cpu_us_per_connect"] = (cpu_seconds(pids) - before) / connects * 1e6
    result["connect_median_ms"] = statistics.median(times)
    result["connect_p95_ms"] = times[int(0.95 * (len(times) - 1))]
    return result


def run(args: argparse.Namespace) -> int:
    size = 0 if args.connect_only else (64 if args.quick else args.mib) * MiB
    connects = args.connects or (20 if args.quick else 100)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in FORWARDERS}
    skipped: dict[str, str] = {}
    with target() as target_port:
        for rep in range(1, args.reps + 1):
            for name in FORWARDERS:
                if name in skipped:
                    continue
                try:
                    result = measure(name, target_port, size, connects)
                except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                    skipped[name] = str(exc)
                    print(f"{name}: skipped: {exc}", file=sys.stderr)
                    continue
                runs[name].append(result)
                shown = " ".join(f"{k}={v:.4g}" for k, v in result.items())
                print(f"[{rep}/{args.reps}] {name:<5} {shown}", file=sys.stderr, flush=True)
    keys = [key for key, _, _ in ROWS if size or key in CONNECT_ROWS]
    medians = {
        name: {key: statistics.median(r[key] for r in results) for key in keys}
        for name, results in runs.items()
        if results
    }
    print(f"\nport forwarding, {size // MiB} MiB per transfer, {connects} connects, median of "
          f"{args.reps} (best of 2 transfers each)")  # fmt: skip
    print(f"{'metric':<42} {'ours':>10} {'ssh -L':>10} {'ours/ssh':>9}")
    for key, label, unit in ROWS:
        if key not in keys:
            continue
        mine, theirs = medians.get("ours", {}).get(key), medians.get("ssh", {}).get(key)
        ratio = f"{mine / theirs:.2f}x" if mine and theirs else "-"
        print(f"{label + ' (' + unit + ')':<42} {report.fmt(mine):>10} {report.fmt(theirs):>10} "
              f"{ratio:>9}")  # fmt: skip
    for name, why in skipped.items():
        print(f"{name}: skipped: {why}")
    payload = {
        "host": report.host_info(),
        "size_mib": size // MiB,
        "connects": connects,
        "reps": args.reps,
        "medians": medians,
        "runs": runs,
        "skipped": skipped,
        "ssh": _ssh_version(),
    }
    report.write_json(args.out, payload)
    return 0


def _ssh_version() -> str:
    try:
        done = subprocess.run(["ssh", "-V"], capture_output=True, text=True, check=False)
    except OSError:
        return ""
    return done.stderr.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.forward", description=__doc__)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--mib", type=int, default=512, help="MiB per transfer (default 512)")
    parser.add_argument("--quick", action="store_true", help="64 MiB, 20 connects")
    parser.add_argument(
        "--connect-only", action="store_true", help="the connect rows only (no transfers)"
    )
    parser.add_argument("--connects", type=int, default=0, help="connects per repetition")
    parser.add_argument("--out", type=Path, default=RESULTS / "forward-latest.json")
    parser.add_argument("--target", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.target:
        listener = socket.create_server(("127.0.0.1", 0))
        print(listener.getsockname()[1], flush=True)
        _serve_target(listener)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
