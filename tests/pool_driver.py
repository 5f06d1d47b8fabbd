"""Run by tests/test_pool_netns.py inside the hub namespace: a Pool over the executors,
300 processes across them, then new work after one executor was killed mid-run.

Protocol: prints ``{"phase": "started", ...}`` once every process started (the test then
kills an executor), then ``{"phase": "done", ...}`` with what became of each.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter

from exec_server.client import ExecutorLost, Pool

PROCESSES = 300
NEW_WORK = 30


def say(message: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def main(token: str, urls: list[str]) -> None:
    async with Pool(urls, token=token, reconnect_timeout=1.0) as pool:
        started = []
        for index in range(PROCESSES):
            argv = ["sh", "-c", f"sleep 4; echo done-{index}"]
            process = await pool.start(argv)
            started.append((index, process, pool.executor_of(process)))
        say({"phase": "started", "by_executor": Counter(e for _, _, e in started)})
        completed: Counter[str] = Counter()
        lost: Counter[str] = Counter()
        problems = []
        for index, process, executor in started:
            try:
                code = await process.wait()
                output = await process.stdout.read()
            except ExecutorLost as error:
                if error.executor != executor:
                    problems.append(f"{index}: lost names {error.executor}, ran on {executor}")
                lost[error.executor] += 1
                continue
            except Exception as error:  # anything else is a failure of the test
                problems.append(f"{index}: {error!r}")
                continue
            if code != 0 or output != f"done-{index}\n".encode():
                problems.append(f"{index}: exit {code}, output {output!r}")
            completed[str(executor)] += 1
        new_work: Counter[str] = Counter()
        for index in range(NEW_WORK):
            result = await pool.run(["echo", f"new-{index}"])
            if result.stdout != f"new-{index}\n".encode():
                problems.append(f"new {index}: {result.stdout!r}")
        for process in [await pool.start(["true"]) for _ in range(NEW_WORK)]:
            await process.wait()
            new_work[str(pool.executor_of(process))] += 1
        say(
            {
                "phase": "done",
                "completed": completed,
                "lost": lost,
                "problems": problems,
                "new_work": new_work,
            }
        )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2:]))
