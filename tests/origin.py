"""An HTTP origin for the network tests, run in a process of its own (the server under test
runs in the test's process, and its proxy refuses the server's own listening ports):

    python tests/origin.py [--tls CERT KEY] [--bearer TOKEN] [--api-key VALUE] [--echo]

It prints its port on 127.0.0.1, then serves: GET answers ``hello-origin``, or with
``--bearer`` ``auth-ok``/``auth-wrong`` as the ``Authorization`` header is or is not
``Bearer TOKEN`` (with ``--api-key`` also: the ``X-Api-Key`` header is ``VALUE``), or with
``--echo`` ``seen:`` and the ``Authorization`` header it got; POST answers ``posted:`` and
the body. ``--tls`` serves HTTPS.
"""

from __future__ import annotations

import argparse
import http.server
import ssl
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    parser.add_argument("--bearer")
    parser.add_argument("--api-key")
    parser.add_argument("--echo", action="store_true")
    args = parser.parse_args()

    class Origin(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if args.echo:
                self.reply(f"seen:{self.headers.get('authorization', '')}\n".encode())
            elif args.bearer is None:
                self.reply(b"hello-origin\n")
            elif self.headers.get("authorization", "") == f"Bearer {args.bearer}" and (
                args.api_key is None or self.headers.get("x-api-key", "") == args.api_key
            ):
                self.reply(b"auth-ok\n")
            else:
                self.reply(b"auth-wrong\n")

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            self.reply(b"posted:" + self.rfile.read(length))

        def reply(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Origin)
    if args.tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*args.tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
