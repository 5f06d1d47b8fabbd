"""The workloads of issue 4. Each runs against one freshly started server and returns metrics.

A workload gets a :class:`~bench.servers.RunningServer` (client connected and initialized) and
the :class:`Sizes` of this run, and returns a flat ``{metric: value}`` dict; keys are described
in :mod:`bench.report`. Timing uses ``time.perf_counter``; resource use comes from the probe.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from bench.client import ProcWatch, b64decode
from bench.probe import PeakRss
from bench.servers import RunningServer, ServerSpec, spawn_stdio

MiB = 1 << 20
GiB = 1 << 30
STEP_TIMEOUT = 30.0  # one process or one request; a workload as a whole gets more
STREAM_TIMEOUT = 300.0


@dataclass(frozen=True)
class Sizes:
    spawn_n: int = 200
    rtt_n: int = 200
    stream_bytes: int = 256 * MiB
    fanout_n: int = 100
    fanout_bytes: int = 1 * MiB
    poll_n: int = 1000
    poll_batches: int = 5
    hol_wait_ms: int = 2000
    idle_n: int = 500
    startup_n: int = 20
    sandbox_n: int = 100
    proxy_n: int = 200
    proxy_bytes: int = 256 * MiB

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            spawn_n=50,
            rtt_n=50,
            stream_bytes=32 * MiB,
            fanout_n=20,
            poll_n=200,
            poll_batches=1,
            hol_wait_ms=1000,
            idle_n=100,
            startup_n=5,
            sandbox_n=30,
            proxy_n=50,
            proxy_bytes=32 * MiB,
        )


Metrics = dict[str, float]
Workload = Callable[[RunningServer, Sizes], Awaitable[Metrics]]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, round(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


async def _wait(fut: asyncio.Future[Any], what: str, timeout: float = STEP_TIMEOUT) -> None:
    try:
        await asyncio.wait_for(asyncio.shield(fut), timeout)
    except TimeoutError:
        raise TimeoutError(f"{what} did not finish in {timeout:g}s") from None


async def _finish(
    server: RunningServer, pid: str, watch: ProcWatch, what: str, timeout: float = STEP_TIMEOUT
) -> None:
    """Wait for a process to be closed, or terminate it and fail."""
    try:
        await _wait(watch.closed, what, timeout)
    except TimeoutError:
        await server.client.terminate(pid)
        raise


# -- 1. spawn latency ------------------------------------------------------------------------


async def spawn(server: RunningServer, sizes: Sizes, *, prefix: str = "s") -> Metrics:
    """Sequential `true`: process/start sent → process/closed received.

    Process ids are ``prefix`` and a number: a closed id stays taken for the retention time.
    """
    client = server.client
    samples: list[float] = []
    failed = 0
    for i in range(sizes.spawn_n):
        pid = f"{prefix}{i}"
        w = client.watch(pid)
        t0 = time.perf_counter()
        reply = await client.start(pid, ["true"])
        await _finish(server, pid, w, "true")
        samples.append(time.perf_counter() - t0)
        await reply
        failed += w.exit_code != 0
        client.unwatch(pid)
    return {
        "spawn_median_ms": statistics.median(samples) * 1e3,
        "spawn_p95_ms": percentile(samples, 95) * 1e3,
        "spawn_nonzero_exits": failed,
    }


# -- 2. interactive round trip ---------------------------------------------------------------


class _Echo:
    """Collects PTY output and resolves a future once a marker has been seen ``count`` times."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.marker = b""
        self.count = 1
        self.fut: asyncio.Future[float] | None = None

    def expect(self, marker: bytes, count: int, *, clear: bool = True) -> asyncio.Future[float]:
        if clear:
            self.buf.clear()
        self.marker = marker
        self.count = count
        self.fut = asyncio.get_running_loop().create_future()
        return self.fut

    def on_output(self, _w: ProcWatch, chunk: str) -> None:
        self.buf += b64decode(chunk)
        fut = self.fut
        if fut is not None and not fut.done() and self.buf.count(self.marker) >= self.count:
            fut.set_result(time.perf_counter())


