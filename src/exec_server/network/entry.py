"""The first program of a proxied child, run inside its network namespace.

It binds the proxy ports on the namespace's loopback, hands the listening sockets to the
server over the Unix socket named on its command line (``SCM_RIGHTS``), waits for the
server's go-ahead, and execs the command. The server then accepts on those sockets itself:
nothing relays bytes inside the sandbox, and nothing else in the namespace reaches out.

Run as ``python -I -S -c <this file's source> SOCKET LC_CTYPE PORT... -- COMMAND...``
(a ``PORT`` is ``tcp:N``, listened on, or ``udp:N``, only bound):
standard library only, no imports of this package (the sandbox may not show it).
``LC_CTYPE`` is ``=VALUE`` or ``-`` (unset): the child's own, restored before the exec, since
Python's start-up may have coerced it (PEP 538).
"""

import os
import socket
import sys

READY = b"K"
"""What the server sends once it serves the sockets."""


def main(argv: list[str]) -> int:
    """Bind, hand over, exec; an exit status when something fails before the exec."""
    separator = argv.index("--")
    channel_path, lc_ctype = argv[1], argv[2]
    ports = [spec.split(":") for spec in argv[3:separator]]
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
        channel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        channel.connect(channel_path)
        socket.send_fds(channel, [b"L"], [listener.fileno() for listener in listeners])
        if channel.recv(1) != READY:
            raise OSError("the server did not start the proxy")
        channel.close()
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
