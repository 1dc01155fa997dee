"""Issue targets on where requests go: split accuracy, latency-aware balancing,
and a failing endpoint hidden by retries and outlier detection.

Theory of operation
-------------------
One meshgate (1 worker) serves every scenario, one apiEndpoint and pipeline
each, by path prefix, in front of Python backends (``tests/support/backend.py``)
that count their requests (``/_ctl/count``):

* ``/split/*``  -> ``split`` 90/10 over serviceEndpoints ``v1`` and ``v2``;
* ``/rr/*``, ``/lr/*``, ``/ewma/*`` -> the same three endpoints, two fast
  (``--delay FAST``) and one ten times slower (``--delay SLOW``), balanced by
  round-robin, least-request and peak-ewma;
* ``/fail/*``   -> three endpoints, one answering every request with 500,
  with ``retry`` (``retryOn: [5xx]``, ``numRetries: 2``) and
  ``outlierDetection`` (Envoy's defaults: 5 consecutive 5xx).

Load comes from ``client.burst`` (a fixed number of requests over N
keep-alive connections). Each scenario reads the backends' counters and the
gateway's ``/metrics`` before and after its run and reports the differences,
so readiness probes and earlier scenarios do not count.
"""

from __future__ import annotations

from typing import Any

import procs

from mesh import client
from mesh.report import Section, table
from mesh.stack import Stack, counts, metric

ROUTES = ("split", "rr", "lr", "ewma", "fail")
LB_KINDS = {"rr": "round-robin", "lr": "least-request", "ewma": "peak-ewma"}


def gateway(split: list[int], lb: list[int], fail: list[int]) -> dict[str, Any]:
    def urls(ports: list[int]) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in ports]

    services: dict[str, Any] = {"v1": {"url": urls(split)[0]}, "v2": {"url": urls(split)[1]}}
    for key, kind in LB_KINDS.items():
        services[key] = {"urls": urls(lb), "loadBalancer": kind}
    services["fail"] = {"urls": urls(fail),
                        "retry": {"retryOn": ["5xx"], "numRetries": 2},
                        "outlierDetection": {"consecutive5xx": 5}}
    actions: dict[str, Any] = {key: {"serviceEndpoint": key} for key in (*LB_KINDS, "fail")}
    actions["split"] = {"split": [{"serviceEndpoint": "v1", "weight": 90},
                                  {"serviceEndpoint": "v2", "weight": 10}]}
    return {
        "apiEndpoints": {key: {"host": "*", "paths": [f"/{key}/*"]} for key in ROUTES},
        "serviceEndpoints": services,
        "policies": ["proxy"],
        "pipelines": {key: {"apiEndpoints": [key],
                            "policies": [{"proxy": [{"action": actions[key]}]}]}
                      for key in ROUTES},
    }


def _latency(out: client.Outcome) -> tuple[str, str, str]:
    return (f"{out.total / out.seconds:,.0f}" if out.seconds else "n/a",
            f"{client.percentile(out.latency_ms, 0.5):.1f} ms",
            f"{client.percentile(out.latency_ms, 0.99):.1f} ms")


def run(group: procs.ProcGroup, *, split_requests: int, lb_requests: int,
        fail_requests: int, concurrency: int, fast_ms: int, slow_ms: int) -> list[Section]:
    stack = Stack(group)
    try:
        split = [stack.python_backend(n) for n in ("v1", "v2")]
        lb = [stack.python_backend(n, "--delay", str(d))
              for n, d in (("fast0", fast_ms), ("fast1", fast_ms), ("slow", slow_ms))]
        fail = [stack.python_backend("good0"), stack.python_backend("good1"),
                stack.python_backend("bad", "--fail", "500")]
        port, admin, _ = stack.meshgate("traffic", gateway(split, lb, fail),
                                        [f"/{key}/probe" for key in ROUTES if key != "fail"])
        sections = [_split(port, split, split_requests, concurrency),
                    _balancing(port, lb, lb_requests, concurrency, fast_ms, slow_ms),
                    _failing(port, admin, fail, fail_requests, concurrency)]
    finally:
        stack.stop()
    return sections


def _split(port: int, backends: list[int], total: int, concurrency: int) -> Section:
    section = Section("2. Traffic split accuracy (90/10)")
    before = counts(backends)
    out = client.run(client.burst(port, "/split/x", total, concurrency))
    v1, v2 = (a - b for a, b in zip(counts(backends), before, strict=True))
    share = 100.0 * v2 / max(v1 + v2, 1)
    print(f"   split: v1 {v1}, v2 {v2} ({share:.2f}% v2), statuses {dict(out.statuses)}",
          flush=True)
    section.lines += [
        f"{total:,} `GET /split/x` over {concurrency} keep-alive connections; meshgate "
        "(`--workers 1`) `proxy` action `split: [{v1, weight: 90}, {v2, weight: 10}]`; "
        "requests counted by each backend (`tests/support/backend.py`, `/_ctl/count`). "
        "The split is a weighted random draw, so over this many requests 95% of runs land "
        f"within ±{196 * (0.09 / max(total, 1)) ** 0.5:.2f} points of 10%.",
        "",
        *table(["requests", "non-2xx", "v1", "v2", "v2 share", "req/s"],
               [[f"{out.total:,}", str(out.total - out.ok), f"{v1:,}", f"{v2:,}",
                 f"{share:.2f}%", _latency(out)[0]]], right=0),
    ]
    section.data = {"requests": out.total, "non_2xx": out.total - out.ok, "v1": v1, "v2": v2,
                    "v2_share_pct": share}
    section.check("90/10 split over 10,000 requests: v2 share within 10% ± 1 point",
                  f"{share:.2f}%", abs(share - 10.0) <= 1.0 and out.ok == out.total)
    return section


