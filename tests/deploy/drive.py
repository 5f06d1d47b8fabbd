"""Run requests through exec_server.client against one executor and print the answers as
JSON: tests/deploy/support.drive_in runs it inside a pod's network namespace.

stdin: {"token": ..., "requests": [{"run": [argv...]}, {"info": true}, ...]}
stdout: one answer per request: {"code", "stdout", "stderr"} for run, environment/info's
result for info.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from exec_server.client import connect


async def main(url: str, order: dict[str, Any]) -> list[Any]:
    answers: list[Any] = []
    async with connect(url, token=order["token"], reconnect=False) as client:
        for request in order["requests"]:
            if "run" in request:
                done = await client.run(request["run"], timeout=30)
                answers.append(
                    {
                        "code": done.returncode,
                        "stdout": done.stdout.decode(errors="replace"),
                        "stderr": done.stderr.decode(errors="replace"),
                    }
                )
            else:
                answers.append(await client.request("environment/info", {}))
    return answers


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], json.load(sys.stdin)))))
