"""The one door into asyncio: redis-py and nats-py run on a trio-asyncio loop, here only.

DESIGN.md's measurements decide the shape: one bridged call costs ≈ 30 µs and a bridged NATS
publish ≈ 73 µs, so control-plane calls (a Redis command, a room command) may cross per call,
while media never does — it goes through deques drained by one long-lived asyncio task per
direction (see ``cluster/relay``).

Importing trio-asyncio patches asyncio for the whole process (its own loop policy, even for
loops created outside Trio), so only the cluster adapters import this module, and the app
imports those only when cluster mode starts. A process that also runs plain asyncio — the test
suite driving Playwright and aiortc in-process — must not import it (tests/aio has its own
pytest process).

Every bridged call has a deadline: a request that needs Redis or NATS while they are down must
turn into ``503 Retry-After`` within 2 s (issue 4), never hang.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio
import trio_asyncio

from trio_sfu.sfu.errors import BackendUnavailable

__all__ = ["CALL_TIMEOUT", "BackendUnavailable", "call", "open_asyncio", "trio_asyncio"]

T = TypeVar("T")

#: Default deadline for one control-plane call into asyncio.
CALL_TIMEOUT = 1.5


@asynccontextmanager
async def open_asyncio() -> AsyncIterator[None]:
    """Run an asyncio loop inside this Trio task tree for the duration of the block."""
    async with trio_asyncio.open_loop():
        yield


async def call(
    fn: Callable[..., Awaitable[T]], *args: Any, timeout: float = CALL_TIMEOUT, **kwargs: Any
) -> T:
    """Await an asyncio coroutine function from Trio, bounded by ``timeout``.

    Connection errors and timeouts become :class:`BackendUnavailable`; anything else (a bug,
    a protocol error we should see) propagates unchanged.
    """
    try:
        with trio.fail_after(timeout):
            return await trio_asyncio.aio_as_trio(fn)(*args, **kwargs)  # type: ignore[no-any-return]
    except trio.TooSlowError:
        raise BackendUnavailable(f"{getattr(fn, '__qualname__', fn)} timed out") from None
    except (ConnectionError, OSError) as exc:
        raise BackendUnavailable(f"{type(exc).__name__}: {exc}") from exc
