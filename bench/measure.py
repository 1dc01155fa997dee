"""Start a target, check that it really proxies, and measure it under wrk."""

from __future__ import annotations

import http.client
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import loadgen
import procs
import report
import targets

LOGS = targets.HERE / ".work" / "logs"


@dataclass
class Load:
    threads: int
    connections: int
    duration: float
    warmup: float
    retries: int  # extra measured runs allowed while other processes load the machine


class TargetError(Exception):
    pass


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    host_port, _, path = url.removeprefix("http://").partition("/")
    host, _, port = host_port.partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=2)
    try:
        conn.request("GET", "/" + path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


def _tail(log: Path, lines: int = 15) -> str:
    text = log.read_text(errors="replace") if log.exists() else ""
    return "\n".join(text.strip().splitlines()[-lines:])


def wait_ready(proc: subprocess.Popen[bytes], target: targets.Target, token: str,
               log: Path) -> None:
    """Poll until the target proxies a request to the backend (body carries ``token``)."""
    deadline = time.monotonic() + target.ready_timeout
    admin_ok, last = target.admin_url is None, "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TargetError(f"exited with status {proc.returncode}:\n{_tail(log)}")
        try:
            if not admin_ok and target.admin_url:
                status, body = _get(target.admin_url)
                admin_ok, last = status == 200, f"admin /ready: {status} {body[:100]!r}"
            if admin_ok and target.setup is not None:
                target.setup(target)        # e.g. create the consumer whose key wrk sends
                target.setup = None
            if admin_ok:
                status, body = _get(target.url, target.headers)
                if status == 200 and token in body:
                    return
                last = f"GET {targets.PATH}: {status} {body[:100]!r}"
        except (OSError, http.client.HTTPException) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.1)
    raise TargetError(f"not ready after {target.ready_timeout:.0f} s ({last});"
                      f" log:\n{_tail(log)}")


def launch(group: procs.ProcGroup, target: targets.Target,
           token: str) -> subprocess.Popen[bytes]:
    log = LOGS / f"{target.key}.log"
    proc = group.start(target.argv, log, env=target.env, cwd=target.cwd)
    wait_ready(proc, target, token, log)
    return proc


def _one_run(group: procs.ProcGroup, proc: subprocess.Popen[bytes], target: targets.Target,
             backend: subprocess.Popen[bytes], load: Load) -> report.Result:
    """One measured wrk run; CPU of the target's tree, and of processes not ours."""
    pids = group.tree(proc)
    ours = pids + group.tree(backend)
    before, ours_before = procs.cpu_ticks(pids), procs.cpu_ticks(ours)
    busy, own = procs.system_busy_seconds(), procs.own_cpu_seconds()
    res = loadgen.run_wrk(target.url, load.threads, load.connections, load.duration,
                          target.headers)
    busy, own = procs.system_busy_seconds() - busy, procs.own_cpu_seconds() - own
    pids = sorted(set(pids) | set(group.tree(proc)))
    cpu = procs.cpu_seconds_between(before, procs.cpu_ticks(pids))
    ours = sorted(set(ours) | set(pids) | set(group.tree(backend)))
    other = busy - own - procs.cpu_seconds_between(ours_before, procs.cpu_ticks(ours))
    if proc.poll() is not None:
        raise TargetError(f"died during the run:\n{_tail(LOGS / f'{target.key}.log')}")
    return report.Result(
        target.key, target.label, rps=res.rps, p50_ms=res.p50_ms, p99_ms=res.p99_ms,
        requests=res.requests, cpu_us_per_req=cpu * 1e6 / max(res.requests, 1),
        peak_rss_mib=procs.peak_rss_kib(pids) / 1024,
        worker_rss_mib=procs.peak_rss_kib(pids, "meshgate.server.worker") / 1024,
        errors=res.non_2xx + res.socket_errors,
        other_cpu_pct=max(0.0, other) * 100 / max(res.seconds, 1e-9))


def measure(group: procs.ProcGroup, proc: subprocess.Popen[bytes], target: targets.Target,
            backend: subprocess.Popen[bytes], load: Load) -> report.Result:
    """Warm up, then measure; on a busy machine measure again, keeping the quietest run."""
    loadgen.run_wrk(target.url, load.threads, load.connections, load.warmup, target.headers)
    best: report.Result | None = None
    for attempt in range(1 + load.retries):
        result = _one_run(group, proc, target, backend, load)
        if best is None or result.other_cpu_pct < best.other_cpu_pct:
            best = result
        if result.other_cpu_pct <= report.NOISY_PCT:
            break
        if attempt < load.retries:
            print(f"   other processes used {result.other_cpu_pct:.0f}% of a core; "
                  "measuring again", flush=True)
    assert best is not None
    return best
