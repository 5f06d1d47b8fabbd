"""The first program of a proxied child, run inside its network namespace.

It binds the proxy ports on the namespace's loopback, hands the listening sockets to the
server over the Unix socket named on its command line (``SCM_RIGHTS``), waits for the
server's go-ahead, and execs the command. The server then accepts on those sockets itself:
nothing relays bytes inside the sandbox, and nothing else in the namespace reaches out.

Run as ``python -I -S -c <this file's source> SOCKET LC_CTYPE PORT... -- COMMAND...``
(a ``PORT`` is ``tcp:N``, listened on, or ``udp:N``, only bound; ``seccomp:FD`` names the
sandbox's seccomp program, loaded once the sockets are handed over and before the exec,
since it refuses the Unix socket the hand-over needs; failing to load it stops the start):
standard library only, no imports of this package (the sandbox may not show it).
``LC_CTYPE`` is ``=VALUE`` or ``-`` (unset): the child's own, restored before the exec, since
Python's start-up may have coerced it (PEP 538).
"""

import os
import socket
import sys

READY = b"K"
"""What the server sends once it serves the sockets."""


def _load_filter(fd: int) -> None:
    """Install the seccomp program read from ``fd`` on this process (and what it execs)."""
    import ctypes

    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    program = b"".join(chunks)

    class Program(ctypes.Structure):  # struct sock_fprog
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]

    libc = ctypes.CDLL(None, use_errno=True)
    code = ctypes.create_string_buffer(program, len(program))
    fprog = Program(len(program) // 8, ctypes.cast(code, ctypes.c_char_p))
    pr_set_no_new_privs, pr_set_seccomp, seccomp_mode_filter = 38, 22, 2
    if libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "cannot set no_new_privs for the seccomp filter")
    if libc.prctl(pr_set_seccomp, seccomp_mode_filter, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "cannot load the seccomp filter")


def _hand_over(channel_path: str, listeners: list[socket.socket]) -> None:
    """Give the server the listening sockets and wait for its go-ahead."""
    gone = "the server no longer takes the hand-over of the proxy sockets (it waited too long"
    channel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        channel.connect(channel_path)
        socket.send_fds(channel, [b"L"], [listener.fileno() for listener in listeners])
        answer = channel.recv(1)
    except OSError as error:  # the socket removed, or closed with this connection queued
        raise OSError(f"{gone} for it): {error}") from None
    finally:
        channel.close()
    if answer != READY:
        raise OSError(f"{gone}, or refused the sockets)")


def main(argv: list[str]) -> int:
    """Bind, hand over, exec; an exit status when something fails before the exec."""
    separator = argv.index("--")
    channel_path, lc_ctype = argv[1], argv[2]
    specs = [spec.split(":") for spec in argv[3:separator]]
    ports = [(kind, value) for kind, value in specs if kind != "seccomp"]
    filters = [int(value) for kind, value in specs if kind == "seccomp"]
    command = argv[separator + 1 :]
    listeners = []
    try:
        for kind, port in ports:
            udp = kind == "udp"
            listener = socket.socket(
                socket.AF_INET, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
            )
            listener.bind(("127.0.0.1", int(port)))
            if not udp:
                listener.listen(1024)
            listeners.append(listener)
        _hand_over(channel_path, listeners)
        for fd in filters:
            _load_filter(fd)
    except OSError as error:
        sys.stderr.write(f"exec-server: cannot set up the managed network proxy: {error}\n")
        return 126
    for listener in listeners:
        listener.close()
    if lc_ctype.startswith("="):
        os.environ["LC_CTYPE"] = lc_ctype[1:]
    else:
        os.environ.pop("LC_CTYPE", None)
    try:
        os.execvp(command[0], command)
    except OSError as error:
        sys.stderr.write(f"{command[0]}: {error.strerror}\n")
        return 127 if isinstance(error, FileNotFoundError) else 126
    return 0  # pragma: no cover - execvp does not return


if __name__ == "__main__":
    sys.exit(main(sys.argv))