def _balancing(port: int, backends: list[int], total: int, concurrency: int, fast_ms: int,
               slow_ms: int) -> Section:
    section = Section("3. Latency-aware balancing (one endpoint 10x slower)")
    rows: list[list[str]] = []
    data: dict[str, dict[str, Any]] = {}
    for key, kind in LB_KINDS.items():
        before = counts(backends)
        out = client.run(client.burst(port, f"/{key}/x", total, concurrency))
        got = [a - b for a, b in zip(counts(backends), before, strict=True)]
        shares = [100.0 * n / max(sum(got), 1) for n in got]
        print(f"   {kind}: {got} ({', '.join(f'{s:.1f}%' for s in shares)})", flush=True)
        rps, p50, p99 = _latency(out)
        rows.append([kind, *(f"{n:,} ({s:.1f}%)" for n, s in zip(got, shares, strict=True)),
                     str(out.total - out.ok), rps, p50, p99])
        data[kind] = {"counts": got, "shares_pct": shares, "non_2xx": out.total - out.ok,
                      "p50_ms": client.percentile(out.latency_ms, 0.5),
                      "p99_ms": client.percentile(out.latency_ms, 0.99)}
    section.lines += [
        f"{total:,} `GET` per balancer over {concurrency} keep-alive connections, meshgate "
        f"(`--workers 1`) in front of three backends: two answering after {fast_ms} ms, one "
        f"after {slow_ms} ms (`--delay`). Counts per backend from `/_ctl/count`; latency is "
        "the client's.",
        "",
        *table(["loadBalancer", f"fast0 ({fast_ms} ms)", f"fast1 ({fast_ms} ms)",
                f"slow ({slow_ms} ms)", "non-2xx", "req/s", "p50", "p99"], rows),
    ]
    section.data = data
    rr = data["round-robin"]["shares_pct"][2]
    section.check("round-robin baseline: slow endpoint gets ~1/3", f"{rr:.1f}%",
                  abs(rr - 100 / 3) <= 3.0)
    for kind in ("least-request", "peak-ewma"):
        share = data[kind]["shares_pct"][2]
        section.check(f"{kind}: slow endpoint gets less than round-robin gives it",
                      f"{share:.1f}%", share < rr)
    return section


def _failing(port: int, admin: int, backends: list[int], total: int,
             concurrency: int) -> Section:
    section = Section("4. One failing endpoint of three (retries + outlier detection)")
    names = ("meshgate_upstream_retries_total", "meshgate_outlier_ejections_total",
             "meshgate_retry_budget_exhausted_total", "meshgate_upstream_overflow_total")
    before_m = {n: metric(admin, n, service_endpoint="fail") for n in names}
    before = counts(backends)
    out = client.run(client.burst(port, "/fail/x", total, concurrency))
    got = [a - b for a, b in zip(counts(backends), before, strict=True)]
    m = {n: metric(admin, n, service_endpoint="fail") - before_m[n] for n in names}
    rate = 100.0 * out.ok / max(out.total, 1)
    print(f"   failing endpoint: {out.ok}/{out.total} ok ({rate:.2f}%), retries "
          f"{m[names[0]]:.0f}, ejections {m[names[1]]:.0f}, backends {got}", flush=True)
    statuses = ", ".join(f"{s or 'socket error'}: {n:,}" for s, n in sorted(out.statuses.items()))
    section.lines += [
        f"{total:,} `GET /fail/x` over {concurrency} keep-alive connections; meshgate "
        "(`--workers 1`) serviceEndpoint with three urls, one a backend started with "
        "`--fail 500`; `retry: {retryOn: [5xx], numRetries: 2}`, `outlierDetection: "
        "{consecutive5xx: 5}` (other settings Envoy's defaults). Counters are differences of "
        "`/metrics` over the run.",
        "",
        *table(["requests", "succeeded", "success rate", "statuses", "retries", "ejections",
                "budget exhausted", "overflow", "good0 / good1 / bad saw"],
               [[f"{out.total:,}", f"{out.ok:,}", f"{rate:.2f}%", statuses,
                 f"{m[names[0]]:.0f}", f"{m[names[1]]:.0f}", f"{m[names[2]]:.0f}",
                 f"{m[names[3]]:.0f}", " / ".join(f"{n:,}" for n in got)]], right=0),
    ]
    section.data = {"requests": out.total, "ok": out.ok, "success_pct": rate,
                    "statuses": {str(k): v for k, v in out.statuses.items()},
                    "metrics": m, "backend_counts": got}
    section.check("one endpoint failing every request: >= 99.9% of client requests succeed",
                  f"{rate:.2f}%", rate >= 99.9)
    return section
