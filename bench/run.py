"""Benchmark meshgate against nginx, HAProxy and Express Gateway on loopback.

Usage: .venv/bin/python bench/run.py [--duration 10] [--connections 64] [--threads 2]
                                     [--targets backend,meshgate,...] [--retries 2]
                                     [--rounds 1] [--json PATH]

Every target proxies to the same nginx backend and gets the same wrk load; CPU
time per request covers all of a target's processes. A run during which other
processes load the machine is repeated (--retries), keeping the quietest one.
Everything started here is stopped on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import measure
import procs
import report
import targets
import tools

WORK = targets.HERE / ".work"
ORDER = ["backend", "meshgate", "nginx", "haproxy", "eg", "meshgate-10k", "meshgate-auth",
         "meshgate-auth-redis"]


def _meshgate_missing() -> str:
    try:
        done = subprocess.run([str(targets.meshgate_bin()), "--help"], capture_output=True,
                              text=True, timeout=30, check=False)
    except OSError as exc:
        return str(exc)
    return "" if done.returncode == 0 else (done.stderr.strip().splitlines() or ["?"])[-1]


def _plan(key: str, have: dict[str, bool], eg_ok: bool, backend_port: int,
          endpoints: int) -> targets.Target | str:
    """The target to run, or why it is skipped."""
    if key.startswith("meshgate"):
        missing = _meshgate_missing()
        if missing:
            return f"`meshgate --help` fails ({missing})"
        if key.startswith("meshgate-auth"):
            return targets.meshgate_auth(WORK, backend_port, redis=key.endswith("redis"))
        return targets.meshgate(WORK, backend_port, 1 if key == "meshgate" else endpoints)
    if key == "nginx":
        return targets.nginx_proxy(WORK, backend_port)
    if key == "haproxy":
        return targets.haproxy(WORK, backend_port) if have["haproxy"] else "haproxy missing"
    return targets.express_gateway(WORK, WORK / "eg", backend_port) if eg_ok else "npm failed"


def _round(keys: list[str], group: procs.ProcGroup,
           plan_for: Callable[[str], targets.Target | str], backend_proc: Any, token: str,
           load: measure.Load, labels: dict[str, str]) -> list[report.Result]:
    """Every target measured once, in ORDER."""
    results: list[report.Result] = []
    for key in (k for k in ORDER if k in keys):
        print(f"== {labels[key]}", flush=True)
        plan = plan_for(key)
        if isinstance(plan, str):
            results.append(report.Result(key, labels[key], "skipped", plan))
        else:
            try:
                proc = (backend_proc if key == "backend"
                        else measure.launch(group, plan, token))
                results.append(measure.measure(group, proc, plan, backend_proc, load))
            except (measure.TargetError, RuntimeError, ValueError) as exc:
                results.append(report.Result(key, labels[key], "failed", str(exc)))
            if key != "backend":
                for started in group.started_after(backend_proc):
                    group.stop(started)
        r = results[-1]
        print(f"   {r.status}: {r.rps:,.0f} req/s, p50 {r.p50_ms:.2f} ms, p99 {r.p99_ms:.2f} ms, "
              f"{r.cpu_us_per_req:.1f} CPU µs/req, errors {r.errors}"
              if r.status == "ok" else f"   {r.status}: {r.reason}", flush=True)
    return results


def run(args: argparse.Namespace, group: procs.ProcGroup) -> int:
    have = tools.ensure_system_tools()
    if not (have["wrk"] and have["nginx"]):
        print("wrk and nginx are required (backend and load generator); nothing measured")
        return 1
    eg_ok = "eg" in args.targets and tools.ensure_express_gateway(WORK / "eg")
    token = secrets.token_hex(8)
    backend = targets.backend(WORK, f"hello world {token}\n")
    try:
        backend_proc = measure.launch(group, backend, token)
    except measure.TargetError as exc:
        print(f"the nginx backend did not start: {exc}")
        return 1
    load = measure.Load(args.threads, args.connections, args.duration, args.warmup,
                        args.retries)
    labels = {"backend": backend.label, "meshgate": "meshgate", "nginx": "nginx proxy",
              "haproxy": "HAProxy", "eg": "Express Gateway",
              "meshgate-10k": f"meshgate, {args.endpoints:,} apiEndpoints",
              "meshgate-auth": "meshgate, key-auth + rate-limit",
              "meshgate-auth-redis": "meshgate, key-auth + rate-limit (Redis)"}

    def plan_for(key: str) -> targets.Target | str:
        return backend if key == "backend" else _plan(key, have, eg_ok, backend.port,
                                                      args.endpoints)

    rounds: list[list[report.Result]] = []
    for number in range(args.rounds):
        if args.rounds > 1:
            print(f"# round {number + 1} of {args.rounds}", flush=True)
        rounds.append(_round(args.targets, group, plan_for, backend_proc, token, load, labels))
    results = report.typical(rounds)
    for r in results:  # keep the markdown table one line per target
        r.reason = r.reason.splitlines()[0] if r.reason else ""
    wrk = f"wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s --latency"
    facts, versions = report.machine(), tools.versions(WORK / "eg")
    per_round = [report.ratios({r.key: r for r in done}) for done in rounds]
    print("\n" + report.markdown(results, wrk, args.warmup, facts, versions, per_round))
    if args.json:
        doc = {"load": wrk, "machine": facts, "versions": versions,
               "results": [asdict(r) for r in results],
               "ratios": report.median_ratios(per_round), "rounds": per_round}
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--retries", type=int, default=2,
                        help="extra measured runs when other processes load the machine")
    parser.add_argument("--endpoints", type=int, default=10_000,
                        help="apiEndpoints in the meshgate-10k target")
    parser.add_argument("--targets", default=",".join(ORDER),
                        type=lambda s: [t.strip() for t in s.split(",") if t.strip()],
                        help=f"comma-separated subset of {','.join(ORDER)}")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every target this many times, in turn; the table "
                             "shows each target's median run and the median of each "
                             "round's ratios (steadier on a noisy machine)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    unknown = set(args.targets) - set(ORDER)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    return procs.main_guarded(run, _parse(argv))


if __name__ == "__main__":
    sys.exit(main())
