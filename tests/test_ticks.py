"""The process's report ticker (sfu/ticks.py, issue 10): one task step per second for every
subscriber leg's reports, not one task per leg."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
import trio
import trio.testing

from tests.sfu_helpers import start_sfu, wait_for
from tests.task_steps import TaskSteps
from trio_sfu.sfu import ticks
from trio_sfu.sfu.ticks import Ticker


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """The ticker's slice clock: each report a test runs advances it by hand."""
    now = [0.0]
    monkeypatch.setattr(ticks, "_clock", lambda: now[0])
    yield now


def test_every_report_runs_on_the_grid_in_one_step_per_tick() -> None:
    calls: list[tuple[int, float]] = []

    async def main() -> None:
        ticker = Ticker(1.0)
        steps = TaskSteps()
        trio.lowlevel.add_instrument(steps)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker.run, name="ticker")
            with ticker.registered(lambda now, unix: calls.append((0, now))):
                await trio.sleep(0.3)
                with ticker.registered(lambda now, unix: calls.append((1, now))):
                    await trio.sleep(3.0)  # ticks at 1, 2, 3
            await trio.sleep(10.0)  # nobody registered: the ticker sleeps
            nursery.cancel_scope.cancel()
        assert ticker.ticks == 3 and ticker.reports == 6
        # the ticker's task: its start, then one step per tick plus the wake-up on the first
        # registration (no step at all for the 10 s nobody was registered)
        assert steps.steps["ticker"] <= 1 + 3 + 2

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert calls == [(0, 1.0), (1, 1.0), (0, 2.0), (1, 2.0), (0, 3.0), (1, 3.0)]


def test_a_long_tick_checkpoints_after_each_slice(fake_clock: list[float]) -> None:
    """Reports that take 1 ms each (on the slice clock) share the run loop every
    TICK_SLICE: the ticker's task runs two of them per step, not all ten in one."""
    steps = TaskSteps()
    step_of: list[int] = []

    def report(now: float, unix: float) -> None:
        fake_clock[0] += 0.001
        step_of.append(steps.steps["ticker"])

    async def main() -> None:
        ticker = Ticker(1.0)
        trio.lowlevel.add_instrument(steps)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker.run, name="ticker")
            with ExitStack() as legs:
                for _ in range(10):
                    legs.enter_context(ticker.registered(report))
                await trio.sleep(1.5)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert ticks.TICK_SLICE == 0.002
    assert sorted(Counter(step_of).values()) == [2, 2, 2, 2, 2]


def test_a_leg_unregistered_during_a_tick_is_not_reported(fake_clock: list[float]) -> None:
    seen: list[str] = []

    async def main() -> None:
        ticker = Ticker(1.0)
        later = ticker.registered(lambda now, unix: seen.append("later"))

        def first(now: float, unix: float) -> None:
            seen.append("first")
            fake_clock[0] += 1.0  # past the slice: the ticker checkpoints before the next
            later.__exit__(None, None, None)  # the next leg leaves meanwhile

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker.run)
            with ticker.registered(first):
                later.__enter__()
                await trio.sleep(1.5)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert seen == ["first"]


def test_a_failing_report_fails_its_owner_only() -> None:
    good: list[float] = []

    async def main() -> None:
        ticker = Ticker(1.0)

        def bad(now: float, unix: float) -> None:
            raise RuntimeError("report bug")

        async def owner() -> None:
            with ticker.registered(bad) as tick:
                await tick.wait()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker.run)
            with ticker.registered(lambda now, unix: good.append(now)):
                with pytest.raises(RuntimeError, match="report bug"):
                    await owner()
                await trio.sleep(1.5)
            assert len(ticker) == 0
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert good == [1.0, 2.0]


async def test_idle_subscribers_cost_one_task_step_a_second_not_one_each(
    nursery: trio.Nursery,
) -> None:
    """Ten connected subscribers with nothing to receive: each second the ticker runs all ten
    legs' reports in one task step, and no leg's own report task steps at all."""
    env = await start_sfu(nursery)
    for i in range(10):
        await env.subscriber("room", f"s{i}")
    ticker = env.sfu.ticker
    await wait_for(lambda: len(ticker) == 10, 10)
    steps = TaskSteps()
    trio.lowlevel.add_instrument(steps)
    try:
        ticks_before, reports_before = ticker.ticks, ticker.reports
        await wait_for(lambda: ticker.ticks >= ticks_before + 2, 10)
    finally:
        trio.lowlevel.remove_instrument(steps)
    assert ticker.reports - reports_before >= 10 * (ticker.ticks - ticks_before - 1)
    assert not [name for name in steps.steps if "report_loop" in name]
    assert steps.steps["trio_sfu.sfu.ticks.Ticker.run"] >= 2
