"""Signal names on the wire: the reference's ``interrupt`` plus plain signal names (Part A §A1)."""

from __future__ import annotations

import signal

SIGNALS_BY_NAME: dict[str, signal.Signals] = {
    "interrupt": signal.SIGINT,
    **{
        name: getattr(signal, "SIG" + name)
        for name in ("TERM", "HUP", "KILL", "INT", "QUIT", "USR1", "USR2", "STOP", "CONT", "WINCH")
    },
}
"""``process/signal`` values, compared without case and with or without ``SIG``."""


def parse_signal(name: str) -> signal.Signals | None:
    """The signal a wire name stands for, or None when it names none."""
    key = name if name == "interrupt" else name.upper().removeprefix("SIG")
    return SIGNALS_BY_NAME.get(key)
