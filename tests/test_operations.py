"""Operating a server: the drain on SIGTERM, /healthz, /metrics, and JSON logs."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exec_server.client import ConnectionFailed, RpcError, ServerShutdown, State, connect
from exec_server.config import Limits
from exec_server.observability import Heartbeat, Histogram, Metrics
from exec_server.server import Server
from exec_server.transport.websocket import serve_websocket

from .support import Client, http_get, running_server, wait_until
from .test_cli import CliServer, cli_server

SHORT = ["sh", "-c", "sleep 0.5; echo done"]
LONG = ["sleep", "100"]


async def test_sigterm_drains_50_processes_each_client_gets_its_exit_or_the_reason() -> None:
    async with cli_server("--drain-timeout", "5") as server:
        async with contextlib.AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(connect(server.url, reconnect_timeout=2))
                for _ in range(5)
            ]
            started = []
            for index in range(50):
                client = clients[index % 5]
                argv = SHORT if index % 2 == 0 else LONG
                started.append((argv, await client.start(argv)))
            server.proc.send_signal(signal.SIGTERM)
            # Draining: not ready, no new session, no new process; running ones go on.
            status = 0
            for _ in range(500):  # the signal is handled on the server's next loop turn
                status, _, _ = await http_get(server.url, "/readyz")
                if status == 503:
                    break
                await asyncio.sleep(0.02)
            assert status == 503
            with pytest.raises(RpcError, match="takes no new session"):
                async with connect(server.url, reconnect=False):
                    pass
            with pytest.raises(RpcError, match="shutting down"):
                await clients[0].start(["true"])
            finished, lost = 0, 0
            for argv, process in started:
                if argv is SHORT:
                    assert await process.wait() == 0
                    assert await process.stdout.read() == b"done\n"
                    finished += 1
                else:
                    with pytest.raises(ServerShutdown) as shut:
                        await process.wait()
                    assert "drain timeout (5 s) passed" in shut.value.reason
                    assert shut.value.executor == server.url
                    lost += 1
            assert (finished, lost) == (25, 25)
        rc, stderr = await server.wait_exit()
        assert rc == 0, stderr


async def test_a_drain_ends_as_soon_as_every_process_has_finished() -> None:
    async with cli_server("--drain-timeout", "60") as server:
        async with connect(server.url) as client:
            process = await client.start(SHORT)
            server.proc.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
            assert await wait_until(lambda: client.state is State.CLOSED)
            with pytest.raises(ServerShutdown, match="drained, every process finished"):
                await client.start(["true"])
        rc, stderr = await server.wait_exit()  # well before the 60 s
        assert rc == 0, stderr


async def test_a_detached_session_can_be_resumed_during_a_drain_to_learn_its_exits() -> None:
    async with cli_server("--drain-timeout", "10", "--detach-grace", "30") as server:
        async with Client.connect(server.url) as first:
            session = (await first.initialize())["sessionId"]
            await first.start("p", ["sh", "-c", "sleep 1; echo finished"])
        server.proc.send_signal(signal.SIGTERM)  # while the session is detached
        for _ in range(500):
            if (await http_get(server.url, "/readyz"))[0] == 503:
                break
            await asyncio.sleep(0.02)
        async with Client.connect(server.url) as second:
            await second.initialize(resumeSessionId=session)
            read = await second.read("p", afterSeq=0, waitMs=5000)
            while not read["closed"]:
                read = await second.read("p", afterSeq=read["nextSeq"] - 1, waitMs=5000)
            assert read["exited"] and read["exitCode"] == 0
        rc, stderr = await server.wait_exit()
        assert rc == 0, stderr


# ---- /healthz -------------------------------------------------------------------------------


@contextlib.contextmanager
def server_on_its_own_loop() -> Iterator[tuple[asyncio.AbstractEventLoop, str]]:
    """A server whose event loop runs in a thread, so a test can make that loop stall."""
    loop = asyncio.new_event_loop()
    bound: list[str] = []
    server: list[tuple[Server, asyncio.Server]] = []

    async def start() -> None:
        built = Server(Limits())
        listener = await serve_websocket(
            built, "127.0.0.1", 0, on_bound=lambda h, p: bound.append(f"ws://{h}:{p}")
        )
        server.append((built, listener))

    async def stop() -> None:
        built, listener = server[0]
        listener.close()
        await built.shutdown()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield loop, bound[0]
    finally:
        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


async def test_healthz_gets_no_answer_while_the_event_loop_is_stuck() -> None:
    with server_on_its_own_loop() as (loop, url):
        assert (await http_get(url, "/healthz"))[0] == 200
        loop.call_soon_threadsafe(time.sleep, 3)  # a handler that blocks the loop
        with pytest.raises(TimeoutError):
            await http_get(url, "/healthz", timeout=1.0)
        assert await wait_until_healthy(url)


async def wait_until_healthy(url: str) -> bool:
    for _ in range(50):
        with contextlib.suppress(TimeoutError, OSError):
            if (await http_get(url, "/healthz", timeout=1.0))[0] == 200:
                return True
        await asyncio.sleep(0.1)
    return False


async def test_a_heartbeat_that_ran_late_is_a_problem() -> None:
    heartbeat = Heartbeat(interval_s=0.05, stall_limit_s=0.2)
    assert heartbeat.problem() is None  # not started: nothing to judge
    heartbeat.start()
    await asyncio.sleep(0.1)
    assert heartbeat.problem() is None
    time.sleep(0.5)  # noqa: ASYNC251  (the point: the loop is blocked, no beat can run)
    problem = heartbeat.problem()
    assert problem is not None and "stalled" in problem
    await asyncio.sleep(0.1)  # a beat ran
    assert heartbeat.problem() is None
    heartbeat.stop()


# ---- /metrics -------------------------------------------------------------------------------


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text, by name and labels (parsed by prometheus_client)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def test_metrics_count_sessions_processes_errors_and_limits_and_need_the_token() -> None:
    limits = Limits(max_processes_per_session=1)
    async with running_server(limits, token="s3cret") as (_, url):
        assert (await http_get(url, "/metrics"))[0] == 401
        headers = {"Authorization": "Bearer s3cret"}
        async with Client.connect(url, additional_headers=headers) as client:
            await client.initialize()
            await client.run("a", ["sh", "-c", "echo hi"])
            await client.start("b", ["sleep", "100"])
            refused = await client.request(
                "process/start",
                {"processId": "c", "argv": ["true"], "cwd": "/", "env": {}, "tty": False},
            )
            assert "max-processes-per-session" in refused["error"]["message"]
            await client.request("no/such/method")
            status, head, body = await http_get(url, "/metrics", token="s3cret")
    assert status == 200
    assert head["content-type"].startswith("text/plain; version=")
    found = samples(body)
    assert found[("exec_server_sessions", ())] == 1
    assert found[("exec_server_sessions_opened_total", ())] == 1
    assert found[("exec_server_connections_open", ())] == 1
    assert found[("exec_server_process_starts_total", (("sandboxed", "false"),))] == 2
    assert found[("exec_server_processes", (("state", "running"),))] == 1
    assert found[("exec_server_processes", (("state", "closed"),))] == 1
    assert found[("exec_server_process_exits_total", (("terminated_by", "exit"),))] == 1
    spawn_count = ("exec_server_spawn_seconds_count", (("sandboxed", "false"),))
    assert found[spawn_count] == 2
    limit = ("exec_server_limit_refusals_total", (("limit", "max_processes_per_session"),))
    assert found[limit] == 1
    unknown = (("code", "-32601"), ("method", "(unknown)"))
    assert found[("exec_server_rpc_errors_total", unknown)] == 1
    start_error = (("code", "-32600"), ("method", "process/start"))
    assert found[("exec_server_rpc_errors_total", start_error)] == 1
    assert found[("exec_server_sent_bytes_total", ())] > 0
    assert found[("exec_server_draining", ())] == 0
    unauthorized = (("outcome", "unauthorized"), ("path", "/metrics"))
    assert found[("exec_server_http_requests_total", unauthorized)] == 1


async def test_metrics_public_needs_no_token_but_a_session_still_does() -> None:
    async with running_server(token="s3cret", metrics_public=True) as (_, url):
        status, _, body = await http_get(url, "/metrics")
        assert status == 200 and "exec_server_sessions" in body
        assert (await http_get(url, "/"))[0] == 401


async def test_a_slow_client_is_counted_as_a_backpressure_pause() -> None:
    limits = Limits(outbound_queue_bytes=64 * 1024)
    async with running_server(limits) as (server, url), Client.connect(url) as client:
        await client.initialize()
        await client.start("big", ["sh", "-c", "sleep 0.3; head -c 50000000 /dev/zero"])
        client.ws.transport.pause_reading()  # the client stops reading
        assert await wait_until(lambda: server.metrics.backpressure_pauses > 0)
        client.ws.transport.resume_reading()
        await client.call("process/terminate", {"processId": "big"})


# ---- logs -----------------------------------------------------------------------------------


async def _one_session_then_sigterm(server: CliServer, **options: Any) -> tuple[str, str]:
    """One connection running `true`, then the server drained on SIGTERM: the session's id
    and the server's stderr."""
    async with connect(server.url, **options) as client:
        await client.run(["true"])
        session = client.session_id
    server.proc.send_signal(signal.SIGTERM)
    rc, stderr = await server.wait_exit()
    assert rc == 0, stderr
    return session, stderr


