"""A stdio executor that records: ``python stdio_recorder.py LOG -- COMMAND...`` runs COMMAND
(an executor over stdio), passes codex's lines to it and its lines back unchanged, and
appends each line to LOG as ``{"from": "client"|"server", "message": ...}``.

codex starts it as the ``program`` of an ``environments.toml`` environment; the log is the
wire conversation, kept in ``tests/codex/recordings/`` as a contract when it is the reference's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from typing import IO


def _pump(
    source: IO[bytes], sink: IO[bytes], log: IO[str], side: str, lock: threading.Lock
) -> None:
    for line in source:
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
    log_path, separator, *command = argv[1:]
    assert separator == "--", "usage: stdio_recorder.py LOG -- COMMAND..."
    server = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert server.stdin is not None and server.stdout is not None
    lock = threading.Lock()
    with open(log_path, "a", encoding="utf-8") as log:
        inbound = threading.Thread(
            target=_pump, args=(sys.stdin.buffer, server.stdin, log, "client", lock), daemon=True
        )
        inbound.start()
        _pump(server.stdout, sys.stdout.buffer, log, "server", lock)
    return server.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
