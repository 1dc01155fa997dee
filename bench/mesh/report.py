"""The result of one mesh scenario: markdown lines, raw data, and target checks.

Theory of operation
-------------------
A scenario fills a ``Section``: free markdown (its tables), a JSON-able
``data`` dict, and ``checks`` -- one per target from the issues, each with
the measured value and whether it met the target. ``mesh_bench.py`` prints
the sections in order and a summary table of every check at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Check:
    target: str       # the claim, as the issue words it
    measured: str
    passed: bool


@dataclass
class Section:
    title: str
    lines: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    error: str = ""

    def check(self, target: str, measured: str, passed: bool) -> None:
        self.checks.append(Check(target, measured, passed))

    def markdown(self) -> str:
        body = [f"### {self.title}", ""]
        if self.error:
            body += ["**Failed:**", "", "```", self.error.strip(), "```", ""]
        body += self.lines
        return "\n".join(body).rstrip() + "\n"


def table(header: list[str], rows: list[list[str]], right: int = 1) -> list[str]:
    """A markdown table; columns from ``right`` on are right-aligned."""
    align = ["---" if i < right else "---:" for i in range(len(header))]
    return [f"| {' | '.join(header)} |", f"| {' | '.join(align)} |",
            *(f"| {' | '.join(row)} |" for row in rows), ""]


def summary(sections: list[Section]) -> list[str]:
    rows = [[c.target, c.measured, "yes" if c.passed else "**no**"]
            for s in sections for c in s.checks]
    rows += [[s.title, "not measured (failed)", "**no**"] for s in sections if s.error]
    return table(["target", "measured", "met"], rows, right=1)
