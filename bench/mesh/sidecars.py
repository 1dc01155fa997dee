"""Issue target: two sidecars (outbound + inbound) add <= 1 ms p50 at 1,000 req/s.

Theory of operation
-------------------
The pieces of a mesh call, each a real process on loopback:

    client --> caller sidecar (outbound) --> app sidecar (inbound) --> app (nginx)
    client ---------------------------------------------------------> app (direct)

``meshgate registry``; the app, the harness's nginx backend; the app's
sidecar (``meshgate sidecar --service app``), which registers the instance;
a caller's sidecar (``--no-register``) whose outbound port is called with
``Host: app``, as an app would. Both sidecars run one worker, with no config
of their own (the defaults). ``protocols`` names the caller sidecars, one
per ``--mesh-protocol``: ``h2c`` (the default: the call crosses as an
HTTP/2 stream) and/or ``http1``; each is a path of its own, to the same
app sidecar.

``client.paced`` drives a constant rate over a few keep-alive connections,
latency counted from each request's due time. After a warm-up of each path,
the direct and the sidecar paths are measured alternately, the order
reversed every other round (ABBA with two paths), ``seconds / rounds`` each,
so all see the same machine; the percentiles pool all of a path's requests.
The target is on the p50 difference of each sidecar path.
"""

from __future__ import annotations

import secrets

import procs
import targets

from mesh import client
from mesh.report import Section, table
from mesh.stack import Stack, get, wait_for


def run(group: procs.ProcGroup, *, rate: float, seconds: float, warmup: float,
        connections: int, rounds: int, protocols: tuple[str, ...] = ("h2c",)) -> Section:
    section = Section("5. Two sidecars vs a direct call, constant rate")
    stack = Stack(group)
    try:
        token = secrets.token_hex(8)
        app = stack.nginx_backend("app", token)
        registry = stack.registry()
        stack.sidecar("app", app, registry)
        paths = {"direct": (app, "bench")}
        for protocol in protocols:
            name = f"caller-{protocol}"
            _, outbound, caller = stack.sidecar(name, targets.free_port(), registry,
                                                "--no-register", "--mesh-protocol", protocol)
            wait_for(f"{name} sidecar -> app",
                     lambda port=outbound: token in get(port, targets.PATH, "app")[1],
                     caller, stack.log(f"sidecar-{name}"))
            paths[f"sidecars ({protocol})"] = (outbound, "app")
        pooled: dict[str, client.Outcome] = {name: client.Outcome() for name in paths}
        for port, host in paths.values():
            client.run(client.paced(port, targets.PATH, rate, warmup, connections, host))
        names = list(paths)
        order = [n for r in range(rounds) for n in (names if r % 2 == 0 else names[::-1])]
        for name in order:
            port, host = paths[name]
            out = client.run(client.paced(port, targets.PATH, rate, seconds / rounds,
                                          connections, host))
            pool = pooled[name]
            pool.statuses.update(out.statuses)
            pool.latency_ms += out.latency_ms
            pool.service_ms += out.service_ms
            pool.seconds += out.seconds
    finally:
        stack.stop()
    _render(section, pooled, rate, seconds, warmup, connections, protocols)
    return section


def _render(section: Section, pooled: dict[str, client.Outcome], rate: float,
            seconds: float, warmup: float, connections: int,
            protocols: tuple[str, ...]) -> None:
    pct = {name: {q: client.percentile(out.latency_ms, q) for q in (0.5, 0.9, 0.99)}
           for name, out in pooled.items()}
    svc = {name: client.percentile(out.service_ms, 0.5) for name, out in pooled.items()}
    rows = [[name, f"{out.total:,}", f"{out.total / out.seconds:,.0f}" if out.seconds else "",
             str(out.total - out.ok), *(f"{pct[name][q]:.3f} ms" for q in (0.5, 0.9, 0.99)),
             f"{svc[name]:.3f} ms"] for name, out in pooled.items()]
    meshed = [name for name in pooled if name != "direct"]
    diffs = {name: pct[name][0.5] - pct["direct"][0.5] for name in meshed}
    for name in meshed:
        print(f"   direct p50 {pct['direct'][0.5]:.3f} ms, {name} p50 "
              f"{pct[name][0.5]:.3f} ms: +{diffs[name]:.3f} ms", flush=True)
    section.lines += [
        f"Constant {rate:,.0f} req/s of `GET {targets.PATH}` over {connections} keep-alive "
        f"connections (a paced asyncio client, `bench/mesh/client.py`), {seconds:g} s per "
        f"path after a {warmup:g} s warm-up of each, measured in alternating slices (ABBA). "
        "Latency from each request's scheduled send time (p50 from the actual write in the "
        "last column). App: the harness's nginx backend; *sidecars (P)*: caller's "
        "`meshgate sidecar --mesh-protocol P` outbound port with `Host: app` -> app's "
        "`meshgate sidecar` inbound -> app, endpoints from `meshgate registry` (P: what "
        "crosses between the sidecars, HTTP/2 streams or HTTP/1.1); sidecars 1 worker, "
        "otherwise default settings.",
        "",
        *table(["path", "requests", "req/s", "errors", "p50", "p90", "p99",
                "p50 from write"], rows),
        *(f"p50 added by the two sidecars, {name}: **{diffs[name]:.3f} ms** "
          f"(p90 +{pct[name][0.9] - pct['direct'][0.9]:.3f} ms, "
          f"p99 +{pct[name][0.99] - pct['direct'][0.99]:.3f} ms)." for name in meshed),
        "",
    ]
    section.data = {name: {"requests": out.total, "errors": out.total - out.ok,
                           "p50_ms": pct[name][0.5], "p90_ms": pct[name][0.9],
                           "p99_ms": pct[name][0.99], "p50_from_write_ms": svc[name]}
                    for name, out in pooled.items()}
    section.data["p50_added_ms"] = {name: diffs[name] for name in meshed}
    for name in meshed:
        errors = pooled[name].total - pooled[name].ok + pooled["direct"].total \
            - pooled["direct"].ok
        section.check(f"two sidecars ({name.split('(')[1][:-1]}) add <= 1 ms p50 over a "
                      f"direct call at {rate:,.0f} req/s", f"+{diffs[name]:.3f} ms",
                      diffs[name] <= 1.0 and errors == 0)
