"""PTY output as a person sees it through the CLI (issue 20 item 13): ``exec-server run -t``
printing a stream of text lines to a file, against reading the same command's output from
a local PTY on this machine, and ``exec-server run`` (pipes) beside them.

    .venv/bin/python -m bench.cli_pty [--mib 100] [--reps 5]

Each repetition runs the three in turn (local, run -t, run); the table gives the medians in
MiB/s of the command's output and the ratio of ``run -t`` to the local PTY. The server is
ours, started once on loopback; the CLI's own start-up (about 0.3 s on an idle machine) is
included, as a person pays it.
"""

from __future__ import annotations

import argparse
import os
import pty
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "exec_server"]
LINE = "abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz"


def command(mib: int) -> list[str]:
    return ["sh", "-c", f"yes {LINE} | head -c {mib * 1024 * 1024}"]


def local_pty(argv: list[str]) -> float:
    """Seconds to read everything ``argv`` writes to a local PTY, to its end."""
    began = time.monotonic()
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.execvp(argv[0], argv)
    while True:
        try:
            if not os.read(fd, 65536):
                break
        except OSError:  # EIO: the child's side closed
            break
    os.close(fd)
    os.waitpid(pid, 0)
    return time.monotonic() - began


def through_cli(url: str, argv: list[str], *flags: str) -> float:
    began = time.monotonic()
    with open(os.devnull, "wb") as sink:
        subprocess.run(
            [*CLI, "run", "--url", url, *flags, "--", *argv],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            check=True,
            cwd=REPO,
        )
    return time.monotonic() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=100, help="output per run (default 100)")
    parser.add_argument("--reps", type=int, default=5, help="repetitions (default 5)")
    args = parser.parse_args()
    server = subprocess.Popen(
        [*CLI, "--listen", "ws://127.0.0.1:0"], stdout=subprocess.PIPE, cwd=REPO
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().decode().strip()
        argv = command(args.mib)
        times: dict[str, list[float]] = {"local PTY": [], "run -t": [], "run (pipes)": []}
        for _ in range(args.reps):
            times["local PTY"].append(local_pty(argv))
            times["run -t"].append(through_cli(url, argv, "-t"))
            times["run (pipes)"].append(through_cli(url, argv))
    finally:
        server.terminate()
        server.wait()
    rates = {name: args.mib / statistics.median(spent) for name, spent in times.items()}
    print(f"{args.mib} MiB of text lines, median of {args.reps}")
    print("| path | MiB/s |")
    print("|---|---|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:.1f} |")
    print(f"run -t / local PTY: {rates['run -t'] / rates['local PTY']:.2f}")


if __name__ == "__main__":
    main()
