"""Signals on the wire: the reference's ``interrupt``, any signal's name (with or without
``SIG``, in any case), or its number (Part A §A1; names and numbers are ours)."""

from __future__ import annotations

import signal

INTERRUPT = "interrupt"


def parse_signal(value: str | int) -> signal.Signals | None:
    """The signal a wire value stands for, or None when it names none."""
    if isinstance(value, int) or value.isdigit():
        try:
            return signal.Signals(int(value))
        except ValueError:
            return None
    if value == INTERRUPT:
        return signal.SIGINT
    name = value.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return signal.Signals[name]
    except KeyError:
        return None


def signal_name(signum: int | None) -> str | None:
    """``SIGKILL`` for 9; None for None."""
    if signum is None:
        return None
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"SIG{signum}"
