"""Shared fixtures: a live RtcServer on loopback, and task accounting for leak checks."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from trio_sfu.rtc.server import RtcServer


@pytest.fixture
async def rtc_server(nursery: trio.Nursery) -> AsyncIterator[RtcServer]:
    server = RtcServer.bind("127.0.0.1", 0, consent_timeout=30.0)
    nursery.start_soon(server.serve)
    try:
        yield server
    finally:
        server.close()


def live_tasks() -> list[trio.lowlevel.Task]:
    """Every task in this Trio run, found by walking the nursery tree from the root."""
    found: list[trio.lowlevel.Task] = []
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        assert task is not None
        found.append(task)
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return found