async def rtt(server: RunningServer, sizes: Sizes) -> Metrics:
    """PTY `cat`: a line written → the first notification carrying its echo."""
    client = server.client
    echo = _Echo()
    w = client.watch("cat")
    w.on_output = echo.on_output
    await (await client.start("cat", ["cat"], tty=True))

    # Warm up, and learn how many copies of a line come back (tty echo + cat's own copy).
    seen = echo.expect(b"warmup", 1)
    await (await client.write("cat", b"warmup\n"))
    await _wait(seen, "warm-up echo")
    await asyncio.sleep(0.2)
    copies = max(1, echo.buf.count(b"warmup"))

    samples: list[float] = []
    for i in range(sizes.rtt_n):
        marker = b"x%06d" % i
        first = echo.expect(marker, 1)
        t0 = time.perf_counter()
        reply = await client.write("cat", marker + b"\n")
        t1 = await asyncio.wait_for(asyncio.shield(first), STEP_TIMEOUT)
        samples.append(t1 - t0)
        if copies > 1:  # let cat's copy go by so it is not taken for the next echo
            all_copies = echo.expect(marker, copies, clear=False)
            if echo.buf.count(marker) < copies:
                await _wait(all_copies, "cat output")
        await reply
    await client.terminate("cat")
    await _wait(w.closed, "cat after terminate")
    return {
        "rtt_median_ms": statistics.median(samples) * 1e3,
        "rtt_p95_ms": percentile(samples, 95) * 1e3,
    }


# -- 3. throughput, and 8. CPU cost per GiB ----------------------------------------------------


async def _stream(server: RunningServer, sizes: Sizes, tty: bool) -> tuple[float, float, int]:
    """One child writes ``stream_bytes``; return (seconds, server CPU seconds, bytes received)."""
    client = server.client
    pid = "pty" if tty else "pipe"
    w = client.watch(pid)
    argv = ["head", "-c", str(sizes.stream_bytes), "/dev/zero"]
    cpu0 = server.probe.cpu_seconds()
    t0 = time.perf_counter()
    reply = await client.start(pid, argv, tty=tty)
    await _finish(server, pid, w, "stream", STREAM_TIMEOUT)
    elapsed = time.perf_counter() - t0
    cpu = server.probe.cpu_seconds() - cpu0
    await reply
    return elapsed, cpu, w.nbytes


async def throughput(server: RunningServer, sizes: Sizes) -> Metrics:
    out: Metrics = {}
    for mode, tty in (("pipe", False), ("pty", True)):
        client_cpu0 = time.process_time()
        elapsed, cpu, nbytes = await _stream(server, sizes, tty)
        client_cpu = time.process_time() - client_cpu0
        if nbytes < sizes.stream_bytes * 0.99:
            raise RuntimeError(f"{mode}: received {nbytes} of {sizes.stream_bytes} bytes")
        out[f"throughput_{mode}_mibs"] = nbytes / MiB / elapsed
        out[f"cpu_{mode}_s_per_gib"] = cpu / (nbytes / GiB)
        out[f"client_cpu_{mode}_share"] = client_cpu / elapsed
    return out


# -- 4. fan-out --------------------------------------------------------------------------------


async def fanout(server: RunningServer, sizes: Sizes) -> Metrics:
    """``fanout_n`` children at once, each writing ``fanout_bytes``: wall time and peak RSS."""
    client = server.client
    argv = ["head", "-c", str(sizes.fanout_bytes), "/dev/zero"]
    pids = [f"f{i}" for i in range(sizes.fanout_n)]
    watches = [client.watch(pid) for pid in pids]
    server.probe.refresh_helpers()
    with PeakRss(server.probe) as peak:
        t0 = time.perf_counter()
        replies = [await client.start(pid, argv) for pid in pids]
        await _wait(asyncio.gather(*(w.closed for w in watches)), "fan-out", STREAM_TIMEOUT)
        elapsed = time.perf_counter() - t0
    await asyncio.gather(*replies)
    total = sum(w.nbytes for w in watches)
    if total != sizes.fanout_n * sizes.fanout_bytes:
        raise RuntimeError(f"received {total} of {sizes.fanout_n * sizes.fanout_bytes} bytes")
    return {"fanout_wall_s": elapsed, "fanout_peak_rss_mib": peak.peak / MiB}


