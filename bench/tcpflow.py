"""A bulk TCP flow for the fault lab: the competing traffic of the "cap + TCP" scenario.

`serve` accepts connections and discards what arrives; `send` connects and writes as fast as TCP lets it
(Cubic, the kernel's default: a loss-based flow that fills the bottleneck queue, as a download next to a
call does) until it is stopped or `--seconds` pass. Both only ever use the addresses they are given (the
lab's private namespace addresses). What got through is counted by the relay (bench/impair.py, kind "tcp").

`python -m bench.tcpflow serve --bind IP --port P` / `python -m bench.tcpflow send --connect IP:P`
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import time

# Bytes per write: small enough that a stop is prompt, large enough to keep the socket buffer full.
WRITE_BYTES = 16 * 1024
# A connection attempt is retried this long (the server may still be starting in its namespace).
CONNECT_WAIT_S = 10.0


def serve(bind: str, port: int) -> int:
    with socket.create_server((bind, port)) as server:
        while True:
            conn, _ = server.accept()
            with conn:
                while conn.recv(65536):
                    pass


def send(host: str, port: int, seconds: float) -> int:
    deadline = time.monotonic() + CONNECT_WAIT_S
    while True:
        try:
            conn = socket.create_connection((host, port), timeout=CONNECT_WAIT_S)
            break
        except OSError:
            if time.monotonic() > deadline:
                print(f"bench.tcpflow: could not connect to {host}:{port}", file=sys.stderr)
                return 1
            time.sleep(0.2)
    block, end = bytes(WRITE_BYTES), time.monotonic() + seconds
    with conn:
        conn.settimeout(None)
        try:
            while time.monotonic() < end:
                conn.sendall(block)
        except OSError:
            pass  # the lab is being torn down
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tcpflow", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="role", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--bind", required=True)
    s.add_argument("--port", type=int, required=True)
    c = sub.add_parser("send")
    c.add_argument("--connect", required=True, help="IP:PORT")
    c.add_argument("--seconds", type=float, default=600.0)
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if args.role == "serve":
        return serve(args.bind, args.port)
    host, _, port = args.connect.rpartition(":")
    return send(host, int(port), args.seconds)


if __name__ == "__main__":
    sys.exit(main())
