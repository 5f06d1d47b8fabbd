"""Output and stdin of children, end to end: pipes and PTYs, real sockets, real processes."""

from __future__ import annotations

import random
import sys

import pytest

from exec_server.config import Limits

from .support import Client, RpcFailure
from .test_process_helpers import b64, fire, no_stray_children, reply_index

__all__ = ["no_stray_children"]


@pytest.fixture
def limits() -> Limits:
    # A small stdin queue, so ordered writes also go through the "queue full" path; a short
    # writeId memory, so forgetting old ids can be seen.
    return Limits(stdin_buffer_bytes=4096, write_id_memory=3)


def _pattern(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


# ---- output ----------------------------------------------------------------------------------


async def test_pipe_output_is_byte_exact_for_binary_megabytes(client: Client) -> None:
    script = (
        "import random, sys\n"
        "out = random.Random(1).randbytes(3_000_000)\n"
        "err = random.Random(2).randbytes(200_000)\n"
        "for n in range(30):\n"
        "    sys.stdout.buffer.write(out[n * 100_000:(n + 1) * 100_000]); sys.stdout.flush()\n"
        "    sys.stderr.buffer.write(err[n * 6_000:(n + 1) * 6_000]); sys.stderr.flush()\n"
        "sys.stderr.buffer.write(err[180_000:]); sys.stderr.flush()\n"
    )
    events = await client.run("big", [sys.executable, "-c", script])
    assert events.exited is not None and events.exited["exitCode"] == 0
    assert events.data("stdout") == _pattern(1, 3_000_000)
    assert events.data("stderr") == _pattern(2, 200_000)


async def test_every_byte_value_survives_a_pipe(client: Client) -> None:
    all_bytes = bytes(range(256))
    octal = "".join(f"\\{b:03o}" for b in all_bytes)
    events = await client.run("bytes", ["sh", "-c", f"printf '{octal}'; printf '\\377\\376' >&2"])
    assert events.data("stdout") == all_bytes
    assert events.data("stderr") == b"\xff\xfe"


async def test_pty_output_is_byte_exact_with_onlcr(client: Client) -> None:
    # Not UTF-8, and "\n" becomes "\r\n" by the default line discipline.
    events = await client.run("pty", ["printf", "\\377\\001abc\\nz"], tty=True)
    assert events.data("pty") == b"\xff\x01abc\r\nz"
    assert {o["stream"] for o in events.output} == {"pty"}


async def test_pty_carries_a_megabyte_exactly(client: Client) -> None:
    events = await client.run(
        "pty-big", ["sh", "-c", "head -c 1500000 /dev/zero | tr '\\000' x"], tty=True
    )
    assert events.data("pty") == b"x" * 1_500_000
    assert events.exited is not None and events.exited["exitCode"] == 0


async def test_pty_is_24_by_80(client: Client) -> None:
    events = await client.run("size", ["stty", "size"], tty=True)
    assert events.data() == b"24 80\r\n"


async def test_pty_is_the_controlling_terminal(client: Client) -> None:
    events = await client.run("tty", ["sh", "-c", "tty; ps -o tty= -p $$"], tty=True)
    name, ps_tty = events.data().decode().split("\r\n")[:2]
    assert name.startswith("/dev/pts/")
    assert ps_tty.strip() == name.removeprefix("/dev/")  # the kernel's controlling tty of sh


async def test_pipe_child_has_no_terminal(client: Client) -> None:
    events = await client.run("notty", ["sh", "-c", "tty; exit 0"])
    assert events.data("stdout") == b"not a tty\n"


async def test_job_control_works_in_a_pty(client: Client) -> None:
    events = await client.run("jobs", ["sh", "-c", "sleep 5 & jobs"], tty=True)
    output = events.data().decode()
    assert "[1]" in output and "Running" in output


# ---- stdin -----------------------------------------------------------------------------------


async def test_without_pipe_stdin_the_child_reads_dev_null(client: Client) -> None:
    await client.start("null", ["sh", "-c", "readlink /proc/self/fd/0; cat; echo eof; sleep 100"])
    await client.wait_output("null", b"eof\n")
    assert client.processes["null"].data() == b"/dev/null\neof\n"
    assert await client.write("null", b"ignored\n") == "stdinClosed"
    assert (await client.call("process/terminate", {"processId": "null"}))["running"] is True
    await client.wait_closed("null")
    assert await client.write("null", b"x") == "stdinClosed"  # regardless of liveness


async def test_pipe_stdin_feeds_cat(client: Client) -> None:
    await client.start("cat", ["cat"], pipeStdin=True)
    assert await client.write("cat", b"hello\n") == "accepted"
    assert await client.wait_output("cat", b"hello\n") == b"hello\n"
    assert await client.write("cat", b"\x00\xff binary\n") == "accepted"
    assert await client.wait_output("cat", b"binary\n") == b"hello\n\x00\xff binary\n"
    await client.call("process/terminate", {"processId": "cat"})
    await client.wait_closed("cat")


async def test_pty_writes_are_echoed(client: Client) -> None:
    await client.start("pcat", ["cat"], tty=True)
    assert await client.write("pcat", b"abc\n") == "accepted"
    # Once by the terminal's echo, once by cat itself.
    assert await client.wait_output("pcat", b"abc\r\nabc\r\n") == b"abc\r\nabc\r\n"
    await client.call("process/terminate", {"processId": "pcat"})
    await client.wait_closed("pcat")


async def test_write_to_unknown_process(client: Client) -> None:
    assert await client.write("nobody", b"x") == "unknownProcess"


@pytest.mark.parametrize("tty", [False, True])
async def test_write_after_terminate_is_an_internal_error(client: Client, tty: bool) -> None:
    await client.start("t", ["cat"], pipeStdin=True, tty=tty)
    assert (await client.call("process/terminate", {"processId": "t"}))["running"] is True
    with pytest.raises(RpcFailure) as info:
        await client.write("t", b"x")
    assert info.value.code == -32603
    assert info.value.message == "failed to write to process stdin"
    await client.wait_closed("t")


async def test_repeated_write_id_is_accepted_and_written_once(client: Client) -> None:
    await client.start("dedupe", ["cat"], pipeStdin=True)
    assert await client.write("dedupe", b"a", writeId="w1") == "accepted"
    assert await client.write("dedupe", b"a", writeId="w1") == "accepted"
    assert await client.write("dedupe", b"b\n", writeId="w2") == "accepted"
    # Writes keep their order, so a second "a" would have arrived before "b\n".
    assert await client.wait_output("dedupe", b"b\n") == b"ab\n"
    # The id is per process: the same id on another process is a new write.
    await client.start("other", ["cat"], pipeStdin=True)
    assert await client.write("other", b"w1 again\n", writeId="w1") == "accepted"
    assert await client.wait_output("other", b"again\n") == b"w1 again\n"
    for pid in ("dedupe", "other"):
        await client.call("process/terminate", {"processId": pid})
        await client.wait_closed(pid)


async def test_write_id_memory_is_bounded_and_keeps_the_most_recent(client: Client) -> None:
    await client.start("ids", ["cat"], pipeStdin=True)
    for write_id, data in [("a", b"1"), ("b", b"2"), ("c", b"3"), ("d", b"4")]:
        assert await client.write("ids", data, writeId=write_id) == "accepted"
    # Remembered: b, c, d. "d" with other bytes is still a repeat; "a" was forgotten.
    assert await client.write("ids", b"X", writeId="d") == "accepted"
    assert await client.write("ids", b"5", writeId="a") == "accepted"
    assert await client.write("ids", b"Y", writeId="c") == "accepted"
    assert await client.write("ids", b"\n", writeId="e") == "accepted"
    assert await client.wait_output("ids", b"\n") == b"12345\n"
    await client.call("process/terminate", {"processId": "ids"})
    await client.wait_closed("ids")


async def test_without_write_id_every_write_is_applied(client: Client) -> None:
    await client.start("nodedupe", ["cat"], pipeStdin=True)
    for _ in range(3):
        assert await client.write("nodedupe", b"x") == "accepted"
    assert await client.write("nodedupe", b"\n") == "accepted"
    assert await client.wait_output("nodedupe", b"\n") == b"xxx\n"
    await client.call("process/terminate", {"processId": "nodedupe"})
    await client.wait_closed("nodedupe")


async def test_write_id_must_not_be_empty(client: Client) -> None:
    with pytest.raises(RpcFailure) as info:
        await client.write("whatever", b"x", writeId="")
    assert info.value.code == -32602


@pytest.mark.parametrize("tty", [False, True])
async def test_writes_to_one_process_keep_their_order(client: Client, tty: bool) -> None:
    # 400 writes of varied sizes, all sent before any reply is read. The stdin queue holds
    # 4 KiB, so later writes wait for room and must still land in arrival order.
    rng = random.Random(3)
    pieces = [(b"%05d:" % i) + b"." * rng.choice((0, 3, 50, 700, 3000)) + b";" for i in range(400)]
    prefix = b""
    if tty:  # raw mode: no echo, no line editing, no line-length limit, no \n -> \r\n
        prefix = b"ready\n"
        argv = ["sh", "-c", "stty raw -echo; echo ready; exec cat"]
        await client.start("order", argv, tty=True)
        await client.wait_output("order", prefix)
    else:
        await client.start("order", ["cat"], pipeStdin=True)
    calls = [("process/write", {"processId": "order", "chunk": b64(piece)}) for piece in pieces]
    replies = await fire(client, calls)
    assert all(r.get("result") == {"status": "accepted"} for r in replies)
    expected = prefix + b"".join(pieces)
    got = await client.wait_for("order", lambda e: len(e.data()) >= len(expected))
    assert got.data() == expected
    await client.call("process/terminate", {"processId": "order"})
    await client.wait_closed("order")


async def test_a_write_waiting_for_stdin_room_does_not_block_terminate(client: Client) -> None:
    # sleep never reads: 70 KB fill the pipe and then the 4 KiB stdin queue.
    await client.start("full", ["sleep", "100"], pipeStdin=True)
    assert await client.write("full", b"x" * 70_000) == "accepted"
    waiting, terminated = await fire(
        client,
        [
            ("process/write", {"processId": "full", "chunk": b64(b"y" * 10_000)}),
            ("process/terminate", {"processId": "full"}),
        ],
    )
    assert terminated["result"] == {"running": True}
    # Answered by the kill: bytes for a dead child are dropped, as with the reference.
    assert waiting["result"] == {"status": "accepted"}
    assert reply_index(client, terminated) < reply_index(client, waiting)
    events = await client.wait_closed("full")
    assert events.exited is not None and events.exited["exitCode"] == 137


async def test_empty_write_is_accepted(client: Client) -> None:
    await client.start("empty", ["cat"], pipeStdin=True)
    assert await client.write("empty", b"") == "accepted"
    assert await client.write("empty", b"after\n") == "accepted"
    assert await client.wait_output("empty", b"after\n") == b"after\n"
    await client.call("process/terminate", {"processId": "empty"})
    await client.wait_closed("empty")


async def test_pipe_children_get_sigpipe(client: Client) -> None:
    # The server ignores SIGPIPE; its children must not: `yes` dies quietly when head exits.
    events = await client.run("sigpipe", ["sh", "-c", "yes | head -n 2; echo done"])
    assert events.data("stdout") == b"y\ny\ndone\n"
    assert events.data("stderr") == b""
