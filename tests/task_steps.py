"""A Trio instrument counting scheduler steps by task name: how often a task was woken,
whatever woke it. Tests that a task sleeps when it has nothing to do count its steps with it
(a task's own wake-up counters only see the wake-ups it meant to have)."""

from __future__ import annotations

from collections import Counter

import trio


class TaskSteps(trio.abc.Instrument):
    """Task steps by task name, from the moment it is added as an instrument."""

    def __init__(self) -> None:
        self.steps: Counter[str] = Counter()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task.name] += 1

    def of(self, suffix: str) -> int:
        """Steps of the tasks whose name ends with ``suffix`` (a function's qualified name)."""
        return sum(n for name, n in self.steps.items() if name.endswith(suffix))
