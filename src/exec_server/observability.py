"""What an operator watches: metrics, structured event logs, and the event loop's heartbeat.

One place counts. Handlers call ``server.metrics.process_started(...)``; nothing else keeps
a counter or a registry. Counting is plain integer arithmetic, cheap enough for every
request; ``prometheus_client`` is imported on the first scrape of ``GET /metrics`` only, so a
server started per session (stdio) never loads it. The exposition itself is the library's:
a collector built from these counts at each scrape.

Every label value is chosen by the server (a method name it knows, an error code, a limit's
name), never taken from a client's request, so a client cannot grow the series without bound.

Events (a connection opened, a handshake judged, a session created, a process started or
exited) go to the ``exec_server.events`` logger at INFO, each with its fields; ``--log-format
json`` writes them as one JSON object per line (:class:`JsonFormatter`). These events are the
one record of a connection's and a session's life: no other module logs them again at INFO.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

events_log = logging.getLogger("exec_server.events")

SPAWN_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
"""Upper bounds of the spawn latency histogram: a plain spawn takes about a millisecond, a
sandboxed one (bubblewrap) tens of milliseconds. Few buckets: each is a line of every
scrape, and formatting lines is most of a scrape's cost."""

HEARTBEAT_INTERVAL_S = 1.0
"""How often the event loop proves it is alive (one timer: nothing measurable)."""

STALL_LIMIT_S = 5.0
"""``/healthz`` fails once the loop has missed its heartbeat by this much: far beyond any
honest pause (a collection, a burst of spawns), well inside a liveness probe's period."""

UNKNOWN_METHOD = "(unknown)"
"""The ``method`` label of errors for a method this server does not have (a client's string
is never a label)."""


