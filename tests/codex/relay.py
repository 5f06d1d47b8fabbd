"""A stdio executor that records: codex starts ``relay.py LOG -- COMMAND...``, which starts
the real executor (``COMMAND``, over stdio), passes every JSON-RPC line both ways unchanged
and appends each to ``LOG`` as ``{"from": "codex"|"executor", "message": ...}``.

It lets a scenario keep what codex and an executor said to each other as a contract.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any


def recording_command(
    command: list[str], log: Path, env: Mapping[str, str] | None = None
) -> list[str]:
    """The command line codex runs for a stdio executor ``command`` recorded into ``log``,
    with ``env`` added to the executor's environment only."""
    assignments = [f"{name}={value}" for name, value in (env or {}).items()]
    return ["env", *assignments, sys.executable, __file__, str(log), "--", *command]


def read_log(log: Path, replacements: Mapping[str, str]) -> list[dict[str, Any]]:
    """A recording's records, each string ``key`` of ``replacements`` written as its value
    (in order), so recordings of runs in other folders compare."""
    records = []
    for line in log.read_text().splitlines():
        for old, new in replacements.items():
            line = line.replace(old, new)
        records.append(json.loads(line))
    return records


def sent(records: list[dict[str, Any]], method: str) -> list[dict[str, Any]]:
    """The params of each ``method`` request codex sent, in order."""
    return [
        r["message"]["params"]
        for r in records
        if r["from"] == "codex" and r["message"].get("method") == method
    ]


def _pump(
    source: IO[bytes], sink: IO[bytes], side: str, log: IO[str], lock: threading.Lock
) -> None:
    for line in iter(source.readline, b""):
        sink.write(line)
        sink.flush()
        try:
            message = json.loads(line)
        except ValueError:
            message = line.decode(errors="replace")
        with lock:
            log.write(json.dumps({"from": side, "message": message}) + "\n")
            log.flush()
    sink.close()


def main(argv: list[str]) -> int:
    log_path, separator, *command = argv
    assert separator == "--" and command, "usage: relay.py LOG -- COMMAND..."
    executor = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert executor.stdin is not None and executor.stdout is not None
    lock = threading.Lock()
    with open(log_path, "a", encoding="utf-8") as log:
        to_executor = threading.Thread(
            target=_pump, args=(sys.stdin.buffer, executor.stdin, "codex", log, lock), daemon=True
        )
        to_executor.start()
        _pump(executor.stdout, sys.stdout.buffer, "executor", log, lock)
    return executor.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
