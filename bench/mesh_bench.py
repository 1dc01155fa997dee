"""Mesh benchmarks of meshgate: resilience overhead, split, balancing, failures, sidecars.

Usage: .venv/bin/python bench/mesh_bench.py [--parts overhead,traffic,sidecars,registry]
                                           [--duration 10] [--warmup 2] [--json PATH] ...

Theory of operation
-------------------
Each part measures targets from the mesh issues on real processes on
127.0.0.1 and renders a markdown section (the exact load, its parameters,
a table) plus a check per target:

1. ``overhead``  wrk against meshgate with a bare serviceEndpoint and with
   every resilience feature configured but not triggered (``mesh/overhead.py``);
2. ``traffic``   a 90/10 split, round-robin vs least-request vs peak-ewma with
   one endpoint 10x slower, and one endpoint failing every request behind
   retries and outlier detection (``mesh/traffic.py``);
3. ``sidecars``  a constant 1,000 req/s direct vs through two sidecars with
   the registry (``mesh/sidecars.py``), HTTP/2 between the sidecars, or
   HTTP/1.1, or both side by side (``--mesh-protocols h2c,http1``);
4. ``registry``  ``bench/registry_bench.py`` (watch latency, 10k instances),
   run as it is and its output included.

Every process goes into one ``procs.ProcGroup`` (a session each) and is
stopped at the end of its part and again on exit, Ctrl-C and SIGTERM
included. With default settings the whole run takes about four minutes.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import time
from pathlib import Path

import procs
import report
import tools
from mesh import overhead, sidecars, traffic
from mesh.report import Section, summary
from mesh.stack import LOGS, StackError

PARTS = ("overhead", "traffic", "sidecars", "registry")
HERE = Path(__file__).resolve().parent


def _registry(group: procs.ProcGroup, extra: str) -> Section:
    section = Section("6. Registry (bench/registry_bench.py)")
    argv = [sys.executable, str(HERE / "registry_bench.py"), *shlex.split(extra)]
    log = LOGS / "mesh-registry-bench.log"
    proc = group.start(argv, log, cwd=HERE.parent)
    try:
        code = proc.wait(timeout=600)
    finally:
        group.stop(proc)
    output = log.read_text(errors="replace").strip()
    if code != 0:
        raise RuntimeError(f"registry_bench.py exited {code}:\n{output[-3000:]}")
    shown = " ".join(["bench/registry_bench.py", *shlex.split(extra)])
    section.lines += [f"`.venv/bin/python {shown}`:", "", "```", output, "```", ""]
    section.data = {"output": output}
    scale = re.search(r"scale: (\d+) instances", output)
    count = f"{int(scale[1]):,}" if scale else "?"
    for pattern, target, limit, unit in (
            (r"p99 ([\d.]+) ms", "registry: p99 change-to-every-watcher < 1 s", 1000.0, "ms"),
            (r"registry RSS: ([\d.]+) MB", f"registry: {count} instances (target for 10k) "
             "< 100 MB RSS", 100.0, "MB"),
            (r"median of \d+ ([\d.]+) ms", f"registry: full list of {count} instances "
             "(target for 10k) < 50 ms", 50.0, "ms")):
        if (found := re.search(pattern, output)) is not None:
            value = float(found[1])
            section.check(target, f"{value:g} {unit}", value < limit)
    return section


def run(args: argparse.Namespace, group: procs.ProcGroup) -> int:
    have = tools.ensure_system_tools()
    if not (have["wrk"] and have["nginx"]):
        print("wrk and nginx are required; nothing measured")
        return 1
    sections: list[Section] = []
    started = time.monotonic()
    for part in args.parts:
        print(f"== {part}", flush=True)
        t0 = time.monotonic()
        try:
            if part == "overhead":
                sections.append(overhead.run(
                    group, upstreams=args.upstreams, threads=args.threads,
                    connections=args.connections, duration=args.duration,
                    warmup=args.warmup, rounds=args.rounds))
            elif part == "traffic":
                sections += traffic.run(
                    group, split_requests=args.split_requests, lb_requests=args.lb_requests,
                    fail_requests=args.fail_requests, concurrency=args.concurrency,
                    fast_ms=args.fast_ms, slow_ms=args.fast_ms * 10)
            elif part == "sidecars":
                sections.append(sidecars.run(
                    group, rate=args.rate, seconds=args.paced_duration,
                    warmup=args.paced_warmup, connections=args.paced_connections,
                    rounds=args.rounds, protocols=tuple(args.mesh_protocols)))
            else:
                sections.append(_registry(group, args.registry_args))
        except (StackError, RuntimeError, ValueError, OSError) as exc:
            sections.append(Section(f"{part}: failed", error=f"{type(exc).__name__}: {exc}"))
        print(f"   ({time.monotonic() - t0:.0f} s)", flush=True)
    print("\n" + markdown(args, sections, time.monotonic() - started))
    if args.json:
        doc = {"command": _command(), "machine": report.machine(),
               "sections": [{"title": s.title, "data": s.data, "error": s.error,
                             "checks": [vars(c) for c in s.checks]} for s in sections]}
        Path(args.json).write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return 0


def _command() -> str:
    return " ".join([".venv/bin/python bench/mesh_bench.py", *map(shlex.quote, sys.argv[1:])])


def markdown(args: argparse.Namespace, sections: list[Section], took: float) -> str:
    params = ", ".join(f"`--{k.replace('_', '-')} {','.join(v) if isinstance(v, list) else v}`"
                       for k, v in vars(args).items() if k != "json")
    facts = report.machine()
    lines = [
        "## Mesh benchmarks",
        "",
        f"Command: `{_command()}` ({took:.0f} s). Parameters: {params}.",
        f"Machine: {facts['cpu']}, {facts['cores']} cores, {facts['kernel']}, "
        f"Python {facts['python']}. Everything on 127.0.0.1; load generators, backends and "
        "proxies share the cores.",
        "",
        *(s.markdown() for s in sections),
        "### Targets",
        "",
        *summary(sections),
    ]
    return "\n".join(lines)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--parts", default=",".join(PARTS),
        type=lambda s: [p.strip() for p in s.split(",") if p.strip()],
        help=f"comma-separated subset of {','.join(PARTS)}")
    add("--duration", type=float, default=10.0, help="overhead: seconds per measured wrk run")
    add("--warmup", type=float, default=2.0, help="overhead: seconds of wrk warm-up per run")
    add("--threads", type=int, default=2, help="overhead: wrk threads")
    add("--connections", type=int, default=64, help="overhead: wrk connections")
    add("--rounds", type=int, default=2,
        help="overhead and sidecars: ABBA rounds (each round measures both configs once)")
    add("--upstreams", type=int, default=2, help="overhead: nginx backends behind meshgate")
    add("--split-requests", type=int, default=10_000)
    add("--lb-requests", type=int, default=3_000, help="requests per load balancer")
    add("--fail-requests", type=int, default=10_000)
    add("--concurrency", type=int, default=16, help="traffic: client connections")
    add("--fast-ms", type=int, default=2, help="traffic: delay of the fast endpoints "
        "(the slow one gets 10x)")
    add("--rate", type=float, default=1000.0, help="sidecars: requests per second")
    add("--paced-duration", type=float, default=10.0, help="sidecars: seconds per path")
    add("--paced-warmup", type=float, default=2.0, help="sidecars: warm-up seconds per path")
    add("--paced-connections", type=int, default=4, help="sidecars: client connections")
    add("--mesh-protocols", default="h2c",
        type=lambda s: [p.strip() for p in s.split(",") if p.strip()],
        help="sidecars: between the sidecars, one path each: h2c (default), http1, or "
             "h2c,http1")
    add("--registry-args", default="",
        help="extra arguments for bench/registry_bench.py, e.g. '--changes 200'")
    add("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if unknown := set(args.parts) - set(PARTS):
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    if not args.mesh_protocols or set(args.mesh_protocols) - {"h2c", "http1"}:
        parser.error("--mesh-protocols: expected h2c, http1 or h2c,http1")
    return args


def main(argv: list[str] | None = None) -> int:
    return procs.main_guarded(run, _parse(argv))


if __name__ == "__main__":
    sys.exit(main())