class Histogram:
    """Counts of observations at or below each bound, their number and their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        index = 0
        for bound in self.bounds:  # a handful: no need for bisect (nor its import at start)
            if value <= bound:
                break
            index += 1
        self.counts[index] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count)`` pairs as Prometheus wants them, the last one ``+Inf``."""
        running, pairs = 0, []
        for bound, count in zip((*map(repr, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            pairs.append((bound, running))
        return pairs


class Metrics:
    """Every count a server keeps, and its events; one per server.

    Gauges of things the server already holds (sessions, processes by state) are not
    counted twice: :meth:`watch` gives functions that read them at scrape time.
    """

    def __init__(self) -> None:
        self.connections_open = 0
        self.connections_total = 0
        self.handshakes: dict[str, int] = {}
        self.sessions_created = 0
        self.starts = {False: 0, True: 0}
        self.start_failures: dict[str, int] = {}
        self.spawn_seconds = {False: Histogram(SPAWN_BUCKETS_S), True: Histogram(SPAWN_BUCKETS_S)}
        self.exits: dict[str, int] = {}
        self.bytes_out = 0
        self.rpc_errors: dict[tuple[str, int], int] = {}
        self.backpressure_pauses = 0
        self.limit_refusals: dict[str, int] = {}
        self._sessions: Callable[[], int] = lambda: 0
        self._processes: Callable[[], Mapping[str, int]] = dict
        self._draining: Callable[[], bool] = lambda: False
        self._next_connection = 0
        self._texts: dict[str, tuple[Any, bytes]] = {}

    def watch(
        self,
        sessions: Callable[[], int],
        processes: Callable[[], Mapping[str, int]],
        draining: Callable[[], bool],
    ) -> None:
        """How to read the gauges: live sessions, processes by state, whether draining."""
        self._sessions = sessions
        self._processes = processes
        self._draining = draining

    # ---- connections and handshakes ---------------------------------------------------------

    def connection_opened(self, peer: str) -> int:
        """A client connection was accepted (a WebSocket upgraded, or stdio began); returns
        its number, for the events of its life."""
        self._next_connection += 1
        self.connections_open += 1
        self.connections_total += 1
        _event("connection opened", connection=self._next_connection, peer=peer)
        return self._next_connection

    def connection_closed(
        self, connection: int, reason: str, session: str | None, session_after: str
    ) -> None:
        """Connection number ``connection`` ended for ``reason`` (a server's words); its
        ``session`` (None before ``initialize``) is then ``session_after`` (detached, ended,
        or resumed elsewhere)."""
        self.connections_open -= 1
        if session is None:
            _event("connection closed", connection=connection, reason=reason)
        else:
            _event(
                "connection closed",
                connection=connection,
                reason=reason,
                session=session,
                session_after=session_after,
            )

    def handshake(self, peer: str, path: str, status: int) -> None:
        """An HTTP request was judged: ``status`` 101 upgraded, 401 no or a wrong token, ..."""
        outcome = _OUTCOMES.get(status, "other")
        key = f"{outcome}:{path}" if path in _KNOWN_PATHS else f"{outcome}:other"
        self.handshakes[key] = self.handshakes.get(key, 0) + 1
        if path in _PROBE_PATHS and status < 400:
            return  # probes every few seconds: counted, not logged
        _event("handshake", peer=peer, path=path[:64], status=status, auth=outcome)

    def sent(self, size: int) -> None:
        """``size`` bytes went out to a client."""
        self.bytes_out += size

    # ---- sessions -----------------------------------------------------------------------------

    def session_created(self, session: str, connection: int, client: str) -> None:
        """``client``: the name the client gave in ``initialize`` (its string, shortened)."""
        self.sessions_created += 1
        _event("session created", session=session, connection=connection, client=client[:64])

    def session_resumed(self, session: str, connection: int, client: str) -> None:
        _event("session resumed", session=session, connection=connection, client=client[:64])

    def session_ended(self, session: str) -> None:
        _event("session ended", session=session)

    # ---- processes ----------------------------------------------------------------------------

    def process_started(
        self, session: str, process: str, *, sandboxed: bool, spawn_s: float
    ) -> None:
        self.starts[sandboxed] += 1
        self.spawn_seconds[sandboxed].observe(spawn_s)
        if events_log.isEnabledFor(logging.INFO):
            _event(
                "process started",
                session=session,
                process=process[:200],
                sandboxed=sandboxed,
                spawn_ms=round(spawn_s * 1000, 3),
            )

    def process_start_failed(self, reason: str) -> None:
        """A start was refused or failed (``reason``: the error's kind, a server's word)."""
        self.start_failures[reason] = self.start_failures.get(reason, 0) + 1

    def process_exited(
        self, session: str, process: str, exit_code: int, cause: str, duration_s: float
    ) -> None:
        self.exits[cause] = self.exits.get(cause, 0) + 1
        if events_log.isEnabledFor(logging.INFO):
            _event(
                "process exited",
                session=session,
                process=process[:200],
                exit_code=exit_code,
                terminated_by=cause,
                duration_ms=round(duration_s * 1000, 3),
            )

    # ---- requests and flow ----------------------------------------------------------------------

    def rpc_error(self, method: str, code: int) -> None:
        """A request was answered with an error (``method``: a known method's name, or
        :data:`UNKNOWN_METHOD`)."""
        key = (method, code)
        self.rpc_errors[key] = self.rpc_errors.get(key, 0) + 1

    def backpressure_paused(self) -> None:
        """A slow client made its session's output stop being read."""
        self.backpressure_pauses += 1

    def limit_refused(self, limit: str) -> None:
        """A request was refused because an operator's bound (``limit``: its option) was reached."""
        self.limit_refusals[limit] = self.limit_refusals.get(limit, 0) + 1

    # ---- exposition ---------------------------------------------------------------------------

    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text format of every metric now, and its content type.

        ``prometheus_client`` formats each family; a family whose samples are the same as at
        the previous scrape (most of them, on a steady server) reuses that scrape's text.
        """
        from prometheus_client import exposition

        parts = []
        for family in self.families():
            cached = self._texts.get(family.name)
            if cached is None or cached[0] != family.samples:
                cached = (family.samples, exposition.generate_latest(_OneFamily(family)))
                self._texts[family.name] = cached
            parts.append(cached[1])
        return b"".join(parts), exposition.CONTENT_TYPE_LATEST

    def families(self) -> Iterator[Any]:
        """Every metric family, built from the counts (for the collector)."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        def gauge(name: str, doc: str, value: float) -> Any:
            return GaugeMetricFamily(name, doc, value=value)

        def counter(name: str, doc: str, labels: list[str], values: Mapping[Any, int]) -> Any:
            family = CounterMetricFamily(name, doc, labels=labels)
            for key, value in values.items():
                family.add_metric(list(key) if isinstance(key, tuple) else [str(key)], value)
            return family

        yield gauge(
            "exec_server_sessions", "Sessions held (attached or resumable).", self._sessions()
        )
        yield gauge(
            "exec_server_connections_open", "Client connections open.", self.connections_open
        )
        yield CounterMetricFamily(
            "exec_server_connections_accepted",
            "Client connections accepted.",
            value=self.connections_total,
        )
        yield counter(
            "exec_server_http_requests",
            "HTTP requests judged, by outcome (upgraded, unauthorized, forbidden, ...) and path.",
            ["outcome", "path"],
            {tuple(k.split(":", 1)): v for k, v in self.handshakes.items()},
        )
        yield CounterMetricFamily(
            "exec_server_sessions_opened", "Sessions created.", value=self.sessions_created
        )
        processes = GaugeMetricFamily(
            "exec_server_processes", "Processes held, by state.", labels=["state"]
        )
        counts = self._processes()
        for state in ("starting", "running", "exited", "closed"):
            processes.add_metric([state], counts.get(state, 0))
        yield processes
        yield counter(
            "exec_server_process_starts",
            "Processes started, sandboxed or not.",
            ["sandboxed"],
            {("true" if k else "false",): v for k, v in self.starts.items()},
        )
        yield counter(
            "exec_server_process_start_failures",
            "Starts refused or failed, by reason.",
            ["reason"],
            self.start_failures,
        )
        yield counter(
            "exec_server_process_exits",
            "Processes exited, by what ended them (exit, signal, client, timeout, idle).",
            ["terminated_by"],
            self.exits,
        )
        spawn = HistogramMetricFamily(
            "exec_server_spawn_seconds",
            "From process/start received to the child running (sandbox set-up included).",
            labels=["sandboxed"],
        )
        for sandboxed, histogram in self.spawn_seconds.items():
            if sandboxed and not self.starts[True]:
                continue  # a server that never sandboxed shows the plain series only
            spawn.add_metric(
                ["true" if sandboxed else "false"], histogram.cumulative(), histogram.sum
            )
        yield spawn
        yield CounterMetricFamily(
            "exec_server_sent_bytes", "Bytes sent to clients.", value=self.bytes_out
        )
        yield counter(
            "exec_server_rpc_errors",
            "Requests answered with a JSON-RPC error, by method and code.",
            ["method", "code"],
            {(m, str(c)): v for (m, c), v in self.rpc_errors.items()},
        )
        yield CounterMetricFamily(
            "exec_server_backpressure_pauses",
            "Times a slow client made its processes' output stop being read.",
            value=self.backpressure_pauses,
        )
        yield counter(
            "exec_server_limit_refusals",
            "Requests refused at an operator's limit, by limit.",
            ["limit"],
            self.limit_refusals,
        )
        yield gauge(
            "exec_server_draining", "1 while the server drains before exit.", self._draining()
        )


class _OneFamily:
    """One metric family as the collector ``prometheus_client``'s formatter asks for."""

    def __init__(self, family: Any) -> None:
        self._family = family

    def collect(self) -> Iterator[Any]:
        yield self._family


_OUTCOMES = {
    101: "upgraded",
    200: "answered",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    503: "unavailable",
}
_PROBE_PATHS = frozenset({"/readyz", "/healthz", "/metrics"})
_KNOWN_PATHS = _PROBE_PATHS | {"/"}


def _event(message: str, **fields: Any) -> None:
    """One event at INFO, its fields both in the text and as attributes for JSON."""
    if events_log.isEnabledFor(logging.INFO):
        text = " ".join(f"{key}={_text(value)}" for key, value in fields.items())
        events_log.info("%s %s", message, text, extra={"event": message, "fields": fields})


def _text(value: Any) -> str:
    """A field as text logs show it: a string with a line break or another control character
    (a client's name, a process id) is quoted, so it cannot forge a line of its own."""
    if isinstance(value, str) and not value.isprintable():
        return repr(value)
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, and either ``event`` with its
    fields or ``message`` (and ``exception`` when there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        import json

        entry: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        event = getattr(record, "event", None)
        if event is not None:
            entry["event"] = event
            entry.update(getattr(record, "fields", {}))
        else:
            entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class Heartbeat:
    """The event loop's proof of life: a timer that records when it last ran.

    A loop that is stuck answers nothing at all (``/healthz`` is served by the loop itself,
    so a liveness probe then times out, which is a failure); a loop that ran late by more than
    ``stall_limit_s`` answers 503 on its first turn back.
    """

    def __init__(
        self, interval_s: float = HEARTBEAT_INTERVAL_S, stall_limit_s: float = STALL_LIMIT_S
    ) -> None:
        self.interval_s = interval_s
        self.stall_limit_s = stall_limit_s
        self._last = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Beat on the running loop until :meth:`stop`."""
        if self._timer is None:
            self._beat()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _beat(self) -> None:
        self._last = time.monotonic()
        self._timer = asyncio.get_running_loop().call_later(self.interval_s, self._beat)

    def stalled_s(self) -> float:
        """How late the heartbeat is now (0 while on time, or before it started)."""
        if self._timer is None:
            return 0.0
        return max(0.0, time.monotonic() - self._last - self.interval_s)

    def problem(self) -> str | None:
        """None while healthy, else what is wrong, in words."""
        late = self.stalled_s()
        if late > self.stall_limit_s:
            return f"the event loop was stalled: its heartbeat is {late:.1f} s late"
        return None
