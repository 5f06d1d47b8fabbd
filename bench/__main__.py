"""`python -m bench`: run the workloads against ours and the references, alternating."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import resource
import shlex
import sys
import time
from collections.abc import Coroutine
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import report, servers, workloads
from bench.servers import ServerSpec, ServerStartError

RESULTS = Path(__file__).resolve().parent / "results"
WORKLOAD_TIMEOUT = 900.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    names = ", ".join([*workloads.WORKLOADS, *workloads.SPEC_WORKLOADS, *workloads.ALIASES])
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--reps", type=int, default=None, help="repetitions (default 3, --quick 1)")
    p.add_argument("--quick", action="store_true", help="1 repetition, smaller sizes")
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help=f"run only these workloads (repeatable or comma-separated): {names}",
    )
    p.add_argument("--transport", choices=("ws", "stdio", "both"), default="both")
    p.add_argument(
        "--refs",
        default=",".join(servers.REF_VERSIONS),
        help="reference versions to install and run, comma-separated ('' for none)",
    )
    p.add_argument("--no-ours", action="store_true", help="run the references only")
    p.add_argument(
        "--server",
        action="append",
        default=[],
        metavar="NAME=COMMAND",
        help="another build to compare with ours, e.g. an older checkout: "
        "old='env X=1 /path/.venv/bin/exec-server' (repeatable; it speaks our dialect)",
    )
    p.add_argument(
        "--ws-library",
        action="store_true",
        help="use the `websockets` package as WebSocket client (slower; for cross-checks)",
    )
    p.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    args = p.parse_args(argv)
    selected: list[str] = []
    for item in args.only:
        for name in filter(None, (n.strip() for n in item.split(","))):
            name = workloads.ALIASES.get(name, name)
            if name not in workloads.WORKLOADS and name not in workloads.SPEC_WORKLOADS:
                p.error(f"unknown workload {name!r}; choose from {names}")
            if name not in selected:
                selected.append(name)
    args.workloads = selected or [*workloads.WORKLOADS, *workloads.SPEC_WORKLOADS]
    args.transports = ["ws", "stdio"] if args.transport == "both" else [args.transport]
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    return args


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def raise_fd_limit() -> None:
    """500 idle children hold ~1500 pipe ends in the server: give every server the same room."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def collect_servers(args: argparse.Namespace) -> tuple[list[ServerSpec], dict[str, str]]:
    specs: list[ServerSpec] = [] if args.no_ours else [servers.ours()]
    for item in args.server:
        name, _, command = item.partition("=")
        specs.append(servers.other(name, shlex.split(command)))
    notes: dict[str, str] = {}
    for version in filter(None, (v.strip() for v in args.refs.split(","))):
        spec, why = servers.install_reference(version)
        if spec is None:
            notes[f"ref-{version.removesuffix('.0')}"] = f"skipped: {why}"
            log(f"note: reference {version} skipped: {why}")
        else:
            specs.append(spec)
    return specs, notes


async def preflight(
    specs: list[ServerSpec], transports: list[str], ws_library: bool
) -> dict[tuple[str, str], str]:
    """Start and stop every (server, transport) once; map each that cannot run to why."""
    broken: dict[tuple[str, str], str] = {}
    for spec in specs:
        for transport in transports:
            if transport not in spec.transports:
                broken[spec.name, transport] = f"no {transport} listener in this release"
                continue
            try:
                server = await servers.start_server(spec, transport, ws_library=ws_library)
            except ServerStartError as exc:
                broken[spec.name, transport] = f"not runnable: {exc}"
                log(f"{spec.name} ({transport}): not runnable: {exc}")
                continue
            await server.stop()
    return broken


async def run_one(
    spec: ServerSpec, transport: str, name: str, sizes: workloads.Sizes, ws_library: bool
) -> dict[str, Any]:
    record: dict[str, Any] = {"server": spec.name, "transport": transport, "workload": name}
    t0 = time.perf_counter()
    if name in workloads.SPEC_WORKLOADS:
        try:
            work = workloads.SPEC_WORKLOADS[name](spec, sizes)
            record["metrics"] = await asyncio.wait_for(work, WORKLOAD_TIMEOUT)
        except Exception as exc:
            record["error"] = f"{type(exc).__name__}: {exc}"
        record["seconds"] = round(time.perf_counter() - t0, 3)
        return record
    try:
        server = await servers.start_server(spec, transport, ws_library=ws_library)
    except ServerStartError as exc:
        record["error"] = f"start: {exc}"
        return record
    try:
        work = workloads.WORKLOADS[name](server, sizes)
        record["metrics"] = await asyncio.wait_for(work, WORKLOAD_TIMEOUT)
    except Exception as exc:
        record["error"] = server.failure(exc)
    finally:
        await server.stop()
    record["seconds"] = round(time.perf_counter() - t0, 3)
    return record


