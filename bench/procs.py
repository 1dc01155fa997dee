"""Start benchmark processes, account for their CPU and memory, and always stop them.

Every process is started in its own session (so it owns a process group) and
every descendant ever observed is remembered by ``(pid, starttime)``, so that
``stop_all`` can still kill a child that escaped its group, without ever
signalling an unrelated process that reused the pid.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (index 0 is field 3, the state)."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return data[data.rindex(")") + 2 :].split()


def descendants(root: int) -> list[int]:
    """``root`` and all of its live descendants, found through each process's ppid."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        if _stat(pid) is not None:
            tree.append(pid)
            todo.extend(children.get(pid, ()))
    return tree


def cpu_ticks(pids: list[int]) -> dict[int, int]:
    """utime + stime (fields 14, 15; all threads) per pid, in clock ticks."""
    out: dict[int, int] = {}
    for pid in pids:
        if (fields := _stat(pid)) is not None:
            out[pid] = int(fields[11]) + int(fields[12])
    return out


def cpu_seconds_between(before: dict[int, int], after: dict[int, int]) -> float:
    """CPU seconds spent between two ``cpu_ticks`` snapshots (new pids count whole)."""
    return sum(t - before.get(pid, 0) for pid, t in after.items()) / CLK_TCK


def system_busy_seconds() -> float:
    """Non-idle CPU time of the whole machine, all cores (from /proc/stat)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def own_cpu_seconds() -> float:
    """CPU time of this process and its reaped children (wrk runs end up here)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def peak_rss_kib(pids: list[int], cmdline_has: str = "") -> int:
    """Largest VmHWM (peak resident set) among ``pids``, in KiB.

    With ``cmdline_has``, only processes whose command line contains it count
    (meshgate's data-plane workers, apart from the master).
    """
    peak = 0
    for pid in pids:
        try:
            if cmdline_has and cmdline_has not in Path(f"/proc/{pid}/cmdline").read_text(
                    errors="replace").replace("\0", " "):
                continue
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except OSError:
            continue
    return peak


class ProcGroup:
    """All processes started by one benchmark run."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []
        self._seen: set[tuple[int, str]] = set()

    def start(self, argv: list[str], log: Path, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                    start_new_session=True)
        self._procs.append(proc)
        return proc

    def tree(self, proc: subprocess.Popen[bytes]) -> list[int]:
        """Live process tree of ``proc``; remembered for cleanup."""
        pids = descendants(proc.pid)
        for pid in pids:
            if (fields := _stat(pid)) is not None:
                self._seen.add((pid, fields[19]))
        return pids

    def started_after(self, proc: subprocess.Popen[bytes]) -> list[subprocess.Popen[bytes]]:
        """Processes still tracked that were started after ``proc``."""
        return self._procs[self._procs.index(proc) + 1 :] if proc in self._procs else []

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
        if proc.poll() is None:
            self.tree(proc)
            _killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                _killpg(proc.pid, signal.SIGKILL)
                proc.wait(grace)
        _killpg(proc.pid, signal.SIGKILL)  # stragglers left in the group
        if proc in self._procs:
            self._procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(reversed(self._procs)):
            self.stop(proc)
        deadline = time.monotonic() + 2.0
        for pid, start in self._seen:
            fields = _stat(pid)
            while fields is not None and fields[19] == start and fields[0] != "Z":
                sig = signal.SIGKILL if time.monotonic() > deadline else signal.SIGTERM
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
                fields = _stat(pid)
        self._seen.clear()


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main_guarded(run: Callable[[Any, ProcGroup], int], args: Any) -> int:
    """Run a benchmark; whatever ends it (signal, ^C, error), its processes stop."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    group = ProcGroup()
    try:
        return run(args, group)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        group.stop_all()
