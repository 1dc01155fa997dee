"""Issue target: every resilience feature configured but not triggered costs < 10%.

Theory of operation
-------------------
Two meshgate processes (1 worker each) run side by side in front of the same
nginx backends (the harness's backend config, one nginx per upstream):

* **bare** -- the harness's pipeline: one ``proxy`` step to a serviceEndpoint
  with ``urls`` and nothing else (round-robin);
* **full** -- the same ``urls`` with ``retry`` (5xx, reset, connect-failure;
  2 retries, per-try timeout), ``outlierDetection`` (consecutive 5xx and
  gateway errors, success rate), ``circuitBreakers`` far above the load,
  ``requestTimeout``, ``loadBalancer: least-request``, an HTTP
  ``healthCheck`` of ``/`` every second, and a ``fault`` step before the
  proxy whose delay and abort both have ``percentage: 0`` (rolled for every
  request, never injected).

Both get the harness's wrk load in ABBA order over ``rounds`` (bare, full,
full, bare, ...) so that a drift in machine load hits both alike; each run
has its own warm-up. A run's CPU µs/req is the utime+stime of that meshgate's
whole process tree over the run divided by the requests wrk completed, and
"other load" is the machine's busy CPU not spent by our processes (as in
``bench/measure.py``). The ratio is total requests / total seconds of the
full runs over the same for the bare runs.
"""

from __future__ import annotations

import secrets
import subprocess
from typing import Any

import loadgen
import procs
import targets

from mesh.report import Section, table
from mesh.stack import Stack


def gateway(upstreams: list[int], full: bool) -> dict[str, Any]:
    service: dict[str, Any] = {"urls": [f"http://127.0.0.1:{p}" for p in upstreams]}
    steps: list[dict[str, Any]] = [{"proxy": [{"action": {"serviceEndpoint": "backend"}}]}]
    if full:
        service.update({
            "retry": {"retryOn": ["5xx", "reset", "connect-failure"], "numRetries": 2,
                      "perTryTimeout": 5000},
            "outlierDetection": {"consecutive5xx": 5, "consecutiveGatewayFailure": 5,
                                 "successRate": {"minimumHosts": 1, "requestVolume": 100}},
            "circuitBreakers": {"maxConnections": 100_000, "maxPendingRequests": 100_000,
                                "maxRequests": 100_000, "maxRetries": 100_000},
            "requestTimeout": 10_000,
            "loadBalancer": {"type": "least-request"},
            "healthCheck": {"type": "http", "path": "/", "interval": 1000},
        })
        steps.insert(0, {"fault": [{"action": {
            "delay": {"fixedDelay": 1000, "percentage": 0},
            "abort": {"httpStatus": 503, "percentage": 0}}}]})
    return {
        "apiEndpoints": {"api": {"host": "*", "paths": ["/*"]}},
        "serviceEndpoints": {"backend": service},
        "policies": sorted(next(iter(step)) for step in steps),
        "pipelines": {"main": {"apiEndpoints": ["api"], "policies": steps}},
    }


def _run(group: procs.ProcGroup, proc: subprocess.Popen[bytes], url: str,
         backends: list[subprocess.Popen[bytes]], threads: int, connections: int,
         duration: float, warmup: float) -> dict[str, float]:
    loadgen.run_wrk(url, threads, connections, warmup)
    pids = group.tree(proc)
    ours = pids + [pid for b in backends for pid in group.tree(b)]
    before, ours_before = procs.cpu_ticks(pids), procs.cpu_ticks(ours)
    busy, own = procs.system_busy_seconds(), procs.own_cpu_seconds()
    res = loadgen.run_wrk(url, threads, connections, duration)
    busy, own = procs.system_busy_seconds() - busy, procs.own_cpu_seconds() - own
    cpu = procs.cpu_seconds_between(before, procs.cpu_ticks(pids))
    other = busy - own - procs.cpu_seconds_between(ours_before, procs.cpu_ticks(ours))
    if proc.poll() is not None:
        raise RuntimeError("meshgate died during the run")
    return {"rps": res.rps, "p50_ms": res.p50_ms, "p99_ms": res.p99_ms,
            "requests": res.requests, "seconds": res.seconds,
            "cpu_us_per_req": cpu * 1e6 / max(res.requests, 1),
            "errors": res.non_2xx + res.socket_errors,
            "other_pct": max(0.0, other) * 100 / max(res.seconds, 1e-9)}


