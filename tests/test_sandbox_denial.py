"""``sandboxDenied``: the reference 0.169's answers for the same exits and outputs
(recorded with its exec-server, docs/sandbox.md "sandboxDenied")."""

from __future__ import annotations

import pytest

from exec_server.sandbox.denial import is_sandbox_denied

MIB = 1024 * 1024


@pytest.mark.parametrize(
    ("exit_code", "output", "denied"),
    [
        (1, [b"x: Permission denied\n"], True),
        (1, [b"hello\n"], False),
        (3, [], False),
        (159, [], True),  # 128 + SIGSYS
        (0, [b"Operation not permitted\n"], False),
        (2, [b"read-only file system\n"], True),
        (126, [b"sandbox\n"], True),
        (127, [], False),
        (1, [b"SANDBOX\n"], True),
        (1, [b"failed to write file\n"], True),
        (1, [b"landlock\n"], True),
        (1, [b"seccomp\n"], True),
        (137, [], False),
        (143, [], False),
        (1, [b"...permis", b"sion denied..."], True),  # split across chunks
        (None, [b"permission denied"], False),  # still running
    ],
)
def test_reference_answers(exit_code: int | None, output: list[bytes], denied: bool) -> None:
    assert is_sandbox_denied(True, exit_code, output) is denied


def test_never_for_an_unsandboxed_process() -> None:
    assert not is_sandbox_denied(False, 1, [b"Permission denied\n"])
    assert not is_sandbox_denied(False, 159, [])


def test_only_retained_output_counts() -> None:
    """The reference forgets a keyword once more than its 1 MiB log has followed it; given
    what the output log still retains, the answer is the same."""
    retained_tail = [b"a" * MIB]
    assert not is_sandbox_denied(True, 1, retained_tail)
    assert is_sandbox_denied(True, 1, [*retained_tail, b"permission denied\n"])
