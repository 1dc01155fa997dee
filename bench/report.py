"""Results, ratios and machine facts, rendered as markdown for BENCHMARKS.md."""

from __future__ import annotations

import os
import platform
import statistics
from dataclasses import dataclass
from pathlib import Path

NOISY_PCT = 20.0  # "other load" above this makes a row's numbers suspect


@dataclass
class Result:
    key: str
    label: str
    status: str = "ok"  # ok | skipped | failed
    reason: str = ""
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    requests: int = 0
    cpu_us_per_req: float = 0.0
    peak_rss_mib: float = 0.0
    worker_rss_mib: float = 0.0  # meshgate only: the data-plane worker's own peak
    errors: int = 0  # non-2xx responses + socket errors during the measured run
    other_cpu_pct: float = 0.0  # CPU used by processes not in this benchmark, % of one core


def machine() -> dict[str, str]:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    uname = os.uname()
    return {"cpu": model, "cores": str(os.cpu_count()), "kernel": f"{uname.sysname} "
            f"{uname.release} {uname.machine}", "python": platform.python_version()}


def _ratio(results: dict[str, Result], num: str, den: str, field: str) -> str:
    a, b = results.get(num), results.get(den)
    if a is None or b is None or a.status != "ok" or b.status != "ok":
        return "n/a"
    bottom = getattr(b, field)
    return f"{getattr(a, field) / bottom:.2f}" if bottom else "n/a"


def ratios(results: dict[str, Result]) -> dict[str, str]:
    return {
        "meshgate / nginx, req/s": _ratio(results, "meshgate", "nginx", "rps"),
        "meshgate / nginx, p99": _ratio(results, "meshgate", "nginx", "p99_ms"),
        "meshgate / Express Gateway, req/s": _ratio(results, "meshgate", "eg", "rps"),
        "meshgate 10k endpoints / meshgate, req/s": _ratio(results, "meshgate-10k", "meshgate",
                                                          "rps"),
        "key-auth + rate-limit / bare proxy, req/s": _ratio(results, "meshgate-auth",
                                                           "meshgate", "rps"),
        "key-auth + Redis rate-limit / bare proxy, req/s": _ratio(
            results, "meshgate-auth-redis", "meshgate", "rps"),
    }


def _row(r: Result) -> str:
    if r.status != "ok":
        return f"| {r.label} | {r.status}: {r.reason} | | | | | | |"
    return (f"| {r.label} | {r.rps:,.0f} | {r.p50_ms:.2f} ms | {r.p99_ms:.2f} ms "
            f"| {r.cpu_us_per_req:.1f} | {r.peak_rss_mib:.1f} MiB"
            f"{f' (worker {r.worker_rss_mib:.1f})' if r.worker_rss_mib else ''} | {r.errors} "
            f"| {r.other_cpu_pct:.0f}% |")


def typical(rounds: list[list[Result]]) -> list[Result]:
    """Per target, its run with the median req/s (the lower middle of an even count)."""
    out: list[Result] = []
    for first in rounds[0]:
        runs = [r for done in rounds for r in done if r.key == first.key]
        ok = sorted((r for r in runs if r.status == "ok"), key=lambda r: r.rps)
        out.append(ok[(len(ok) - 1) // 2] if ok else runs[-1])
    return out


def median_ratios(per_round: list[dict[str, str]]) -> dict[str, str]:
    """Each ratio's median over the rounds that could compute it."""
    out: dict[str, str] = {}
    for name in per_round[0]:
        values = sorted(float(r[name]) for r in per_round if r.get(name, "n/a") != "n/a")
        out[name] = f"{statistics.median(values):.2f}" if values else "n/a"
    return out


def markdown(results: list[Result], load: str, warmup: float, facts: dict[str, str],
             tool_versions: dict[str, str], per_round: list[dict[str, str]]) -> str:
    noisy = [r.label for r in results if r.status == "ok" and r.other_cpu_pct > NOISY_PCT]
    warning = [f"**Warning:** other processes used over {NOISY_PCT:.0f}% of a core during: "
               f"{', '.join(noisy)}; rerun on an idle machine before quoting these rows.", ""]
    lines = [
        f"Load: `{load}` against each target in turn, 127.0.0.1 only; "
        f"{warmup:g} s warm-up before each measured run.",
        "",
        "| target | req/s | p50 | p99 | CPU µs/req | peak RSS | errors | other load |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(_row(r) for r in results),
        "",
        *([f"{len(per_round)} rounds: each row is the target's median run."]
          if len(per_round) > 1 else []),
        *(warning if noisy else []),
        "CPU µs/req counts all of the target's processes (not the backend's); peak RSS is the "
        "largest VmHWM among them (for meshgate, the master holding the Admin API; the "
        "worker's own peak in brackets); errors are non-2xx responses plus socket errors; other "
        "load is CPU used meanwhile by processes outside the benchmark, in % of one core.",
        "",
        *_ratio_table(per_round),
        "",
        "| machine | |",
        "| --- | --- |",
        *(f"| {k} | {v} |" for k, v in facts.items()),
        *(f"| {k} | {v} |" for k, v in tool_versions.items()),
    ]
    return "\n".join(lines)


def _ratio_table(per_round: list[dict[str, str]]) -> list[str]:
    """One column per round, and their median when there are several."""
    if len(per_round) == 1:
        return ["| ratio | value |", "| --- | ---: |",
                *(f"| {name} | {value} |" for name, value in per_round[0].items())]
    medians = median_ratios(per_round)
    rounds = " | ".join(f"round {n + 1}" for n in range(len(per_round)))
    return [f"| ratio (within each round) | {rounds} | median |",
            "| --- |" + " ---: |" * (len(per_round) + 1),
            *(f"| {name} | " + " | ".join(r[name] for r in per_round) + f" | {medians[name]} |"
              for name in medians)]