# -- 5. polling --------------------------------------------------------------------------------


async def poll(server: RunningServer, sizes: Sizes) -> Metrics:
    """Sequential `process/read` with waitMs 0 on a finished process that has a little output:
    requests/s over ``poll_n`` requests, the median of ``poll_batches`` batches."""
    client = server.client
    w = client.watch("p")
    reply = await client.start("p", ["echo", "hello"])
    await _finish(server, "p", w, "echo")
    await reply
    result = msgspec.json.decode(await (await client.read("p")))
    if not result.get("chunks"):
        raise RuntimeError(f"process/read returned no output: {result}")
    rates = []
    for _ in range(sizes.poll_batches):  # each batch is the 1,000 requests
        t0 = time.perf_counter()
        for _ in range(sizes.poll_n):
            await (await client.read("p"))
        rates.append(sizes.poll_n / (time.perf_counter() - t0))
    # One batch takes ~0.1 s, short enough for a neighbour on this shared VM to halve it;
    # the median of a few batches is what this server does, not what the machine did.
    return {"poll_rps": statistics.median(rates)}


# -- 6. head-of-line ---------------------------------------------------------------------------


async def hol(server: RunningServer, sizes: Sizes) -> Metrics:
    """While a `process/read` long-polls, how long does another (instant) request take?"""
    client = server.client
    w = client.watch("idle")
    await (await client.start("idle", ["sleep", "600"]))
    t_poll = time.perf_counter()
    long_poll = await client.read("idle", wait_ms=sizes.hol_wait_ms)
    await asyncio.sleep(0.1)  # the long poll is surely being served by now
    t0 = time.perf_counter()
    await asyncio.wait_for(await client.read("idle"), STEP_TIMEOUT + sizes.hol_wait_ms / 1e3)
    latency = time.perf_counter() - t0
    await asyncio.wait_for(long_poll, STEP_TIMEOUT + sizes.hol_wait_ms / 1e3)
    poll_time = time.perf_counter() - t_poll
    await (await client.terminate("idle"))
    await _wait(w.closed, "sleep after terminate")
    return {"hol_latency_ms": latency * 1e3, "hol_long_poll_ms": poll_time * 1e3}


# -- 7. memory with idle children --------------------------------------------------------------


async def memory(server: RunningServer, sizes: Sizes) -> Metrics:
    """Server RSS before and after starting ``idle_n`` `sleep` children that stay idle."""
    client = server.client
    await asyncio.sleep(0.2)
    base = server.probe.rss()
    replies = [await client.start(f"m{i}", ["sleep", "600"]) for i in range(sizes.idle_n)]
    await asyncio.wait_for(asyncio.gather(*replies), STREAM_TIMEOUT)
    await asyncio.sleep(1.0)  # let the server settle
    server.probe.refresh_helpers()
    rss = server.probe.rss()
    # No terminate: stopping the server kills every child at once, which is much faster.
    return {"rss_base_mib": base / MiB, "rss_idle_mib": rss / MiB}


# -- 9. a sandboxed spawn ----------------------------------------------------------------------
#
# `true` under codex's workspace-write profile (the client's cwd as the workspace, the network
# restricted), beside bare bubblewrap run by the bench itself in the same run: what our
# launcher (seccomp filter, pids cgroup, carve-outs, signal shim) costs over bwrap's own.


