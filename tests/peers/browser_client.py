"""Trio side of ``tests/peers/browser.py``: drive named Chromium pages from a test."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from tests.peers.harness import PeerError, PeerProcess, open_peer

SCRIPT = "browser.py"


class Browser:
    def __init__(self, peer: PeerProcess) -> None:
        self._peer = peer
        self._ids = itertools.count(1)
        self._lock = trio.Lock()

    async def _call(self, request: dict[str, Any], timeout: float) -> Any:
        async with self._lock:
            rid = next(self._ids)
            await self._peer.send({"id": rid, **request})
            with trio.fail_after(timeout):
                while True:
                    message = await self._peer.receive_any()
                    if message.get("id") == rid:
                        break
        if not message.get("ok"):
            raise self._peer.error(f"browser {request.get('op')} failed: {message.get('error')}")
        return message.get("result")

    async def open(self, page: str, url: str, timeout: float = 60) -> None:
        await self._call({"op": "open", "page": page, "url": url}, timeout)

    async def eval(self, page: str, js: str, arg: Any = None, timeout: float = 60) -> Any:
        """Evaluate ``js`` (an expression or an ``async (arg) => ...`` function) in ``page``."""
        return await self._call({"op": "eval", "page": page, "js": js, "arg": arg}, timeout)

    async def close_page(self, page: str) -> None:
        await self._call({"op": "close", "page": page}, 30)

    async def wait_for(
        self,
        page: str,
        js: str,
        predicate: Callable[[Any], bool],
        *,
        timeout: float = 30,
        interval: float = 0.25,
    ) -> Any:
        """Evaluate ``js`` until ``predicate(result)`` holds; return that result (bounded)."""
        last: Any = None
        with trio.move_on_after(timeout):
            while True:
                last = await self.eval(page, js)
                if predicate(last):
                    return last
                await trio.sleep(interval)
        raise self._peer.error(f"condition not met on {page} within {timeout} s; last {last!r}")


@asynccontextmanager
async def open_browser() -> AsyncIterator[Browser]:
    async with open_peer(SCRIPT) as peer:
        with trio.fail_after(60):
            await peer.receive_any()  # the launch line
        yield Browser(peer)


__all__ = ["Browser", "PeerError", "open_browser"]
