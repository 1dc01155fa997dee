"""Run wrk and parse its ``--latency`` report."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_SIZE = r"([\d.]+)(us|ms|s|m|h)"


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    raw: str


def _duration_ms(value: str, unit: str) -> float:
    return float(value) * _UNITS_MS[unit]


def parse(output: str) -> WrkResult:
    """Parse wrk 4.x output produced with ``--latency``."""
    pct = {m[0]: _duration_ms(m[1], m[2])
           for m in re.findall(rf"^\s+(50|99)%\s+{_SIZE}\s*$", output, re.M)}
    total = re.search(r"^\s+(\d+) requests in " + _SIZE, output, re.M)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    if total is None or rps is None or set(pct) != {"50", "99"}:
        raise ValueError(f"unparseable wrk output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                     output)
    return WrkResult(
        requests=int(total[1]),
        seconds=_duration_ms(total[2], total[3]) / 1000.0,
        rps=float(rps[1]),
        p50_ms=pct["50"],
        p99_ms=pct["99"],
        non_2xx=int(non_2xx[1]) if non_2xx else 0,
        socket_errors=sum(int(n) for n in sock.groups()) if sock else 0,
        raw=output,
    )


def run_wrk(url: str, threads: int, connections: int, duration: float,
            headers: dict[str, str] | None = None) -> WrkResult:
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s",
            "--latency"]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    argv.append(url)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited {done.returncode}: {done.stderr.strip()}")
    return parse(done.stdout)
