"""gRPC-Web translation cost: worker CPU per unary call, against the same call untranslated.

Usage: PYTHONPATH=src:. .venv/bin/python bench/grpc_web_bench.py [--calls 3000] [--rounds 2]

One meshgate worker proxies to ``tests.support.grpc_app.GrpcApp`` (grpcio,
h2c). A client on one HTTP/1.1 keep-alive connection makes sequential
unary calls as gRPC-Web binary, gRPC-Web text, and as gRPC over HTTP/1.1
(``te: trailers``: the same path with nothing to translate). The worker's
CPU time (utime + stime from /proc, 10 ms ticks, hence thousands of calls)
per call is the figure; wall time per call is printed beside it. Rounds
interleave the three cases so that a noisy neighbour hits each alike.
"""

from __future__ import annotations

import argparse
import http.client
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.gateway import Gateway, proxy_config
from tests.support.grpc_app import GrpcApp, stubs
from tests.support.grpc_web_client import body_of, frame

PATH = "/meshgate.test.Echo/Unary"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(port: int, worker: int, headers: dict[str, str], body: bytes,
        calls: int) -> tuple[float, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for _ in range(200):                 # warm up: connections, caches
            conn.request("POST", PATH, body, headers)
            conn.getresponse().read()
        cpu0, wall0 = cpu_seconds(worker), time.perf_counter()
        for _ in range(calls):
            conn.request("POST", PATH, body, headers)
            response = conn.getresponse()
            response.read()
            assert response.status == 200
        return ((cpu_seconds(worker) - cpu0) / calls * 1e6,
                (time.perf_counter() - wall0) / calls * 1e6)
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    pb2, _ = stubs()
    payload = pb2.Msg(text="hello", seq=1).SerializeToString()
    text = "application/grpc-web-text+proto"
    cases = {
        "gRPC-Web binary": ({"content-type": "application/grpc-web+proto"},
                            body_of(payload, False)),
        "gRPC-Web text": ({"content-type": text, "accept": text}, body_of(payload, True)),
        "gRPC over HTTP/1.1 (untranslated)": ({"content-type": "application/grpc",
                                               "te": "trailers"}, frame(payload)),
    }
    app = GrpcApp(workers=4)
    with tempfile.TemporaryDirectory() as tmp:
        gw = Gateway(Path(tmp), proxy_config(app.url, service={"protocol": "h2c"}))
        try:
            worker = gw.pids()[1]
            print(f"| round | case | worker CPU µs/call | wall µs/call |  ({args.calls} calls)")
            print("| --- | --- | --- | --- |")
            for round_ in range(args.rounds):
                for name, (headers, body) in cases.items():
                    cpu, wall = run(gw.port, worker, headers, body, args.calls)
                    print(f"| {round_} | {name} | {cpu:.0f} | {wall:.0f} |")
        finally:
            gw.stop()
            app.stop()


if __name__ == "__main__":
    main()
