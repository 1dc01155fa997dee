"""gRPC unary calls through meshgate and through nginx ``grpc_pass``, measured with h2load.

Usage: .venv/bin/python bench/grpc_bench.py [--duration 8] [--rounds 3]
                                           [--clients 16] [--streams 10]

One nginx backend speaks h2c and answers every POST like a gRPC server: a
framed 7-byte message (``HelloReply{"hello"}``), then the trailer
``grpc-status: 0``. In front of it, on their own ports, run meshgate (one
worker, h2c by prior knowledge downstream, ``protocol: h2c`` upstream) and
nginx (``listen ... http2`` + ``grpc_pass``). h2load sends the same framed
request (``content-type: application/grpc``, ``te: trailers``) to each with
``-c CLIENTS -m STREAMS``, rounds interleaved; each row reports requests per
second, the share of 2xx answers, and the CPU microseconds per request of the
proxy's processes (all of them, from /proc). The backend's CPU is the same
for both and is not counted.
"""

from __future__ import annotations

import argparse
import getpass
import grp
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

import procs
import targets

WORK = targets.HERE / ".work" / "grpc"
PATH = "/meshgate.bench.Greeter/SayHello"
MESSAGE = b"\x00\x00\x00\x00\x07\x0a\x05hello"       # one gRPC frame: field 1 = "hello"

_HEAD = """@USER@
daemon off;
master_process on;
worker_processes 1;
pid @PREFIX@/nginx.pid;
error_log stderr warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 10000000;
    client_body_temp_path @PREFIX@/client_body;
    proxy_temp_path @PREFIX@/proxy;
    fastcgi_temp_path @PREFIX@/fastcgi;
    uwsgi_temp_path @PREFIX@/uwsgi;
    scgi_temp_path @PREFIX@/scgi;
"""

BACKEND = _HEAD + """
    server {
        listen 127.0.0.1:@PORT@ http2 backlog=4096;
        location / {
            # A static file answers POST with 405; error_page turns that into
            # the file itself with 200, so any call gets the framed reply.
            root @PREFIX@;
            default_type application/grpc;
            error_page 405 =200 /reply.bin;
            try_files /reply.bin =404;
            add_trailer grpc-status 0 always;
        }
    }
}
"""

FRONT = _HEAD + """
    upstream backend {
        server 127.0.0.1:@BACKEND@;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:@PORT@ http2 backlog=4096;
        location / {
            grpc_pass grpc://backend;
        }
    }
}
"""


def _nginx(group: procs.ProcGroup, name: str, template: str, **values: object) -> tuple[int, int]:
    prefix = WORK / name
    shutil.rmtree(prefix, ignore_errors=True)
    prefix.mkdir(parents=True)
    user = ""
    if os.geteuid() == 0:        # as root, workers would drop to "nobody"
        user = f"user {getpass.getuser()} {grp.getgrgid(os.getgid()).gr_name};"
    port = targets.free_port()
    text = template.replace("@USER@", user).replace("@PREFIX@", str(prefix))
    text = text.replace("@PORT@", str(port))
    for key, value in values.items():
        text = text.replace(f"@{key.upper()}@", str(value))
    (prefix / "nginx.conf").write_text(text)
    (prefix / "reply.bin").write_bytes(MESSAGE)
    proc = group.start(["nginx", "-e", "stderr", "-p", f"{prefix}/", "-c",
                        str(prefix / "nginx.conf")], prefix / "log")
    return port, proc.pid


def _meshgate(group: procs.ProcGroup, backend: int) -> tuple[int, int]:
    port, admin = targets.free_port(), targets.free_port()
    directory = WORK / "meshgate"
    shutil.rmtree(directory, ignore_errors=True)
    config = targets.gateway_config(port, admin, backend)
    config["serviceEndpoints"]["backend"]["protocol"] = "h2c"
    targets._dump(directory / "gateway.config.yml", config)
    proc = group.start([str(targets.meshgate_bin()), "run", str(directory), "--workers", "1"],
                       directory / "log")
    return port, proc.pid


def _h2load(port: int, duration: int, clients: int, streams: int,
            warmup: int = 1) -> tuple[float, float]:
    """(requests per second, share of 2xx) over ``duration`` seconds after a warm-up;
    ``duration`` 0: 20 requests only, for a readiness probe."""
    body = WORK / "request.bin"
    body.write_bytes(MESSAGE)
    length = ["-D", str(duration), "--warm-up-time", str(warmup)] if duration else ["-n", "20"]
    argv = ["h2load", "-c", str(clients), "-m", str(streams), "-t", "1", *length, "-d", str(body),
            "-H", "content-type: application/grpc", "-H", "te: trailers",
            f"http://127.0.0.1:{port}{PATH}"]
    out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
    rate = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    codes = re.search(r"status codes: (\d+) 2xx", out)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done", out)
    if not rate or not codes or not done:
        raise RuntimeError(f"h2load said:\n{out}")
    total = int(done.group(1))
    return float(rate.group(1)), (int(codes.group(1)) / total if total else 0.0)


def _wait_ready(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            rate, ok = _h2load(port, 0, 1, 1)
            if ok == 1.0 and rate > 0:
                return
        except RuntimeError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"nothing answers gRPC calls on port {port}")


def run(args: argparse.Namespace, group: procs.ProcGroup) -> int:
    if not shutil.which("h2load") or not shutil.which("nginx"):
        print("needs h2load (nghttp2-client) and nginx", file=sys.stderr)
        return 2
    WORK.mkdir(parents=True, exist_ok=True)
    backend, _ = _nginx(group, "backend", BACKEND)
    _wait_ready(backend)
    fronts = {"meshgate": _meshgate(group, backend),
              "nginx grpc_pass": _nginx(group, "front", FRONT, backend=backend)}
    for port, _ in fronts.values():
        _wait_ready(port)
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in fronts}
    for round_no in range(args.rounds):
        for name, (port, pid) in fronts.items():
            pids = procs.descendants(pid)
            before = procs.cpu_ticks(pids)
            rate, ok = _h2load(port, args.duration, args.clients, args.streams)
            cpu = procs.cpu_seconds_between(before, procs.cpu_ticks(procs.descendants(pid)))
            per = cpu / (rate * (args.duration + 1.0)) * 1e6 if rate else 0.0
            results[name].append((rate, ok, per))
            print(f"round {round_no + 1} {name:16} {rate:10,.0f} req/s  {ok:6.1%} 2xx"
                  f"  {per:6.1f} CPU µs/req", flush=True)
    print(f"\nh2load -c{args.clients} -m{args.streams} -D {args.duration}, "
          f"median of {args.rounds} interleaved rounds")
    medians = {name: statistics.median(r[0] for r in rows) for name, rows in results.items()}
    for name, rows in results.items():
        print(f"  {name:16} {medians[name]:10,.0f} req/s"
              f"  {statistics.median(r[2] for r in rows):6.1f} CPU µs/req")
    ratio = medians["meshgate"] / medians["nginx grpc_pass"] if medians["nginx grpc_pass"] else 0
    print(f"  meshgate / nginx: {ratio:.2f}x")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--streams", type=int, default=10)
    return procs.main_guarded(run, parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
