"""`python -m bench.soak`: the long reliability runs of issue 11, ours beside the reference.

    .venv/bin/python -m bench.soak [--quick] [--only ROW] [--json PATH] [--ref VERSION]

Each row runs once against each server (ours and the Rust reference, 0.169 by default), a
fresh server per row over WebSocket on loopback, the order alternating from row to row:

``messages``
    100,000 JSON-RPC messages over four connections, up to 32 in flight on each: cheap valid
    calls, bad params, unknown methods, malformed JSON, invalid UTF-8 inside strings (binary
    frames) and invalid ids. Every message must get exactly one reply: a request with a valid
    id its own, the rest the id -1 parse error (or their own id, where a server can recover
    it); counted by id, so a lost, doubled or stray reply shows. Then the server must still be
    alive and answer a request and run a process.
``nonreading``
    A child writes 1 GiB (``head -c``) while the client stops reading its socket for 20 s;
    the server's RSS is sampled every 20 ms and must stay bounded (its growth independent of
    the volume). Then the client reads again: every byte must arrive, nothing dropped.
``churn``
    10,000 ``true`` in sequence, each started and waited for until ``process/closed``.
``fanout``
    50 clients on their own connections at once, each starting 20 ``echo`` together and
    waiting for them, then disconnecting.

For ``churn`` and ``fanout`` the server's fds, threads, live children, zombies and RSS are
read before (after a warm-up) and after: at the end, and once the 30 s both servers keep a
closed process or a disconnected session have passed (the figures must be back to their
baseline; RSS within a tolerance, since an allocator keeps some of what it had).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import msgspec
import psutil  # type: ignore[import-untyped]

from bench import report, servers, workloads
from bench.__main__ import raise_fd_limit, run_on_fast_loop
from bench.client import ConnectionLost
from bench.probe import PeakRss, Resources, ServerProbe
from bench.servers import RunningServer, ServerSpec, ServerStartError
from bench.wsclient import WsConnection, ws_connect

RESULTS = Path(__file__).resolve().parent / "results"
MiB = 1 << 20
GiB = 1 << 30
STEP_TIMEOUT = 30.0  # one reply, one process
ROW_TIMEOUT = 1800.0  # the reference's churn over WebSocket alone takes ~9 min
RSS_BOUND = 32 * MiB  # nonreading: growth allowed while the client does not read
RSS_TOLERANCE = 4 * MiB  # churn, fanout: RSS "back to baseline" within this (or 10 %)
WARMUP = 50  # processes before the baseline is read: pools and caches are filled


@dataclass(frozen=True)
class SoakSizes:
    messages: int = 100_000
    message_conns: int = 4
    window: int = 32  # requests in flight per connection
    flood_bytes: int = GiB
    stall_s: float = 20.0  # how long the client does not read
    churn_n: int = 10_000
    fan_clients: int = 50
    fan_procs: int = 20
    # The "after" figures are read once both servers' closed-process retention and detach
    # grace (30 s each) have passed, then as soon as they are back, at most settle_max_s.
    settle_min_s: float = 32.0
    settle_max_s: float = 45.0

    @classmethod
    def quick(cls) -> SoakSizes:
        return cls(
            messages=10_000,
            flood_bytes=64 * MiB,
            stall_s=5.0,
            churn_n=1000,
            fan_clients=10,
            fan_procs=5,
            settle_min_s=0.0,
            settle_max_s=40.0,
        )


Metrics = dict[str, Any]  # numbers, and a series or two kept for the JSON


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- 1. messages -------------------------------------------------------------------------------

OWN, ANY, ANON = "own", "any", "anon"
"""What answers a message: a reply with its own id; its own id or -1; the id -1 error."""


@dataclass(frozen=True)
class Template:
    """One kind of message: ``pattern`` with every ``%d`` replaced by the message's number."""

    category: str
    expect: str  # OWN, ANY or ANON
    pattern: bytes
    binary: bool = False  # sent as a binary frame (UTF-8 is not checked by WebSocket then)

    def make(self, n: int) -> bytes:
        return self.pattern % ((n,) * self.pattern.count(b"%"))

    def key(self, n: int) -> int | str:
        """The id its reply carries, when it carries its own."""
        return f"s{n}" if self.pattern.startswith(b'{"id":"s%d"') else n


_NESTED = b"[" * 200 + b"]" * 200  # deeper than serde_json's limit of 128