def workspace_write(root_uri: str) -> dict[str, Any]:
    """The sandbox param codex 0.169 sends for ``codex exec -s workspace-write``."""

    def special(kind: str, **extra: str) -> dict[str, Any]:
        return {"type": "special", "value": {"kind": kind, **extra}}

    entries: list[dict[str, Any]] = [
        {"path": special("root"), "access": "read"},
        {"path": special("project_roots"), "access": "write"},
        {"path": special("slash_tmp"), "access": "write"},
        {"path": special("tmpdir"), "access": "write"},
    ]
    entries += [
        {"path": special("project_roots", subpath=name), "access": "read",
         "missing_path_behavior": "skip"}
        for name in (".git", ".agents", ".codex", ".aws")
    ]  # fmt: skip
    return {
        "permissions": {
            "type": "managed",
            "file_system": {"type": "restricted", "entries": entries},
            "network": "restricted",
        },
        "cwd": root_uri,
        "workspaceRoots": [root_uri],
        "windowsSandboxLevel": "disabled",
        "useLegacyLandlock": False,
    }


BARE_BWRAP = (
    "bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-all",
    "--die-with-parent", "true",
)  # fmt: skip


async def sandbox(server: RunningServer, sizes: Sizes) -> Metrics:
    """Sequential bare bwrap `true`, then as many sandboxed `true` through the server. Each
    block is sequential on its own: a sandbox's namespaces are torn down by the kernel after
    it exits, and that work lands on whatever runs next, so each block pays its own."""
    client = server.client
    cwd = client.cwd
    root = cwd if cwd.startswith("file://") else "file://" + cwd
    profile = workspace_write(root)
    served: list[float] = []
    bare: list[float] = []
    failed = 0
    for _ in range(sizes.sandbox_n):
        t0 = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(*BARE_BWRAP)
        failed += await asyncio.wait_for(proc.wait(), STEP_TIMEOUT) != 0
        bare.append(time.perf_counter() - t0)
    for i in range(sizes.sandbox_n):
        pid = f"sb{i}"
        w = client.watch(pid)
        params = {**client.start_params(pid, ["true"]), "sandbox": profile}
        t0 = time.perf_counter()
        reply = await client.call("process/start", params)
        await _finish(server, pid, w, "sandboxed true")
        served.append(time.perf_counter() - t0)
        await reply
        failed += w.exit_code != 0
        client.unwatch(pid)
    served_ms = statistics.median(served) * 1e3
    bare_ms = statistics.median(bare) * 1e3
    return {
        "sandbox_spawn_median_ms": served_ms,
        "sandbox_bare_bwrap_ms": bare_ms,
        "sandbox_over_bare": served_ms / bare_ms,
        "sandbox_nonzero_exits": failed,
    }


# -- 9. the managed network proxy (issue 18) ------------------------------------------------


async def proxy(server: RunningServer, sizes: Sizes) -> Metrics:
    """A proxied child's HTTP fetches: latency the proxy adds, and MiB/s through it."""
    from bench.network import proxy_fetch

    return await proxy_fetch(server, sizes.proxy_n, sizes.proxy_bytes)


# -- the CLI's PTY output (issue 20 item 13) -----------------------------------------------


