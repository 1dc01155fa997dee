"""HTTP/2 downstream (h2c, prior knowledge) to an HTTP/1.1 backend: meshgate vs nginx.

Usage: .venv/bin/python bench/h2_bench.py [--duration 8] [--rounds 3]
                                          [--clients 16] [--streams 10]
                                          [--meshgate SRC[,SRC...]]

Every target proxies ``/hello`` to the same nginx backend (bench/run.py's) and
gets the same ``h2load -cC -mM -D duration`` load after a warm-up; targets are
measured in turn, round after round, and the table shows each one's median
over the rounds, so a neighbour's burst on a shared machine hits one run, not
one target. CPU µs/request is utime+stime of the target's whole process tree
over the measured run (``/proc/PID/stat``) divided by the requests h2load
completed.

``--meshgate`` names source trees (folders holding ``src/meshgate``) to run
meshgate from, each as its own target -- e.g. a branch against main -- with
the interpreter running this script; without it, the installed ``meshgate``.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import measure
import procs
import targets

WORK = targets.HERE / ".work" / "h2"


@dataclass
class Run:
    rps: float
    requests: int
    failed: int
    cpu_us: float


def _h2load(url: str, clients: int, streams: int, duration: int) -> Run:
    done = subprocess.run(["h2load", "-c", str(clients), "-m", str(streams), "-t", "1",
                           "-D", str(duration), url], capture_output=True, text=True,
                          timeout=duration + 60, check=False)
    out = done.stdout
    rps = re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out)
    counts = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, "
                       r"(\d+) failed", out)
    if rps is None or counts is None:
        raise measure.TargetError(f"h2load said:\n{out}\n{done.stderr}")
    return Run(float(rps.group(1)), int(counts.group(2)), int(counts.group(3)), 0.0)


# Idle upstream connections kept, by both proxies (nginx: `keepalive`): above
# the streams in flight (-c16 -m10 = 160), so that neither measures
# connection churn to the backend rather than its HTTP/2 codec.
IDLE = 256


def _meshgate(src: Path | None, backend_port: int, name: str) -> targets.Target:
    port, admin = targets.free_port(), targets.free_port()
    config_dir = WORK / name
    shutil.rmtree(config_dir, ignore_errors=True)
    config = targets.gateway_config(port, admin, backend_port)
    config["serviceEndpoints"]["backend"]["pool"] = {"maxIdle": IDLE}
    targets._dump(config_dir / "gateway.config.yml", config)
    if src is None:
        argv = [str(targets.meshgate_bin()), "run", str(config_dir), "--workers", "1"]
        env = None
    else:
        argv = [sys.executable, "-m", "meshgate", "run", str(config_dir), "--workers", "1"]
        env = dict(os.environ, PYTHONPATH=str(src / "src"))
    return targets.Target(name, name, argv, port, env=env, ready_timeout=120.0,
                          admin_url=f"http://127.0.0.1:{admin}/ready")


def _nginx_h2(backend_port: int) -> targets.Target:
    target = targets._nginx("nginx-h2", "nginx h2c proxy", "nginx-proxy-h2.conf", WORK,
                            backend_port=backend_port)
    return target


def _ready_h2(url: str, token: str) -> None:
    """h2c requests through the target reach the backend (its body carries ``token``)."""
    deadline = time.monotonic() + 30
    out = ""
    while time.monotonic() < deadline:
        done = subprocess.run(["nghttp", url], capture_output=True, text=True, timeout=30,
                              check=False)
        out = done.stdout + done.stderr
        if token in out:
            return
        time.sleep(0.2)
    raise measure.TargetError(f"h2c requests fail:\n{out}")


def run(args: Any, group: procs.ProcGroup) -> int:
    token = secrets.token_hex(8)
    WORK.mkdir(parents=True, exist_ok=True)
    backend = targets.backend(WORK, f"hello world {token}\n")
    backend_proc = group.start(backend.argv, measure.LOGS / "h2-backend.log")
    measure.wait_ready(backend_proc, backend, token, measure.LOGS / "h2-backend.log")
    plans: list[targets.Target] = []
    sources = [Path(s).resolve() for s in args.meshgate.split(",")] if args.meshgate else [None]
    for src in sources:
        name = "meshgate" if src is None else f"meshgate ({src.name})"
        plans.append(_meshgate(src, backend.port, name))
    plans.append(_nginx_h2(backend.port))
    running = []
    for plan in plans:
        print(f"== starting {plan.label}", flush=True)
        if plan.admin_url is not None:           # meshgate: its admin API and HTTP/1.1 too
            proc = measure.launch(group, plan, token)
        else:
            proc = group.start(plan.argv, measure.LOGS / f"{plan.key}.log")
        _ready_h2(plan.url, token)
        running.append((plan, proc))
    runs: dict[str, list[Run]] = {plan.label: [] for plan in plans}
    for round_no in range(args.rounds):
        for plan, proc in running:
            _h2load(plan.url, args.clients, args.streams, args.warmup)
            pids = group.tree(proc)
            before = procs.cpu_ticks(pids)
            result = _h2load(plan.url, args.clients, args.streams, args.duration)
            cpu = procs.cpu_seconds_between(before, procs.cpu_ticks(group.tree(proc)))
            result.cpu_us = cpu * 1e6 / max(result.requests, 1)
            runs[plan.label].append(result)
            print(f"   round {round_no + 1} {plan.label}: {result.rps:,.0f} req/s, "
                  f"{result.cpu_us:.1f} CPU µs/req, {result.failed} failed", flush=True)
    nginx_rps = statistics.median(r.rps for r in runs[plans[-1].label])
    print(f"\nh2load -c{args.clients} -m{args.streams} -D {args.duration}, "
          f"median of {args.rounds} rounds\n")
    print("| target | req/s | CPU µs/req | failed | vs nginx |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for plan in plans:
        rs = runs[plan.label]
        rps = statistics.median(r.rps for r in rs)
        print(f"| {plan.label} | {rps:,.0f} | {statistics.median(r.cpu_us for r in rs):.1f} "
              f"| {sum(r.failed for r in rs)} | {rps / nginx_rps:.2f}x |")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--streams", type=int, default=10)
    parser.add_argument("--meshgate", default="", help="source trees to run meshgate from")
    return procs.main_guarded(run, parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
