"""Turning runs into medians, ratios ours/reference, a text table and bench/results/*.json."""

from __future__ import annotations

import json
import os
import platform
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OURS = "ours"
TRANSPORT_TITLES = {"ws": "WebSocket", "stdio": "stdio"}


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_better: bool = False
    ratio_limit: float | None = None  # ours/reference must be <= (or >= if higher_better)
    abs_limit: float | None = None  # ours must be below this, whatever the reference does
    abs_ws_only: bool = False

    def target(self) -> str:
        parts = []
        if self.ratio_limit is not None:
            parts.append(f"{'>=' if self.higher_better else '<='}{self.ratio_limit:g}x")
        if self.abs_limit is not None:
            scope = " ws" if self.abs_ws_only else ""
            parts.append(f"<{self.abs_limit:g}{self.unit}{scope}")
        return ", ".join(parts)


METRICS: tuple[Metric, ...] = (
    Metric("spawn_median_ms", "spawn latency, median", "ms", False, 1.0, 5.0, True),
    Metric("spawn_p95_ms", "spawn latency, p95", "ms"),
    Metric("rtt_median_ms", "PTY round trip, median", "ms", False, 1.0, 1.0, True),
    Metric("rtt_p95_ms", "PTY round trip, p95", "ms"),
    Metric("throughput_pipe_mibs", "throughput, pipe", "MiB/s", True, 1.0),
    # Parity rows: the kernel (PTY refills) and the bench client (polling) set the pace, so
    # the target is a median of at least 0.9 of the reference's (issue 12).
    Metric("throughput_pty_mibs", "throughput, PTY", "MiB/s", True, 0.9),
    Metric("cpu_pipe_s_per_gib", "server CPU per GiB, pipe", "s"),
    Metric("cpu_pty_s_per_gib", "server CPU per GiB, PTY", "s"),
    Metric("fanout_wall_s", "fan-out wall time", "s", False, 1.0),
    Metric("fanout_peak_rss_mib", "fan-out peak server RSS", "MiB", False, 0.5),
    Metric("poll_rps", "polling process/read", "req/s", True, 0.9),
    Metric("hol_latency_ms", "request behind a long poll", "ms", False, None, 5.0),
    Metric("rss_base_mib", "server RSS, no children", "MiB"),
    Metric("rss_idle_mib", "server RSS, idle children", "MiB", False, 1.0),
    Metric("startup_reply_ms", "start to initialize reply", "ms", False, None, 100.0),
    Metric("startup_exit_ms", "start to exit", "ms"),
    Metric("sandbox_spawn_median_ms", "sandboxed true (workspace-write)", "ms", False, 1.0),
    Metric("sandbox_bare_bwrap_ms", "bare bwrap true, same run", "ms"),
    # issue 17: the launcher's seccomp, cgroup and carve-outs within 1.5x of bwrap's own cost
    Metric("sandbox_over_bare", "sandboxed true / bare bwrap", "x", False, None, 1.5),
    # The floor: `python -c "import asyncio"`, timed right after each start (issue 21).
    Metric("startup_floor_ms", "python -c 'import asyncio' (floor)", "ms"),
    Metric("startup_over_floor", "start to initialize reply / floor", "x", False, None, 1.3),
    # Issue 18's goal: at least the reference's throughput, latency within 1 ms of it.
    Metric("proxy_fetch_mibs", "HTTP fetch through the proxy", "MiB/s", True, 1.0),
    Metric("proxy_added_latency_ms", "latency the proxy adds", "ms"),
    Metric("cli_pty_mibs", "CLI run -t, PTY output", "MiB/s"),
    Metric("cli_pty_vs_local", "CLI run -t / local PTY", "x"),
)
METRIC_BY_KEY = {m.key: m for m in METRICS}


def medians(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """{transport: {metric: {server: median over repetitions}}}."""
    values: dict[str, dict[str, dict[str, list[float]]]] = {}
    for run in runs:
        for key, value in run.get("metrics", {}).items():
            per_metric = values.setdefault(run["transport"], {}).setdefault(key, {})
            per_metric.setdefault(run["server"], []).append(value)
    return {
        transport: {
            key: {server: statistics.median(v) for server, v in per_server.items()}
            for key, per_server in per_key.items()
        }
        for transport, per_key in values.items()
    }


def ratios(
    meds: dict[str, dict[str, dict[str, float]]], refs: list[str]
) -> dict[str, dict[str, dict[str, float]]]:
    """{transport: {metric: {reference: ours/reference}}} where both sides have a value."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for transport, per_key in meds.items():
        for key, per_server in per_key.items():
            ours = per_server.get(OURS)
            for ref in refs:
                theirs = per_server.get(ref)
                if ours is not None and theirs:
                    out.setdefault(transport, {}).setdefault(key, {})[ref] = ours / theirs
    return out


def verdict(metric: Metric, transport: str, ours: float | None, rat: dict[str, float]) -> str:
    """ "ok", "MISS" or "" (no target, or nothing of ours to judge)."""
    if ours is None:
        return ""
    checks: list[bool] = []
    if metric.ratio_limit is not None and rat:
        for r in rat.values():
            checks.append(
                r >= metric.ratio_limit if metric.higher_better else r <= metric.ratio_limit
            )
    if metric.abs_limit is not None and (transport == "ws" or not metric.abs_ws_only):
        checks.append(ours < metric.abs_limit)
    if not checks:
        return ""
    return "ok" if all(checks) else "MISS"


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if value >= 0.1 else f"{value:.3f}"


def table(
    meds: dict[str, dict[str, dict[str, float]]],
    rats: dict[str, dict[str, dict[str, float]]],
    servers: list[str],
    refs: list[str],
) -> str:
    """One block per transport: a row per metric, medians per server, ratios, target."""
    lines: list[str] = []
    short = {ref: ref.removeprefix("ref-") for ref in refs}
    header = ["metric", "unit", *servers, *(f"ours/{short[r]}" for r in refs), "target", ""]
    for transport in ("ws", "stdio"):
        per_key = meds.get(transport)
        if not per_key:
            continue
        rows = [header]
        for metric in METRICS:
            per_server = per_key.get(metric.key)
            if not per_server:
                continue
            rat = rats.get(transport, {}).get(metric.key, {})
            ours = per_server.get(OURS)
            rows.append(
                [
                    metric.label,
                    metric.unit,
                    *(fmt(per_server.get(s)) for s in servers),
                    *(fmt(rat.get(r)) for r in refs),
                    metric.target(),
                    verdict(metric, transport, ours, rat),
                ]
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines.append(f"== {TRANSPORT_TITLES[transport]} (median of repetitions) ==")
        for row in rows:
            cells = [
                cell.ljust(w) if i < 2 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            ]
            lines.append("  ".join(cells).rstrip())
        lines.append("")
    return "\n".join(lines)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def host_info() -> dict[str, Any]:
    """The machine a run's JSON was measured on, and how loaded it was at the end."""
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_at_end": os.getloadavg(),
    }
