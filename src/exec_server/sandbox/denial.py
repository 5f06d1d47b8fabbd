"""``sandboxDenied`` on ``process/exited`` and ``process/read``: the reference's heuristic.

There is no certain signal that a command failed because of the sandbox, so the reference
guesses (codex-rs sandboxing ``is_likely_sandbox_denied``, confirmed against the 0.169
binary, docs/sandbox.md): never for an unsandboxed process or exit code 0; yes when the
output names a typical denial (case-insensitive); no for the shell's own failure codes 2, 126
and 127 without such words; otherwise yes only for 159 (128 + SIGSYS, a seccomp kill).

The output examined is what the process still retains (the reference scans its 1 MiB output
log: a keyword followed by more than 1 MiB of output no longer counts), stdout, stderr and
PTY alike, joined so that a keyword split across two chunks is still found.
"""

from __future__ import annotations

from collections.abc import Iterable

DENIAL_KEYWORDS: tuple[bytes, ...] = (
    b"operation not permitted",
    b"permission denied",
    b"read-only file system",
    b"seccomp",
    b"sandbox",
    b"landlock",
    b"failed to write file",
)

SHELL_FAILURE_CODES = frozenset({2, 126, 127})
"""Builtin misuse, not executable, not found: ordinary failures unless the output says more."""

SIGSYS_EXIT_CODE = 128 + 31
"""A child killed by SIGSYS (a seccomp filter's kill), as an exit code."""


def is_sandbox_denied(sandboxed: bool, exit_code: int | None, output: Iterable[bytes]) -> bool:
    """Whether to report ``sandboxDenied: true`` for a process that exited with ``exit_code``.

    ``output`` is the retained output chunks, oldest first. A process still running
    (``exit_code`` None) is never reported denied.
    """
    if not sandboxed or exit_code is None or exit_code == 0:
        return False
    if mentions_denial(output):
        return True
    if exit_code in SHELL_FAILURE_CODES:
        return False
    return exit_code == SIGSYS_EXIT_CODE


def mentions_denial(output: Iterable[bytes]) -> bool:
    """Whether the output contains one of the denial keywords, in any letter case."""
    text = b"".join(output).lower()
    return any(keyword in text for keyword in DENIAL_KEYWORDS)
