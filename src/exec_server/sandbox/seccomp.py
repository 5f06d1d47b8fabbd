"""The seccomp filter every sandboxed command runs under, as a classic BPF program that
bubblewrap loads with ``--seccomp FD`` just before it executes the command.

What it refuses (``EPERM``, as the reference does, so codex's denial heuristics fire):

* always: ``io_uring_setup``/``enter``/``register`` (io_uring can open and connect sockets
  without the syscalls below), the terminal-injection ioctls ``TIOCSTI`` and ``TIOCLINUX``,
  ``AF_VSOCK`` sockets (a path to the host of a VM);
* with the network restricted, every socket that could leave the sandbox: ``socket`` and
  ``socketpair`` of any family but ``AF_UNIX``, ``AF_UNIX`` ones other than stream and
  seqpacket (a datagram one, also made as ``SOCK_RAW``, reaches any datagram socket by path
  with ``sendmsg``: journald, ``NOTIFY_SOCKET``),
  ``connect``, ``bind``, ``listen``, ``accept``/``accept4``, and ``sendto`` with an address.
  Stream and seqpacket socket pairs, pipes and every other descriptor still work.

A syscall of another ABI (i386 via ``int 0x80``, x32) kills the process: its numbers mean
other things, and the rules above are written for the native ABI only.

The program is built once per (architecture, network) and kept; :func:`filter_fd` puts it
in a fresh in-memory file for each launch, since bubblewrap reads its descriptor to the end.
"""

from __future__ import annotations

import errno
import functools
import os
import platform
import struct
import sys
from dataclasses import dataclass

# Classic BPF opcodes (linux/filter.h) and seccomp return values (linux/seccomp.h).
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_AND_K = 0x54
_RET_K = 0x06
_RET_ALLOW = 0x7FFF0000
_RET_EPERM = 0x00050000 | errno.EPERM
_RET_KILL_PROCESS = 0x80000000

# struct seccomp_data: nr, arch, instruction_pointer, then six 64-bit arguments.
_NR = 0
_ARCH = 4


_LITTLE_ENDIAN = sys.byteorder == "little"


def _arg_low(index: int) -> int:
    """Offset of the low 32 bits of argument ``index`` (arguments are native 64-bit)."""
    return 16 + 8 * index + (0 if _LITTLE_ENDIAN else 4)


def _arg_high(index: int) -> int:
    return 16 + 8 * index + (4 if _LITTLE_ENDIAN else 0)


_AF_UNIX = 1
_AF_VSOCK = 40
_SOCK_STREAM = 1
_SOCK_SEQPACKET = 5
_SOCK_TYPE_MASK = 0xF
_TIOCSTI = 0x5412
_TIOCLINUX = 0x541C
_X32_SYSCALL_BIT = 0x40000000


@dataclass(frozen=True, slots=True)
class _Arch:
    audit: int
    syscalls: dict[str, int]
    x32_bit: bool = False


_ARCHES = {
    "x86_64": _Arch(
        0xC000003E,
        {
            "ioctl": 16,
            "socket": 41,
            "connect": 42,
            "accept": 43,
            "sendto": 44,
            "bind": 49,
            "listen": 50,
            "socketpair": 53,
            "accept4": 288,
            "io_uring_setup": 425,
            "io_uring_enter": 426,
            "io_uring_register": 427,
        },
        x32_bit=True,
    ),
    "aarch64": _Arch(
        0xC00000B7,
        {
            "ioctl": 29,
            "socket": 198,
            "socketpair": 199,
            "bind": 200,
            "listen": 201,
            "accept": 202,
            "connect": 203,
            "sendto": 206,
            "accept4": 242,
            "io_uring_setup": 425,
            "io_uring_enter": 426,
            "io_uring_register": 427,
        },
    ),
}

_ALWAYS_DENIED = ("io_uring_setup", "io_uring_enter", "io_uring_register")
_DENIED_WITHOUT_NETWORK = ("connect", "bind", "listen", "accept", "accept4")


class _Program:
    """A tiny assembler: instructions with symbolic jump targets, resolved at the end."""

    def __init__(self) -> None:
        self._code: list[tuple[int, str | int, str | int, int]] = []
        self._labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        self._labels[name] = len(self._code)

    def load(self, offset: int) -> None:
        self._code.append((_LD_W_ABS, 0, 0, offset))

    def and_(self, mask: int) -> None:
        self._code.append((_AND_K, 0, 0, mask))

    def ret(self, value: int) -> None:
        self._code.append((_RET_K, 0, 0, value))

    def jump_if(self, op: int, value: int, then: str | int, otherwise: str | int = 0) -> None:
        """``then``/``otherwise``: a label, or 0 for the next instruction."""
        self._code.append((op, then, otherwise, value))

    def assemble(self) -> bytes:
        out = bytearray()
        for index, (code, then, otherwise, k) in enumerate(self._code):
            out += struct.pack(
                "=HBBI", code, self._offset(index, then), self._offset(index, otherwise), k
            )
        return bytes(out)

    def _offset(self, index: int, target: str | int) -> int:
        if isinstance(target, int):
            return target
        offset = self._labels[target] - index - 1
        if not 0 <= offset <= 255:
            raise ValueError(f"seccomp jump to {target} out of range")
        return offset