def run(group: procs.ProcGroup, *, upstreams: int, threads: int, connections: int,
        duration: float, warmup: float, rounds: int) -> Section:
    section = Section("1. Resilience overhead (features configured, not triggered)")
    stack = Stack(group)
    try:
        token = secrets.token_hex(8)
        ports = [stack.nginx_backend(f"nginx{i}", token) for i in range(upstreams)]
        backends = list(stack.mine)
        procs_by = {}
        for name in ("bare", "full"):
            port, _admin, proc = stack.meshgate(f"overhead-{name}",
                                                gateway(ports, name == "full"),
                                                [targets.PATH], expect=token)
            procs_by[name] = (proc, f"http://127.0.0.1:{port}{targets.PATH}")
        order = [n for r in range(rounds) for n in (("bare", "full") if r % 2 == 0
                                                    else ("full", "bare"))]
        runs: list[dict[str, Any]] = []
        for name in order:
            proc, url = procs_by[name]
            result = _run(group, proc, url, backends, threads, connections, duration, warmup)
            runs.append({"config": name, **result})
            print(f"   {name}: {result['rps']:,.0f} req/s, {result['cpu_us_per_req']:.1f} "
                  f"CPU µs/req, other load {result['other_pct']:.0f}%", flush=True)
    finally:
        stack.stop()
    _render(section, runs, upstreams, threads, connections, duration, warmup)
    return section


def _total(runs: list[dict[str, Any]], name: str, key: str) -> float:
    return sum(float(r[key]) for r in runs if r["config"] == name)


def _render(section: Section, runs: list[dict[str, Any]], upstreams: int, threads: int,
            connections: int, duration: float, warmup: float) -> None:
    rps = {n: _total(runs, n, "requests") / max(_total(runs, n, "seconds"), 1e-9)
           for n in ("bare", "full")}
    cpu = {n: sum(r["cpu_us_per_req"] * r["requests"] for r in runs if r["config"] == n)
           / max(_total(runs, n, "requests"), 1) for n in ("bare", "full")}
    ratio = rps["full"] / rps["bare"] if rps["bare"] else 0.0
    rows = [[str(i + 1), r["config"], f"{r['rps']:,.0f}", f"{r['p50_ms']:.2f} ms",
             f"{r['p99_ms']:.2f} ms", f"{r['cpu_us_per_req']:.1f}", str(r["errors"]),
             f"{r['other_pct']:.0f}%"] for i, r in enumerate(runs)]
    section.lines += [
        f"Load: `wrk -t{threads} -c{connections} -d{duration:g}s --latency` against meshgate "
        f"(`--workers 1`) proxying `{targets.PATH}` to {upstreams} nginx backend(s) "
        f"(the harness's backend config); {warmup:g} s wrk warm-up before every run; runs in "
        "ABBA order. *full* = retry + outlierDetection + circuitBreakers (limits 100k) + "
        "requestTimeout + loadBalancer least-request + healthCheck `/` every 1 s + a `fault` "
        "step with delay and abort at percentage 0.",
        "",
        *table(["run", "config", "req/s", "p50", "p99", "CPU µs/req", "errors", "other load"],
               rows, right=2),
        *table(["", "bare", "full", "full / bare"], [
            ["req/s (all runs)", f"{rps['bare']:,.0f}", f"{rps['full']:,.0f}", f"{ratio:.2f}"],
            ["CPU µs/req", f"{cpu['bare']:.1f}", f"{cpu['full']:.1f}",
             f"{cpu['full'] / cpu['bare']:.2f}" if cpu["bare"] else "n/a"]]),
    ]
    implied = cpu["bare"] / cpu["full"] if cpu["full"] else 0.0
    section.lines += [
        "On a machine shared with wrk, the backends and anything else, req/s is bounded by "
        "the cores meshgate gets, not only by its own cost; the CPU µs/req ratio is the "
        "steadier figure. Where meshgate alone saturates its core, its req/s ratio tends to "
        f"bare CPU / full CPU = **{implied:.2f}**.",
        "",
    ]
    section.data = {"runs": runs, "rps": rps, "cpu_us_per_req": cpu, "ratio": ratio,
                    "cpu_implied_ratio": implied}
    section.check("resilience features configured, not triggered: >= 0.9x bare req/s",
                  f"{ratio:.2f}x", ratio >= 0.9)