TEMPLATES: tuple[Template, ...] = (
    # Cheap valid calls: results, or errors that belong to the call (an unknown process).
    Template("valid", OWN, b'{"id":%d,"method":"environment/status"}'),
    Template("valid", OWN, b'{"id":"s%d","method":"environment/status","jsonrpc":"2.0"}'),
    Template("valid", OWN, b'{"id":%d,"method":"environment/info"}'),
    Template(
        "valid",
        OWN,
        b'{"id":%d,"method":"process/read","params":{"processId":"live","afterSeq":0,"waitMs":0}}',
    ),
    Template(
        "valid",
        OWN,
        b'{"id":%d,"method":"process/write",'
        b'"params":{"processId":"nope","chunk":"aGk=","writeId":"w%d"}}',
    ),
    Template("valid", OWN, b'{"id":%d,"method":"process/terminate","params":{"processId":"no"}}'),
    Template("valid", OWN, b'{"id":%d,"method":"fs/getMetadata","params":{"path":"file:///tmp"}}'),
    Template("valid", OWN, b'{"id":%d,"method":"fs/canonicalize","params":{"path":"file:///tmp"}}'),
    # Bad params.
    Template("bad params", OWN, b'{"id":%d,"method":"process/read","params":"str"}'),
    Template(
        "bad params",
        OWN,
        b'{"id":%d,"method":"process/read","params":{"processId":"live","afterSeq":-1}}',
    ),
    Template(
        "bad params",
        OWN,
        b'{"id":%d,"method":"process/start",'
        b'"params":{"processId":"x%d","argv":[],"cwd":"file:///tmp","env":{},"tty":false}}',
    ),
    Template(
        "bad params",
        OWN,
        b'{"id":%d,"method":"process/write",'
        b'"params":{"processId":"live","chunk":"!!","writeId":"b%d"}}',
    ),
    Template("bad params", OWN, b'{"id":%d,"method":"fs/getMetadata","params":{"path":7}}'),
    # Unknown methods (`initialized` is a notification only).
    Template("unknown method", OWN, b'{"id":%d,"method":"nope/m%d"}'),
    Template("unknown method", OWN, b'{"id":%d,"method":"initialized","params":{}}'),
    # Malformed JSON, or JSON that is no JSON-RPC message.
    Template("malformed", ANON, b"not json %d"),
    Template("malformed", ANON, b"{}"),
    Template("malformed", ANON, b"[]"),
    Template("malformed", ANY, b'{"id":%d,"method":"environment/sta'),
    Template("malformed", ANY, b'{"id":%d}'),
    Template("malformed", ANY, b'{"id":%d,"method":5}'),
    Template("malformed", ANY, b'\xef\xbb\xbf{"id":%d,"method":"environment/status"}'),
    Template(
        "malformed", ANY, b'{"id":%d,"method":"environment/status","params":' + _NESTED + b"}"
    ),
    # Invalid UTF-8 inside strings, in binary frames (a lone surrogate, an overlong "/", a cut
    # sequence); an escaped lone surrogate in a text frame.
    Template(
        "invalid UTF-8",
        ANY,
        b'{"id":%d,"method":"process/read","params":{"processId":"\xff\xfe"}}',
        binary=True,
    ),
    Template(
        "invalid UTF-8",
        ANY,
        b'{"id":%d,"method":"fs/getMetadata","params":{"path":"file:///\xed\xa0\x80"}}',
        binary=True,
    ),
    Template(
        "invalid UTF-8",
        ANY,
        b'{"id":%d,"method":"fs/getMetadata","params":{"path":"file:///tmp\xc0\xaf"}}',
        binary=True,
    ),
    Template("invalid UTF-8", ANY, b'{"id":%d,"method":"nope/\xe2\x82"}', binary=True),
    Template(
        "invalid UTF-8", ANY, b'{"id":%d,"method":"process/read","params":{"processId":"\\udc80"}}'
    ),
    # Invalid ids: neither a string nor a signed 64-bit integer.
    Template("invalid id", ANON, b'{"id":%d.5,"method":"environment/status"}'),
    Template("invalid id", ANON, b'{"id":null,"method":"environment/status"}'),
    Template("invalid id", ANON, b'{"id":true,"method":"environment/status"}'),
    Template("invalid id", ANON, b'{"id":[%d],"method":"environment/status"}'),
    Template("invalid id", ANON, b'{"id":{"n":%d},"method":"nope/x"}'),
    Template("invalid id", ANON, b'{"id":1%020d,"method":"environment/status"}'),
)
DECK: tuple[int, ...] = tuple(
    i for i, t in enumerate(TEMPLATES) for _ in range(3 if t.category == "valid" else 1)
)
"""The order messages are drawn in: each valid call three times, every other template once
(valid calls are then about half of the messages)."""


