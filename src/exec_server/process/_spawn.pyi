from collections.abc import Sequence

def spawn(
    candidates: Sequence[bytes],
    argv: Sequence[bytes],
    envp: Sequence[bytes],
    cwd: bytes | None,
    stdin_fd: int,
    stdout_fd: int,
    stderr_fd: int,
    ctty: bool,
    pdeathsig: int,
    subreaper: bool,
    keep_fd: int = -1,
    cgroup_fd: int = -1,
    ignored: int = 0,
    nofile: int = -1,
    /,
) -> int: ...
def become_subreaper() -> bool: ...
