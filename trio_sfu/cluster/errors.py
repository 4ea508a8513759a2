"""Errors of the cluster backends, importable without asyncio.

Importing ``trio_asyncio`` changes asyncio's event loop policy for the whole process, which
breaks unrelated asyncio users in other threads (Playwright's sync API in the tests, for one).
So the SFU imports only this module; ``cluster/aio.py`` and the Redis/NATS adapters — the only
code that needs trio-asyncio — are imported when cluster mode starts.
"""

from __future__ import annotations


class BackendUnavailable(Exception):
    """Redis or NATS did not answer in time (or refused); callers map it to 503."""


class NodeUnreachable(Exception):
    """No pod listens on a node's subject: that node is not running (or not connected)."""
