"""The seccomp program's shape, for every architecture it knows (what it does is tested
end to end, under real bubblewrap, in test_sandbox_escapes.py and test_sandbox_bwrap.py)."""

from __future__ import annotations

import struct

import pytest

from exec_server.sandbox import seccomp


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
@pytest.mark.parametrize("network", [True, False])
def test_the_program_checks_the_arch_first_and_ends_in_deny_and_kill(
    arch: str, network: bool
) -> None:
    code = seccomp.program(network, arch)
    assert len(code) % 8 == 0 and len(code) // 8 < 64
    instructions = [struct.unpack("=HBBI", code[i : i + 8]) for i in range(0, len(code), 8)]
    assert instructions[0] == (0x20, 0, 0, 4)  # load seccomp_data.arch
    assert instructions[1][0] == 0x15  # compare it with the native audit arch
    assert instructions[-2] == (0x06, 0, 0, 0x00050001)  # return EPERM
    assert instructions[-1] == (0x06, 0, 0, 0x80000000)  # kill the process
    # Every jump lands inside the program
    for index, (opcode, then, otherwise, _) in enumerate(instructions):
        if opcode & 0x07 == 0x05:
            assert index + 1 + max(then, otherwise) < len(instructions)


def test_a_restricted_network_adds_rules() -> None:
    assert len(seccomp.program(False, "x86_64")) > len(seccomp.program(True, "x86_64"))


def test_an_unknown_arch_has_no_program() -> None:
    with pytest.raises(ValueError, match="no seccomp rules"):
        seccomp.program(False, "mips")
