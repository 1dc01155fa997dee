"""Running a pipeline: its policies' (condition, action) steps in order.

As in Express Gateway, each policy of a pipeline holds a list of
``{condition, action}`` pairs; every pair whose condition matches runs its
action, in order, until an action takes the exchange over (it responded, or
proxied). Steps are flattened at load time into one tuple, so running a
pipeline is a plain loop: no coroutine is created unless an action returns an
awaitable (it does I/O), and then the rest of the loop continues in a task.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from meshgate.conditions import Predicate
from meshgate.policies import Action

if TYPE_CHECKING:
    from meshgate.protocol.exchange import Exchange

log = logging.getLogger("meshgate.pipeline")


@dataclass(frozen=True)
class Step:
    policy: str
    condition: Predicate | None
    action: Action


class CompiledPipeline:
    __slots__ = ("name", "steps")

    def __init__(self, name: str, steps: tuple[Step, ...]) -> None:
        self.name = name
        self.steps = steps

    def run(self, ex: Exchange, start: int = 0) -> None:
        steps = self.steps
        for i in range(start, len(steps)):
            step = steps[i]
            cond = step.condition
            if cond is not None and not cond(ex):
                continue
            try:
                outcome: Any = step.action(ex)
            except Exception:
                log.exception("policy %s failed in pipeline %s", step.policy, self.name)
                _fail(ex)
                return
            if outcome is None:
                continue
            if outcome is True:
                return
            asyncio.get_running_loop().create_task(self._resume(ex, outcome, i + 1))
            return
        # Every step ran and none answered: Express's final handler says 404.
        ex.respond(404, b"Not Found\n")

    async def _resume(self, ex: Exchange, pending: Awaitable[Any], start: int) -> None:
        try:
            outcome = await pending
        except Exception:
            log.exception("policy failed in pipeline %s", self.name)
            _fail(ex)
            return
        if outcome is not True and not ex.done:
            self.run(ex, start)


def _fail(ex: Exchange) -> None:
    if not ex.done and ex.status == 0:
        ex.respond(500, b"Internal Server Error\n")