def _short(metrics: dict[str, float]) -> str:
    keys = [k for k in metrics if k in report.METRIC_BY_KEY]
    return " ".join(f"{k}={metrics[k]:.4g}" for k in keys)


async def run(args: argparse.Namespace) -> int:
    started = dt.datetime.now(dt.UTC)
    t_start = time.perf_counter()
    sizes = workloads.Sizes.quick() if args.quick else workloads.Sizes()
    raise_fd_limit()
    specs, notes = collect_servers(args)
    broken = await preflight(specs, args.transports, args.ws_library)
    for (name, transport), why in broken.items():
        if why.startswith("no "):
            log(f"note: {name} over {transport} skipped: {why}")

    runs: list[dict[str, Any]] = []
    reps = {name: args.reps * workloads.REP_FACTOR.get(name, 1) for name in args.workloads}
    for rep in range(1, max(reps.values(), default=0) + 1):
        for name in args.workloads:
            if rep > reps[name]:
                continue
            for transport in args.transports:
                if name in workloads.SPEC_WORKLOADS and transport != "stdio":
                    continue
                if name in workloads.WS_ONLY and transport != "ws":
                    continue
                for spec in specs:
                    if (spec.name, transport) in broken:
                        continue
                    record = await run_one(spec, transport, name, sizes, args.ws_library)
                    record["rep"] = rep
                    runs.append(record)
                    outcome = (
                        f"ERROR {record['error']}"
                        if "error" in record
                        else _short(record["metrics"])
                    )
                    log(f"[{rep}/{reps[name]}] {name:<10} {transport:<5} {spec.name:<9} {outcome}")

    names = [s.name for s in specs]
    refs = [n for n in names if n != report.OURS]
    meds = report.medians(runs)
    rats = report.ratios(meds, refs)
    print()
    print(report.table(meds, rats, names, refs))
    for (name, transport), why in sorted(broken.items()):
        print(f"{name} over {transport}: {why.splitlines()[0][:300]}")
    for name, why in notes.items():
        print(f"{name}: {why}")
    errors = [r for r in runs if "error" in r]
    for r in errors:
        print(f"error: {r['server']} {r['transport']} {r['workload']} rep {r['rep']}: {r['error']}")
    duration = time.perf_counter() - t_start
    print(f"\n{len(runs)} runs in {duration / 60:.1f} min; results in {args.out}")

    payload = {
        "started": started.isoformat(timespec="seconds"),
        "duration_s": round(duration, 1),
        "host": report.host_info(),
        "options": {
            "reps": args.reps,
            "reps_by_workload": reps,
            "quick": args.quick,
            "workloads": args.workloads,
            "transports": args.transports,
            "ws_client": "websockets" if args.ws_library else "bench.wsclient",
        },
        "sizes": asdict(sizes),
        "servers": {
            s.name: {
                "argv": list(s.argv),
                "cwd": s.cwd,
                "transports": {
                    t: broken.get((s.name, t), "ok")
                    for t in sorted(s.transports | {*args.transports})
                },
            }
            for s in specs
        },
        "skipped": notes,
        "metrics": {
            m.key: {"label": m.label, "unit": m.unit, "target": m.target()} for m in report.METRICS
        },
        "medians": meds,
        "ratios_ours_over_ref": rats,
        "runs": runs,
    }
    report.write_json(args.out, payload)
    stamp = started.strftime("%Y%m%d-%H%M%S")
    if args.out.parent == RESULTS:
        report.write_json(RESULTS / f"run-{stamp}.json", payload)
    return 0


def run_on_fast_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run a bench's client side; the client's own speed is not under test, so it gets
    uvloop where installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def main(argv: list[str] | None = None) -> int:
    return run_on_fast_loop(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
