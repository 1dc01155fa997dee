"""gRPC unary calls at a constant rate: direct to the app vs through two sidecars.

Usage: .venv/bin/python bench/sidecar_grpc.py [--rate 1000] [--duration 10] [--warmup 2]
                                              [--rounds 2] [--payload 64]

Theory of operation
-------------------
The pieces, each a real process on loopback:

    client --h2c--> caller sidecar (outbound) ==h2c==> app sidecar (inbound) --h2c--> app
    client --h2c-----------------------------------------------------------------> app

``meshgate registry``; the app, ``tests/support/grpc_app.py``'s Echo service
(grpcio, a process of its own); its sidecar (``meshgate sidecar --service echo
--app-protocol h2c``), which registers the instance with ``protocol: h2c``; a
caller's sidecar (``--no-register``) whose outbound port the client calls
with ``:authority`` ``echo``, as an app would. Both sidecars run one worker
with default settings.

The client (grpc.aio, one channel, hence one HTTP/2 connection, per path)
sends ``Echo/Unary`` calls on an open-loop schedule: call ``i`` is due at
``start + i / rate`` and its latency counts from then, so a call queued behind
a slow one is not forgiven. After a warm-up of each path, the paths are
measured in alternating slices (ABBA, ``rounds`` pairs of ``duration /
rounds``), and the percentiles pool each path's calls. The client shares
the machine with everything it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import procs
import report
import targets
from mesh.client import percentile
from mesh.stack import Stack, StackError, tail

HERE = Path(__file__).resolve().parent
APP = """
import sys, threading
from tests.support.grpc_app import GrpcApp
app = GrpcApp(name="echo", workers=int(sys.argv[1]))
print("listening on", app.port, flush=True)
threading.Event().wait()
"""


@dataclass
class Outcome:
    latency_ms: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0
    sidecar_cpu: float = 0.0        # CPU seconds of both sidecars' processes meanwhile


def _stubs() -> tuple[Any, Any]:
    sys.path.insert(0, str(targets.ROOT))
    from tests.support.grpc_app import stubs
    return stubs()


async def paced(target: str, authority: str | None, rate: float, seconds: float,
                payload: int) -> Outcome:
    import grpc

    pb2, pb2_grpc = _stubs()
    options = [("grpc.default_authority", authority)] if authority else []
    out = Outcome()
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        stub = pb2_grpc.EchoStub(channel)
        msg = pb2.Msg(text="x" * payload, seq=1)
        loop = asyncio.get_running_loop()

        async def one(due: float) -> None:
            try:
                await stub.Unary(msg, timeout=5)
            except grpc.aio.AioRpcError:
                out.errors += 1
                return
            out.latency_ms.append((loop.time() - due) * 1000.0)

        await stub.Unary(msg, timeout=5)            # connected before the clock starts
        calls = []
        start = loop.time() + 0.01
        for i in range(int(rate * seconds)):
            due = start + i / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            calls.append(asyncio.ensure_future(one(due)))
        await asyncio.gather(*calls)
        out.seconds = loop.time() - start
    return out


def _start_app(stack: Stack, workers: int) -> int:
    proc, log = stack._start("grpc-app", [sys.executable, "-c", APP, str(workers)],
                             cwd=targets.ROOT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"the gRPC app exited {proc.returncode}:\n{tail(log)}")
        found = re.search(r"listening on (\d+)", log.read_text(errors="replace"))
        if found:
            return int(found[1])
        time.sleep(0.05)
    raise StackError(f"the gRPC app did not start:\n{tail(log)}")


def _ready(target: str, authority: str | None, proc: subprocess.Popen[bytes],
           log: Path) -> None:
    deadline = time.monotonic() + 30
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"exited {proc.returncode}:\n{tail(log)}")
        try:
            asyncio.run(paced(target, authority, 100, 0.05, 8))
            return
        except Exception as exc:     # grpc raises its own types; any failure is "not yet"
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.2)
    raise StackError(f"{target} ({authority}) not answering: {last}\n{tail(log)}")


def run(args: argparse.Namespace, group: procs.ProcGroup) -> int:
    stack = Stack(group)
    try:
        app = _start_app(stack, args.app_threads)
        registry = stack.registry()
        _, _, callee = stack.sidecar("echo", app, registry, "--app-protocol", "h2c")
        _, outbound, caller = stack.sidecar("caller", targets.free_port(), registry,
                                            "--no-register")
        sidecars = group.tree(callee) + group.tree(caller)
        _ready(f"127.0.0.1:{outbound}", "echo", caller, stack.log("sidecar-caller"))
        paths = {"direct": (f"127.0.0.1:{app}", None),
                 "sidecars (h2c)": (f"127.0.0.1:{outbound}", "echo")}
        for target, authority in paths.values():
            asyncio.run(paced(target, authority, args.rate, args.warmup, args.payload))
        pooled = {name: Outcome() for name in paths}
        names = list(paths)
        for r in range(args.rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                target, authority = paths[name]
                before = procs.cpu_ticks(sidecars)
                out = asyncio.run(paced(target, authority, args.rate,
                                        args.duration / args.rounds, args.payload))
                pooled[name].sidecar_cpu += procs.cpu_seconds_between(
                    before, procs.cpu_ticks(sidecars))
                pooled[name].latency_ms += out.latency_ms
                pooled[name].errors += out.errors
                pooled[name].seconds += out.seconds
    finally:
        stack.stop()
    print(_markdown(args, pooled))
    return 0 if all(o.errors == 0 for o in pooled.values()) else 1


def _markdown(args: argparse.Namespace, pooled: dict[str, Outcome]) -> str:
    pct = {name: {q: percentile(o.latency_ms, q) for q in (0.5, 0.9, 0.99)}
           for name, o in pooled.items()}
    facts = report.machine()
    rows = [f"| {name} | {len(o.latency_ms) + o.errors:,} | "
            f"{(len(o.latency_ms) + o.errors) / o.seconds:,.0f} | {o.errors} | "
            + " | ".join(f"{pct[name][q]:.3f} ms" for q in (0.5, 0.9, 0.99))
            + f" | {o.sidecar_cpu / max(1, len(o.latency_ms) + o.errors) * 1e6:,.0f} µs |"
            for name, o in pooled.items()]
    added = {q: pct["sidecars (h2c)"][q] - pct["direct"][q] for q in (0.5, 0.9, 0.99)}
    command = " ".join([".venv/bin/python bench/sidecar_grpc.py",
                        *map(shlex.quote, sys.argv[1:])])
    return "\n".join([
        "## gRPC through two sidecars",
        "",
        f"Command: `{command}`. Machine: {facts['cpu']}, {facts['cores']} cores, "
        f"Python {facts['python']}; client, app, registry and sidecars share the cores.",
        "",
        f"Constant {args.rate:,.0f} calls/s of `Echo/Unary` ({args.payload}-byte text) from a "
        "grpc.aio client over one channel per path, latency from each call's scheduled "
        f"time; {args.duration:g} s per path after a {args.warmup:g} s warm-up, in "
        "alternating slices. *sidecars (h2c)*: caller's `meshgate sidecar` outbound port "
        "(`:authority` echo) -> HTTP/2 -> app's `meshgate sidecar --app-protocol h2c` -> "
        "app (grpcio). *sidecars' CPU per call*: CPU time of both sidecars' processes "
        "during the path's slices over its calls (idle upkeep only, on the direct path).",
        "",
        "| path | calls | calls/s | errors | p50 | p90 | p99 | sidecars' CPU per call |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        f"Added by the two sidecars: p50 **+{added[0.5]:.3f} ms**, p90 +{added[0.9]:.3f} ms, "
        f"p99 +{added[0.99]:.3f} ms.",
    ])


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--rate", type=float, default=1000.0, help="calls per second")
    add("--duration", type=float, default=10.0, help="seconds measured per path")
    add("--warmup", type=float, default=2.0, help="seconds of warm-up per path")
    add("--rounds", type=int, default=2, help="ABBA rounds (each measures both paths once)")
    add("--payload", type=int, default=64, help="bytes of text in each message")
    add("--app-threads", type=int, default=16, help="the gRPC app's worker threads")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0 or args.rounds < 1:
        parser.error("--rate and --duration must be positive, --rounds at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return procs.main_guarded(run, _parse(argv))


if __name__ == "__main__":
    sys.exit(main())