async def cli_pty(server: RunningServer, sizes: Sizes) -> Metrics:
    """Our ``exec-server run -t`` printing a PTY stream (a quarter of ``stream_bytes``) to
    /dev/null through this server, and, in the same minute, a bare reader of a local PTY
    running the same command: the CLI's rate, and its ratio to the local one."""
    if not server.url:
        raise RuntimeError("the CLI reaches WebSocket servers only")
    from bench.cli_pty import local_pty  # the CLI bench's local reader

    argv = ["head", "-c", str(sizes.stream_bytes // 4), "/dev/zero"]
    local_s = await asyncio.to_thread(local_pty, argv)
    cli = [sys.executable, "-m", "exec_server", "run", "-t", "--url", server.url, "--", *argv]
    t0 = time.perf_counter()
    child = await asyncio.create_subprocess_exec(
        *cli,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await child.communicate()
    elapsed = time.perf_counter() - t0
    if child.returncode != 0:
        raise RuntimeError(f"exec-server run -t failed: {err.decode(errors='replace')[-300:]}")
    return {
        "cli_pty_mibs": sizes.stream_bytes / 4 / MiB / elapsed,
        "cli_pty_vs_local": local_s / elapsed,
    }


WORKLOADS: dict[str, Workload] = {
    "spawn": spawn,
    "rtt": rtt,
    "throughput": throughput,
    "fanout": fanout,
    "poll": poll,
    "hol": hol,
    "memory": memory,
    "sandbox": sandbox,
    "proxy": proxy,
    "cli_pty": cli_pty,
}
WS_ONLY = frozenset({"cli_pty"})
"""Workloads that need the server's WebSocket URL (the CLI cannot reach a stdio server the
bench started)."""
REP_FACTOR = {"poll": 3, "throughput": 2}
"""Workloads repeated more than ``--reps`` times. A polling run lasts half a second, and on
this shared 2-core VM its rate depends on where the scheduler puts client and server (runs
cluster around two or three rates, the same ones for every server): a median of three
runs is a coin toss between clusters, a median of nine is not. PTY throughput spreads
almost 2:1 from run to run for every server (two full runs of 2026-12-01: ours 22.7-57.1
MiB/s, 0.128 33.5-49.1), so it gets six."""

# -- 8. start-up over stdio -------------------------------------------------------------------
#
# Some clients start a stdio server per session (codex's environments.toml `program`): the
# time from exec to the `initialize` reply is paid at the start of every session.

INITIALIZE = b'{"id":1,"method":"initialize","params":{"clientName":"bench"}}\n'


FLOOR_ARGV = (sys.executable, "-c", "import asyncio")
"""The floor of any Python server's start-up: the interpreter with asyncio imported (the
bench's own interpreter, which is the project's .venv one under `make bench`)."""


async def _run_floor() -> float:
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(*FLOOR_ARGV)
    await asyncio.wait_for(proc.wait(), STEP_TIMEOUT)
    return time.perf_counter() - t0


async def startup(spec: ServerSpec, sizes: Sizes) -> Metrics:
    """Start ``spec`` with ``--listen stdio`` ``startup_n`` times: the time from exec to the
    `initialize` reply, and to the exit once stdin is closed; each start is followed by one
    of ``python -c "import asyncio"``, the floor the reply time is compared with."""
    to_reply: list[float] = []
    to_exit: list[float] = []
    floor: list[float] = []
    for _ in range(sizes.startup_n):
        t0 = time.perf_counter()
        proc = await spawn_stdio(spec.argv)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(INITIALIZE)
        line = await asyncio.wait_for(proc.stdout.readline(), STEP_TIMEOUT)
        to_reply.append(time.perf_counter() - t0)
        if b'"result"' not in line:
            proc.kill()
            await proc.wait()
            raise RuntimeError(f"no initialize reply: {line[:200]!r}")
        proc.stdin.close()
        await asyncio.wait_for(proc.wait(), STEP_TIMEOUT)
        to_exit.append(time.perf_counter() - t0)
        floor.append(await _run_floor())
    reply, base = statistics.median(to_reply), statistics.median(floor)
    return {
        "startup_reply_ms": reply * 1000,
        "startup_exit_ms": statistics.median(to_exit) * 1000,
        "startup_floor_ms": base * 1000,
        "startup_over_floor": reply / base,
    }


SpecWorkload = Callable[[ServerSpec, Sizes], Awaitable[Metrics]]
SPEC_WORKLOADS: dict[str, SpecWorkload] = {"startup": startup}
"""Workloads that start the server themselves (stdio only), rather than using one started
for them."""

ALIASES = {"cpu": "throughput", "latency": "spawn", "roundtrip": "rtt", "polling": "poll"}