class _Error(msgspec.Struct):
    code: int = 0


class _Reply(msgspec.Struct):
    id: Any = None
    method: str | None = None
    error: _Error | None = None


class Flood:
    """One connection's share of the messages, and every reply it got, matched by id."""

    def __init__(self, window: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._decode = msgspec.json.Decoder(_Reply).decode
        self.window = window
        self.conn: WsConnection | None = None
        self.sent = 0
        self.sent_by_category: Counter[str] = Counter()
        self.expected: dict[int | str, bool] = {}  # id -> whether it must come back as is
        self.anon_only = 0  # messages answered by the id -1 error only
        self.replies = 0
        self.by_id: Counter[int | str] = Counter()
        self.anon = 0  # replies with id -1
        self.odd_ids = 0  # replies with an id no message had (not a string nor an integer)
        self.undecodable = 0
        self.codes: Counter[int] = Counter()
        self.notifications = 0
        self.lost: BaseException | None = None
        self._wake: asyncio.Future[None] | None = None
        self._until = 0

    # -- incoming -------------------------------------------------------------------------

    def on_message(self, data: memoryview) -> None:
        try:
            msg = self._decode(data)
        except msgspec.DecodeError:
            self.undecodable += 1
            self.replies += 1
            self._maybe_wake()
            return
        if msg.method is not None:
            self.notifications += 1
            return
        self.replies += 1
        rid = msg.id
        if rid == -1 and type(rid) is int:
            self.anon += 1
        elif type(rid) in (int, str):
            self.by_id[rid] += 1
        else:
            self.odd_ids += 1
        self.codes[msg.error.code if msg.error is not None else 0] += 1
        self._maybe_wake()

    def on_lost(self, exc: BaseException | None) -> None:
        self.lost = exc or ConnectionLost("closed by the server")
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def _maybe_wake(self) -> None:
        if self._wake is not None and not self._wake.done() and self.replies >= self._until:
            self._wake.set_result(None)

    async def replies_reach(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` replies are in (False on timeout or a lost connection)."""
        if self.replies >= count:
            return True
        self._until = count
        self._wake = self._loop.create_future()
        try:
            await asyncio.wait_for(self._wake, timeout)
        except TimeoutError:
            return False
        finally:
            self._wake = None
        return self.replies >= count

    # -- outgoing -------------------------------------------------------------------------

    async def open(self, url: str, cwd: str) -> None:
        """Connect, initialize, and start the process that `process/read` calls ask about."""
        self.conn = await ws_connect(url, self.on_message, self.on_lost, STEP_TIMEOUT)
        encode = msgspec.json.encode
        self.conn.send(encode({"id": "i", "method": "initialize", "params": {"clientName": "s"}}))
        if not await self.replies_reach(1, STEP_TIMEOUT) or self.codes[0] != 1:
            raise RuntimeError(f"initialize failed: codes {dict(self.codes)}")
        self.conn.send(b'{"method":"initialized"}')
        argv = ["sh", "-c", "echo soak; exec sleep 600"]
        params = {"processId": "live", "argv": argv, "cwd": cwd, "env": {}, "tty": False}
        self.conn.send(encode({"id": "l", "method": "process/start", "params": params}))
        if not await self.replies_reach(2, STEP_TIMEOUT) or self.codes[0] != 2:
            raise RuntimeError(f"process/start failed: codes {dict(self.codes)}")
        self.replies = 0
        self.by_id.clear()
        self.codes.clear()

    async def run(self, count: int, first_id: int, offset: int) -> None:
        """Send ``count`` messages, ids from ``first_id``, keeping ``window`` unanswered."""
        assert self.conn is not None
        send, send_binary = self.conn.send, self.conn.send_binary
        deck = DECK
        for i in range(count):
            if self.lost is not None:
                return
            t = TEMPLATES[deck[(offset + i) % len(deck)]]
            n = first_id + i
            (send_binary if t.binary else send)(t.make(n))
            self.sent += 1
            self.sent_by_category[t.category] += 1
            if t.expect == ANON:
                self.anon_only += 1
            else:
                self.expected[t.key(n)] = t.expect == OWN
            if self.sent - self.replies >= self.window and not await self.replies_reach(
                self.sent - self.window + 1, STEP_TIMEOUT
            ):
                return  # a reply is missing for STEP_TIMEOUT: counted below, not waited for

    def tally(self) -> dict[str, int]:
        """Replies against messages: what was missing, doubled or unexpected."""
        own_missing = sum(1 for k, must in self.expected.items() if must and not self.by_id[k])
        answered_as_own = sum(1 for k, must in self.expected.items() if not must and self.by_id[k])
        anon_expected = (
            self.anon_only + sum(not m for m in self.expected.values()) - answered_as_own
        )
        doubled = sum(c - 1 for c in self.by_id.values() if c > 1)
        stray = sum(c for k, c in self.by_id.items() if k not in self.expected)
        stray += self.odd_ids + self.undecodable
        return {
            "unanswered": own_missing + max(0, anon_expected - self.anon),
            "extra": doubled + stray + max(0, self.anon - anon_expected),
            "doubled": doubled,
            "stray": stray,
            "anon": self.anon,
        }


async def messages(server: RunningServer, sizes: SoakSizes) -> Metrics:
    floods = [Flood(sizes.window) for _ in range(sizes.message_conns)]
    for flood in floods:
        await flood.open(server.url, server.spec.cwd)
    await asyncio.sleep(0.5)
    server.probe.refresh_helpers()
    rss_before = server.probe.rss()
    share = sizes.messages // len(floods)
    counts = [share + (k < sizes.messages % len(floods)) for k in range(len(floods))]
    cpu0, client_cpu0 = server.probe.cpu_seconds(), time.process_time()
    with PeakRss(server.probe, 0.05) as peak:
        t0 = time.perf_counter()
        await asyncio.gather(
            *(
                f.run(n, first_id=1_000_000 * (k + 1), offset=k * 7)
                for k, (f, n) in enumerate(zip(floods, counts, strict=True))
            )
        )
        for f in floods:  # the last replies, however long the rest took
            await f.replies_reach(f.sent, STEP_TIMEOUT)
        elapsed = time.perf_counter() - t0
    cpu = server.probe.cpu_seconds() - cpu0
    client_cpu = time.process_time() - client_cpu0
    rss_after = server.probe.rss()

    # Still alive and answering: a request and a process on the first connection, which
    # took no part in the flood, and the flood connections still open.
    dropped = sum(f.lost is not None for f in floods)  # before we close them ourselves
    answering = 0.0
    if server.alive():
        try:
            await asyncio.wait_for(server.client.request("environment/status", None), STEP_TIMEOUT)
            w = server.client.watch("after")
            reply = await server.client.start("after", ["echo", "still here"])
            await asyncio.wait_for(asyncio.shield(w.closed), STEP_TIMEOUT)
            await reply
            answering = float(w.exit_code == 0 and w.nbytes == len(b"still here\n"))
        except Exception as exc:
            log(f"  {server.spec.name}: not answering after the flood: {exc!r}")
    for f in floods:
        if f.conn is not None:
            await f.conn.close()

    totals: Counter[str] = Counter()
    categories: Counter[str] = Counter()
    codes: Counter[int] = Counter()
    for f in floods:
        totals.update(f.tally())
        totals["sent"] += f.sent
        totals["replies"] += f.replies
        totals["notifications"] += f.notifications
        categories.update(f.sent_by_category)
        codes.update(f.codes)
    metrics: Metrics = {
        "sent": totals["sent"],
        "replies": totals["replies"],
        "unanswered": totals["unanswered"],
        "extra_replies": totals["extra"],
        "doubled_replies": totals["doubled"],
        "stray_replies": totals["stray"],
        "parse_error_replies": totals["anon"],
        "connections_dropped": dropped,
        "messages_per_s": totals["sent"] / elapsed,
        "elapsed_s": elapsed,
        "server_cpu_s": cpu,
        "server_cpu_us_per_message": cpu / max(1, totals["sent"]) * 1e6,
        "client_cpu_share": client_cpu / elapsed,
        "rss_before_mib": rss_before / MiB,
        "rss_peak_mib": peak.peak / MiB,
        "rss_after_mib": rss_after / MiB,
        "alive_and_answering": answering,
    }
    for name, n in sorted(categories.items()):
        metrics[f"sent_{name.replace(' ', '_')}"] = n
    for code, n in sorted(codes.items()):
        metrics[f"replies_code_{code}" if code else "replies_result"] = n
    return metrics


# -- 2. a client that does not read ------------------------------------------------------------


def _child_written(probe: ServerProbe, name: str) -> tuple[int, bool]:
    """Bytes written so far by the server's descendant called ``name``, and whether it lives."""
    for p in probe.descendants():
        try:
            if p.name() == name and p.status() != psutil.STATUS_ZOMBIE:
                return int(p.io_counters().write_chars), True
        except psutil.Error:
            continue
    return 0, False


async def nonreading(server: RunningServer, sizes: SoakSizes) -> Metrics:
    client, probe = server.client, server.probe
    await asyncio.sleep(0.5)
    probe.refresh_helpers()
    rss_before = probe.rss()
    w = client.watch("flood")
    argv = ["head", "-c", str(sizes.flood_bytes), "/dev/zero"]
    await asyncio.wait_for(await client.start("flood", argv), STEP_TIMEOUT)
    server.pause_reading()
    received_before = w.nbytes
    written = 0
    series: list[tuple[float, float, float]] = []  # (s, RSS MiB, MiB written by the child)
    try:
        cpu0 = probe.cpu_seconds()
        with PeakRss(probe, 0.02) as stalled:
            t0 = time.monotonic()
            while (t := time.monotonic() - t0) < sizes.stall_s:
                await asyncio.sleep(min(0.5, sizes.stall_s - t))
                written, running = _child_written(probe, "head")
                series.append((round(t, 2), probe.rss() / MiB, written / MiB))
                if not running:
                    break
        stall_cpu = probe.cpu_seconds() - cpu0
        stall_s = time.monotonic() - t0
        rss_stalled_end = probe.rss()
    finally:
        server.resume_reading()
    # Reading again: the rest arrives, and every byte must be there.
    with PeakRss(probe, 0.02) as draining:
        t1 = time.monotonic()
        try:
            await asyncio.wait_for(asyncio.shield(w.closed), 600)
        except TimeoutError:
            await client.terminate("flood")
            raise
        drain_s = time.monotonic() - t1
    await asyncio.sleep(0.5)
    rss_after = probe.rss()
    answering = 0.0
    if server.alive():
        await asyncio.wait_for(client.request("environment/status", None), STEP_TIMEOUT)
        answering = 1.0
    return {
        "flood_mib": sizes.flood_bytes / MiB,
        "stall_s": stall_s,
        "received_before_stall_mib": received_before / MiB,
        "child_written_in_stall_mib": written / MiB,
        "rss_before_mib": rss_before / MiB,
        "rss_peak_stalled_mib": stalled.peak / MiB,
        "rss_growth_stalled_mib": (stalled.peak - rss_before) / MiB,
        "rss_end_of_stall_mib": rss_stalled_end / MiB,
        "server_cpu_stalled_s": stall_cpu,
        "drain_s": drain_s,
        "drain_mibs": (w.nbytes - received_before) / MiB / drain_s if drain_s else 0.0,
        "rss_peak_draining_mib": draining.peak / MiB,
        "rss_after_mib": rss_after / MiB,
        "received_mib": w.nbytes / MiB,
        "lost_bytes": sizes.flood_bytes - w.nbytes,
        "exit_code": float(w.exit_code if w.exit_code is not None else -1),
        "alive_and_answering": answering,
        "series": series,
    }


# -- 3, 4. churn and fan-out: back to baseline? -------------------------------------------------


def _back(now: Resources, before: Resources) -> bool:
    return (
        now.fds <= before.fds
        and now.threads <= before.threads
        and now.zombies == 0
        and now.children <= before.children
        and now.rss <= before.rss + _rss_tolerance(before)
    )


def _rss_tolerance(before: Resources) -> int:
    return max(RSS_TOLERANCE, before.rss // 10)


async def _settle(probe: ServerProbe, before: Resources, sizes: SoakSizes) -> Metrics:
    """The figures at the end, then once settled: after ``settle_min_s``, as soon as they are
    back to ``before``, at most ``settle_max_s``."""
    end = probe.resources()
    t0 = time.monotonic()
    await asyncio.sleep(sizes.settle_min_s)
    while True:
        after = probe.resources()
        waited = time.monotonic() - t0
        if _back(after, before) or waited >= sizes.settle_max_s:
            break
        await asyncio.sleep(1.0)
    out: Metrics = {"settled_after_s": waited}
    for name, snap in (("before", before), ("end", end), ("after", after)):
        out[f"rss_{name}_mib"] = snap.rss / MiB
        out[f"rss_helpers_{name}_mib"] = snap.helpers_uss / MiB
        out[f"fds_{name}"] = snap.fds
        out[f"threads_{name}"] = snap.threads
        out[f"children_{name}"] = snap.children
        out[f"zombies_{name}"] = snap.zombies
    out["rss_delta_mib"] = (after.rss - before.rss) / MiB
    out["rss_tolerance_mib"] = _rss_tolerance(before) / MiB
    out["fds_delta"] = after.fds - before.fds
    out["threads_delta"] = after.threads - before.threads
    out["children_delta"] = after.children - before.children
    return out


async def churn(server: RunningServer, sizes: SoakSizes) -> Metrics:
    await workloads.spawn(server, workloads.Sizes(spawn_n=WARMUP), prefix="warm")
    await asyncio.sleep(1.0)
    before = server.probe.resources()
    t0 = time.perf_counter()
    spawned = await workloads.spawn(server, workloads.Sizes(spawn_n=sizes.churn_n), prefix="c")
    elapsed = time.perf_counter() - t0
    return {
        "processes": sizes.churn_n,
        "processes_per_s": sizes.churn_n / elapsed,
        "elapsed_s": elapsed,
        "nonzero_exits": spawned["spawn_nonzero_exits"],
        "latency_median_ms": spawned["spawn_median_ms"],
        "latency_p95_ms": spawned["spawn_p95_ms"],
        "errors": 0,
        **(await _settle(server.probe, before, sizes)),
    }


async def _fan_client(server: RunningServer, k: int, n: int) -> int:
    """One client: ``n`` `echo` started together, all waited for; returns the non-zero exits."""
    client, conn = await server.connect()
    try:
        pids = [f"f{k}-{j}" for j in range(n)]
        watches = [client.watch(pid) for pid in pids]
        replies = [await client.start(pid, ["echo", pid]) for pid in pids]
        await asyncio.wait_for(
            asyncio.gather(*(w.closed for w in watches), *replies), workloads.STREAM_TIMEOUT
        )
        return sum(
            w.exit_code != 0 or w.nbytes != len(pid) + 1
            for w, pid in zip(watches, pids, strict=True)
        )
    finally:
        await conn.close()


async def fanout(server: RunningServer, sizes: SoakSizes) -> Metrics:
    # Warm-up: a few processes, and one client that comes and goes.
    await workloads.spawn(server, workloads.Sizes(spawn_n=WARMUP), prefix="warm")
    await _fan_client(server, -1, 2)
    await asyncio.sleep(1.0)
    before = server.probe.resources()
    with PeakRss(server.probe, 0.02) as peak:
        t0 = time.perf_counter()
        outcomes = await asyncio.gather(
            *(_fan_client(server, k, sizes.fan_procs) for k in range(sizes.fan_clients)),
            return_exceptions=True,
        )
        elapsed = time.perf_counter() - t0
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    for exc in errors[:3]:
        log(f"  {server.spec.name}: fan-out client failed: {exc!r}")
    return {
        "processes": sizes.fan_clients * sizes.fan_procs,
        "wall_s": elapsed,
        "processes_per_s": sizes.fan_clients * sizes.fan_procs / elapsed,
        "errors": len(errors),
        "nonzero_exits": sum(o for o in outcomes if isinstance(o, int)),
        "rss_peak_mib": peak.peak / MiB,
        **(await _settle(server.probe, before, sizes)),
    }


Row = Callable[[RunningServer, SoakSizes], Awaitable[Metrics]]
ROWS: dict[str, Row] = {
    "messages": messages,
    "nonreading": nonreading,
    "churn": churn,
    "fanout": fanout,
}

# -- the table ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    unit: str
    ratio: bool = False  # show ours/reference
    condition: str = ""
    check: Callable[[Metrics], bool] | None = None  # the condition, on one server's run


def _zero(key: str) -> Callable[[Metrics], bool]:
    return lambda m: m.get(key, 1) == 0


def _not_above(key: str, base: str) -> Callable[[Metrics], bool]:
    return lambda m: m[key] <= m[base]


FIGURES: dict[str, tuple[Figure, ...]] = {
    "messages": (
        Figure("sent", "messages sent", "n"),
        Figure("replies", "replies received", "n"),
        Figure("unanswered", "messages left unanswered", "n", False, "0", _zero("unanswered")),
        Figure(
            "extra_replies", "doubled or stray replies", "n", False, "0", _zero("extra_replies")
        ),
        Figure(
            "connections_dropped",
            "connections dropped by the server",
            "n",
            False,
            "0",
            _zero("connections_dropped"),
        ),
        Figure("messages_per_s", "messages/s (4 connections, 32 in flight)", "msg/s", True),
        Figure("server_cpu_us_per_message", "server CPU per message", "µs", True),
        Figure("rss_before_mib", "server RSS before", "MiB", True),
        Figure("rss_peak_mib", "server RSS peak", "MiB", True),
        Figure("rss_after_mib", "server RSS after", "MiB", True),
        Figure(
            "alive_and_answering",
            "alive, answers a request, runs a process",
            "1=yes",
            False,
            "1",
            lambda m: m["alive_and_answering"] == 1,
        ),
    ),
    "nonreading": (
        Figure("flood_mib", "child writes (head -c)", "MiB"),
        Figure("stall_s", "client not reading for", "s"),
        Figure("child_written_in_stall_mib", "  the child had written by its end", "MiB", True),
        Figure("rss_before_mib", "server RSS before", "MiB", True),
        Figure("rss_peak_stalled_mib", "server RSS peak, not read", "MiB", True),
        Figure(
            "rss_growth_stalled_mib",
            "  growth over baseline",
            "MiB",
            True,
            f"<= {RSS_BOUND // MiB}",
            lambda m: m["rss_growth_stalled_mib"] <= RSS_BOUND / MiB,
        ),
        Figure("server_cpu_stalled_s", "server CPU while not read", "s", True),
        Figure("drain_mibs", "reading again: rest delivered at", "MiB/s", True),
        Figure("rss_peak_draining_mib", "server RSS peak, reading again", "MiB", True),
        Figure("lost_bytes", "bytes lost", "B", False, "0", _zero("lost_bytes")),
        Figure("rss_after_mib", "server RSS after", "MiB", True),
    ),
    "churn": (),  # filled below: the same figures as fanout, plus its own
    "fanout": (),
}
_BASELINE: tuple[Figure, ...] = (
    Figure(
        "nonzero_exits", "processes failed (exit, output)", "n", False, "0", _zero("nonzero_exits")
    ),
    Figure("fds_before", "server fds before", "n"),
    Figure("fds_after", "  after", "n", False, "<= before", _not_above("fds_after", "fds_before")),
    Figure("threads_before", "server threads before", "n"),
    Figure(
        "threads_after",
        "  after",
        "n",
        False,
        "<= before",
        _not_above("threads_after", "threads_before"),
    ),
    Figure("children_after", "children left running", "n", False, "0", _zero("children_after")),
    Figure("zombies_end", "zombie children at the end", "n"),
    Figure("zombies_after", "  after", "n", False, "0", _zero("zombies_after")),
    Figure("rss_before_mib", "server RSS before", "MiB", True),
    Figure("rss_end_mib", "  at the end", "MiB", True),
    Figure(
        "rss_after_mib",
        "  after",
        "MiB",
        True,
        "<= before+tol",
        lambda m: m["rss_delta_mib"] <= m["rss_tolerance_mib"],
    ),
    Figure("rss_delta_mib", "  delta after - before", "MiB"),
    Figure("settled_after_s", "after = read this long after the end", "s"),
)
FIGURES["churn"] = (
    Figure("processes", "processes in sequence (true)", "n"),
    Figure("processes_per_s", "processes/s", "proc/s", True),
    Figure("latency_median_ms", "start -> closed, median", "ms", True),
    *_BASELINE,
)
FIGURES["fanout"] = (
    Figure("processes", "processes (clients x echo)", "n"),
    Figure("wall_s", "wall time", "s", True),
    Figure("rss_peak_mib", "server RSS peak", "MiB", True),
    *_BASELINE[:1],
    Figure("errors", "  clients failed", "n", False, "0", _zero("errors")),
    *_BASELINE[1:],
)


def _cell(value: float | None) -> str:
    if value is None:
        return "-"
    if float(value).is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"
    return report.fmt(value) if value >= 0 else "-" + report.fmt(-value)


def verdicts(row: str, metrics: Metrics | None) -> dict[str, bool]:
    """{figure key: condition met} for one server's run of a row."""
    if metrics is None:
        return {}
    return {f.key: f.check(metrics) for f in FIGURES[row] if f.check is not None}


def table(results: dict[str, dict[str, dict[str, Any]]], names: list[str]) -> str:
    ref = next((n for n in names if n != report.OURS), None)
    header = ["row", "figure", "unit", *names, *([f"ours/{ref}"] if ref else []), "condition"]
    header += [f"{n} pass" for n in names]
    rows = [header]
    for row, per_server in results.items():
        first = True
        for fig in FIGURES[row]:
            values = {n: per_server.get(n, {}).get("metrics", {}).get(fig.key) for n in names}
            cells = [row if first else "", fig.label, fig.unit]
            cells += [_cell(values[n]) for n in names]
            if ref:
                ours, theirs = values.get(report.OURS), values.get(ref)
                ratio = ours / theirs if fig.ratio and ours is not None and theirs else None
                cells.append(report.fmt(ratio) if ratio is not None else "")
            cells.append(fig.condition)
            for n in names:
                m = per_server.get(n, {}).get("metrics")
                cells.append(
                    "" if fig.check is None or m is None else ("ok" if fig.check(m) else "FAIL")
                )
            rows.append(cells)
            first = False
        for n in names:
            if "error" in per_server.get(n, {}):
                rows.append(["", f"{n}: ERROR {per_server[n]['error'][:200]}"])
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(len(header))]
    lines = []
    for r in rows:
        if len(r) < len(header):  # an error line
            lines.append("  ".join(r).rstrip())
            continue
        cells = [
            c.ljust(w) if i < 3 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


# -- running -----------------------------------------------------------------------------------


async def run_row(spec: ServerSpec, row: str, sizes: SoakSizes) -> dict[str, Any]:
    record: dict[str, Any] = {"server": spec.name}
    t0 = time.perf_counter()
    try:
        server = await servers.start_server(spec, "ws")
    except ServerStartError as exc:
        record["error"] = f"start: {exc}"
        return record
    try:
        record["metrics"] = await asyncio.wait_for(ROWS[row](server, sizes), ROW_TIMEOUT)
        record["alive_at_end"] = server.alive()
    except Exception as exc:
        record["error"] = server.failure(exc)
    finally:
        await server.stop()
    record["seconds"] = round(time.perf_counter() - t0, 1)
    return record


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--quick", action="store_true", help="smaller counts, for a smoke run")
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="ROW",
        help=f"run only these rows (repeatable or comma-separated): {', '.join(ROWS)}",
    )
    p.add_argument("--ref", default=servers.REF_VERSIONS[0], help="reference version ('' for none)")
    p.add_argument("--json", type=Path, default=None, help="default bench/results/soak-latest.json")
    args = p.parse_args(argv)
    rows: list[str] = []
    for item in args.only:
        for name in filter(None, (n.strip() for n in item.split(","))):
            if name not in ROWS:
                p.error(f"unknown row {name!r}; choose from {', '.join(ROWS)}")
            if name not in rows:
                rows.append(name)
    args.rows = rows or list(ROWS)
    return args


async def run(args: argparse.Namespace) -> int:
    started = dt.datetime.now(dt.UTC)
    t_start = time.perf_counter()
    sizes = SoakSizes.quick() if args.quick else SoakSizes()
    raise_fd_limit()
    specs = [servers.ours()]
    skipped: dict[str, str] = {}
    if args.ref:
        spec, why = servers.install_reference(args.ref)
        if spec is None:
            skipped[f"ref-{args.ref.removesuffix('.0')}"] = why
            log(f"note: reference {args.ref} skipped: {why}")
        else:
            specs.append(spec)
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for i, row in enumerate(args.rows):
        order = specs if i % 2 == 0 else specs[::-1]
        for spec in order:
            log(f"{row} {spec.name} ...")
            record = await run_row(spec, row, sizes)
            results.setdefault(row, {})[spec.name] = record
            record["pass"] = verdicts(row, record.get("metrics"))
            ok = "error" not in record and all(record["pass"].values())
            outcome = record.get("error") or ("pass" if ok else "FAIL")
            log(f"{row} {spec.name}: {outcome} ({record.get('seconds', 0)} s)")

    names = [s.name for s in specs]
    duration = time.perf_counter() - t_start
    print()
    print(table(results, names))
    for name, why in skipped.items():
        print(f"{name}: skipped: {why}")
    out = args.json or RESULTS / "soak-latest.json"
    print(f"\n{duration / 60:.1f} min; results in {out}")
    payload = {
        "started": started.isoformat(timespec="seconds"),
        "duration_s": round(duration, 1),
        "host": report.host_info(),
        "quick": args.quick,
        "sizes": asdict(sizes),
        "conditions": {"rss_bound_mib": RSS_BOUND / MiB, "rss_tolerance_mib": RSS_TOLERANCE / MiB},
        "servers": {s.name: {"argv": list(s.argv), "cwd": s.cwd} for s in specs},
        "skipped": skipped,
        "rows": results,
    }
    report.write_json(out, payload)
    if args.json is None:
        report.write_json(RESULTS / f"soak-{started.strftime('%Y%m%d-%H%M%S')}.json", payload)
    failed = any(
        "error" in rec or not all(rec["pass"].values())
        for per_server in results.values()
        for name, rec in per_server.items()
        if name == report.OURS
    )
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    return run_on_fast_loop(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