def native_arch() -> str | None:
    """This machine's architecture when the filter knows its syscall numbers, else None."""
    machine = platform.machine()
    return machine if machine in _ARCHES else None


@functools.cache
def program(network: bool, arch: str | None = None, *, unix_sockets: bool = True) -> bytes:
    """The filter for a sandbox whose network is allowed (``network``) or restricted, as
    the raw ``struct sock_filter`` array bubblewrap reads. ValueError for an unknown arch.

    ``unix_sockets=False`` (a managed network's child: IP sockets reach only its proxy, in
    a namespace of its own) also refuses ``socket(AF_UNIX, ...)`` and ``AF_UNIX`` datagram
    pairs: a socket to connect to a path outside cannot be made; stream pairs still can."""
    name = arch or native_arch()
    if name is None or name not in _ARCHES:
        raise ValueError(f"no seccomp rules for architecture {platform.machine()}")
    spec = _ARCHES[name]
    nr = spec.syscalls
    p = _Program()
    p.load(_ARCH)
    p.jump_if(_JEQ_K, spec.audit, 0, "kill")
    p.load(_NR)
    if spec.x32_bit:
        p.jump_if(_JGE_K, _X32_SYSCALL_BIT, "kill")
    denied = list(_ALWAYS_DENIED) + ([] if network else list(_DENIED_WITHOUT_NETWORK))
    for name_ in denied:
        p.jump_if(_JEQ_K, nr[name_], "deny")
    p.jump_if(_JEQ_K, nr["ioctl"], "ioctl")
    p.jump_if(_JEQ_K, nr["socket"], "socket" if unix_sockets else "socket_no_unix")
    p.jump_if(_JEQ_K, nr["socketpair"], "socket" if unix_sockets else "socketpair_no_unix")
    if not network:
        p.jump_if(_JEQ_K, nr["sendto"], "sendto")
    p.ret(_RET_ALLOW)

    p.label("ioctl")  # the request is an unsigned int: compare the low half only
    p.load(_arg_low(1))
    p.jump_if(_JEQ_K, _TIOCSTI, "deny")
    p.jump_if(_JEQ_K, _TIOCLINUX, "deny")
    p.ret(_RET_ALLOW)

    if not unix_sockets:
        p.label("socket_no_unix")
        p.load(_arg_low(0))
        p.jump_if(_JEQ_K, _AF_UNIX, "deny", "socket")
        p.label("socketpair_no_unix")  # a pair is connected to itself: streams only
        p.load(_arg_low(0))
        p.jump_if(_JEQ_K, _AF_UNIX, 0, "socket")
        _stream_types_only(p, then="socket")

    p.label("socket")  # socket(domain, type, ...) and socketpair(domain, type, ...)
    p.load(_arg_low(0))
    p.jump_if(_JEQ_K, _AF_VSOCK, "deny")
    if not network:
        p.jump_if(_JEQ_K, _AF_UNIX, 0, "deny")
        _stream_types_only(p, then="allow")
    p.label("allow")
    p.ret(_RET_ALLOW)

    if not network:
        p.label("sendto")  # sendto(fd, buf, len, flags, dest_addr, addrlen): no dest_addr
        p.load(_arg_low(4))
        p.jump_if(_JEQ_K, 0, 0, "deny")
        p.load(_arg_high(4))
        p.jump_if(_JEQ_K, 0, 0, "deny")
        p.ret(_RET_ALLOW)

    p.label("deny")
    p.ret(_RET_EPERM)
    p.label("kill")
    p.ret(_RET_KILL_PROCESS)
    return p.assemble()


def _stream_types_only(p: _Program, then: str) -> None:
    """An ``AF_UNIX`` socket's type (argument 1, without ``SOCK_NONBLOCK``/``SOCK_CLOEXEC``):
    on to ``then`` for a stream or seqpacket one, else deny. An allow list: Linux turns an
    ``AF_UNIX`` ``SOCK_RAW`` into ``SOCK_DGRAM``, whose ``sendmsg`` reaches any datagram
    socket by path."""
    p.load(_arg_low(1))
    p.and_(_SOCK_TYPE_MASK)
    p.jump_if(_JEQ_K, _SOCK_STREAM, then)
    p.jump_if(_JEQ_K, _SOCK_SEQPACKET, then, "deny")


def filter_fd(network: bool, *, unix_sockets: bool = True) -> int:
    """A new close-on-exec descriptor holding the program, positioned at its start; the
    caller passes it to bubblewrap (``--seccomp N``), or to a managed network's entry, and
    closes it once the child is spawned (the reader reads it to the end, so each launch
    needs its own)."""
    data = program(network, unix_sockets=unix_sockets)
    fd = os.memfd_create("exec-server-seccomp", os.MFD_CLOEXEC)
    if fd < 3:  # a server started with stdio closed: keep the child's 0-2 apart
        import fcntl

        moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
        os.close(fd)
        fd = moved
    try:
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def available() -> bool:
    """Whether a filter can be built for this machine."""
    return native_arch() is not None and hasattr(os, "memfd_create")