async def test_json_logs_have_one_object_per_line_with_ids_and_durations(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    async with cli_server("--log-format", "json", "--auth-token-file", str(token_file)) as server:
        with pytest.raises(ConnectionFailed):
            async with connect(server.url, token="wrong", reconnect=False):
                pass
        session, stderr = await _one_session_then_sigterm(server, token="s3cret")
    entries = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    events = {entry.get("event"): entry for entry in entries}
    outcomes = [entry["auth"] for entry in entries if entry.get("event") == "handshake"]
    assert outcomes == ["unauthorized", "upgraded"]  # the wrong token, then the right one
    assert events["connection opened"]["connection"] >= 1
    assert events["session created"]["session"] == session
    started, exited = events["process started"], events["process exited"]
    assert started["session"] == session and started["process"] == exited["process"]
    assert started["sandboxed"] is False and started["spawn_ms"] >= 0
    assert exited["exit_code"] == 0 and exited["duration_ms"] >= 0
    assert all({"ts", "level", "logger"} <= entry.keys() for entry in entries)


ONE_CONNECTION_EVENTS = Counter(
    {
        "handshake": 1,
        "connection opened": 1,
        "session created": 1,
        "process started": 1,
        "process exited": 1,
        "connection closed": 1,
        "session ended": 1,  # at the drain: the detached session's grace is cut short
    }
)
"""Every INFO record of one connection's life, each once: the events are their one record."""


def _info_records(stderr: str, log_format: str) -> list[tuple[str, str]]:
    """``(logger, event name or message)`` of each INFO line of a server's stderr."""
    records = []
    for line in stderr.splitlines():
        if log_format == "json":
            entry = json.loads(line)
            if entry["level"] == "info":
                records.append((entry["logger"], entry.get("event") or entry["message"]))
            continue
        _date, _time, level, rest = line.split(" ", 3)
        if level == "INFO":
            logger, _, message = rest.partition(": ")
            records.append((logger, re.sub(r" \w+=.*", "", message)))
    return records


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_each_event_of_a_connection_is_logged_once_at_info(log_format: str) -> None:
    args = ("--log-format", log_format, "--log-level", "INFO")
    async with cli_server(*args) as server:
        session, stderr = await _one_session_then_sigterm(server, client_name="two\nlines")
    records = _info_records(stderr, log_format)
    assert {logger for logger, _ in records} == {"exec_server.events"}, records
    assert Counter(event for _, event in records) == ONE_CONNECTION_EVENTS, records
    if log_format == "text":  # what a person reading it needs, on the lines that say it
        created = next(line for line in stderr.splitlines() if "session created" in line)
        assert f"session={session} connection=1 client='two\\nlines'" in created
        closed = next(line for line in stderr.splitlines() if "connection closed" in line)
        assert "reason=the client closed it (code 1000)" in closed
        assert f"session={session} session_after=detached" in closed


def test_the_spawn_histogram_counts_each_value_in_the_first_bucket_that_holds_it() -> None:
    histogram = Histogram((0.001, 0.01, 0.1))
    for value in (0.0005, 0.001, 0.005, 0.1, 0.5):
        histogram.observe(value)
    assert histogram.cumulative() == [("0.001", 2), ("0.01", 3), ("0.1", 4), ("+Inf", 5)]
    assert histogram.sum == pytest.approx(0.6065)


def test_a_scrape_after_a_change_shows_it_and_the_unchanged_families_as_before() -> None:
    """Families whose samples did not change reuse the previous scrape's text: a change in
    one of them (a new label too) must still show, and nothing else may move."""
    metrics = Metrics()
    metrics.watch(lambda: 1, lambda: {"running": 3}, lambda: False)
    metrics.handshake("peer", "/metrics", 200)
    first = metrics.exposition()[0].decode()
    metrics.handshake("peer", "/metrics", 200)
    metrics.limit_refused("--max-processes")
    second = metrics.exposition()[0].decode()

    def values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    before, after = values(first), values(second)
    requests = ("exec_server_http_requests_total", (("outcome", "answered"), ("path", "/metrics")))
    refusals = ("exec_server_limit_refusals_total", (("limit", "--max-processes"),))
    assert (before[requests], after[requests]) == (1, 2)
    assert refusals not in before and after[refusals] == 1
    assert {k: v for k, v in after.items() if k not in (requests, refusals)} == {
        k: v for k, v in before.items() if k != requests
    }
    assert after[("exec_server_processes", (("state", "running"),))] == 3


async def test_sandboxed_starts_have_their_own_spawn_series(tmp_path: Path) -> None:
    from exec_server.paths import to_file_uri
    from exec_server.sandbox.bwrap import support

    from .sandbox_support import workspace_write

    if not support().usable:
        pytest.skip(f"bubblewrap cannot run here: {support().reason}")
    async with running_server() as (server, url), Client.connect(url) as client:
        await client.initialize()
        await client.run("plain", ["true"])
        sandbox = workspace_write(to_file_uri(str(tmp_path)))
        events = await client.run("boxed", ["true"], cwd=str(tmp_path), sandbox=sandbox)
        assert events.exited is not None and events.exited["exitCode"] == 0
        found = samples((await http_get(url, "/metrics"))[2])
    for sandboxed in ("true", "false"):
        assert found[("exec_server_spawn_seconds_count", (("sandboxed", sandboxed),))] == 1
        assert found[("exec_server_process_starts_total", (("sandboxed", sandboxed),))] == 1
    assert server.metrics.spawn_seconds[True].sum > 0


async def test_a_stdin_refusal_is_counted_as_a_limit() -> None:
    limits = Limits(stdin_buffer_bytes=1024, stdin_process_max_bytes=4096)
    async with running_server(limits) as (server, url), Client.connect(url) as client:
        await client.initialize()
        await client.start("p", ["sleep", "100"], pipeStdin=True)
        refused = 0
        for _ in range(40):  # the pipe takes 64 KiB before anything is held
            reply = await client.request(
                "process/write",
                {"processId": "p", "chunk": base64.b64encode(b"x" * 4096).decode()},
            )
            if "error" in reply:
                refused += 1
                break
        assert refused == 1
        assert server.metrics.limit_refusals == {"stdin_bytes": 1}
