"""A room's event stream from Python (and ``trio-sfu watch``), on trio-websocket.

    async with room_events("http://127.0.0.1:8080", "r1", token=token) as events:
        async for event in events:
            print(event["type"], event.get("peer"))

The server side and the event vocabulary are described in :mod:`trio_sfu.http.events`.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from trio_websocket import ConnectionClosed, ConnectionRejected, HandshakeError, open_websocket_url

__all__ = ["EventStreamClosed", "EventStreamRefused", "describe", "events_url", "room_events"]

CONNECT_TIMEOUT = 10.0


class EventStreamRefused(Exception):
    """The server answered the upgrade with an HTTP status (401, 403, 404, 503...)."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body.strip()}" if body.strip() else f"HTTP {status}")
        self.status = status


class EventStreamClosed(Exception):
    """The stream ended: the server's close code and reason (1012: the node drains)."""

    def __init__(self, code: int | None, reason: str | None) -> None:
        super().__init__(f"closed with {code}" + (f": {reason}" if reason else ""))
        self.code = code
        self.reason = reason


def events_url(base: str, room: str | None, *, chat: bool = False) -> str:
    """``http(s)://host:port`` → the ``ws(s)://`` URL of the room's (or all rooms') events."""
    parts = urlsplit(base if "://" in base else f"http://{base}")
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None:
        raise ValueError(f"{base!r} is not an http(s):// or ws(s):// URL")
    path = parts.path.rstrip("/") + (
        f"/rooms/{quote(room, safe='')}/events" if room is not None else "/events"
    )
    return urlunsplit((scheme, parts.netloc, path, "chat=1" if chat else "", ""))


@asynccontextmanager
async def room_events(
    base_url: str,
    room: str | None,
    *,
    token: str | None = None,
    chat: bool = False,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
    """Connect to ``room``'s events (``None``: every room, with an admin token); yields an
    async iterator of event dicts. Raises :class:`EventStreamRefused` if the upgrade is
    refused, and the iterator raises :class:`EventStreamClosed` when the server closes."""
    url = events_url(base_url, room, chat=chat)
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    if url.startswith("wss:") and ssl_context is None:
        ssl_context = ssl.create_default_context()
    try:
        async with open_websocket_url(
            url,
            ssl_context,
            extra_headers=headers,
            connect_timeout=CONNECT_TIMEOUT,
            disconnect_timeout=CONNECT_TIMEOUT,
            message_queue_size=64,
        ) as ws:

            async def events() -> AsyncIterator[dict[str, Any]]:
                while True:
                    try:
                        message = await ws.get_message()
                    except ConnectionClosed as closed:
                        reason = closed.reason
                        raise EventStreamClosed(
                            reason.code if reason else None, reason.reason if reason else None
                        ) from None
                    yield json.loads(message)

            yield events()
    except ConnectionRejected as rejected:
        body = (rejected.body or b"").decode("utf-8", "replace")
        raise EventStreamRefused(rejected.status_code, body) from None
    except HandshakeError as error:
        raise EventStreamRefused(0, str(error)) from None


def describe(event: dict[str, Any]) -> str:
    """One human line for ``trio-sfu watch``."""
    ts = event.get("ts")
    clock = time.strftime("%H:%M:%S", time.localtime(ts)) if isinstance(ts, float | int) else ""
    kind = event.get("type", "?")
    room = event.get("room")
    where = f"[{room}] " if room else ""
    if kind == "room":
        pubs = ", ".join(p["id"] for p in event.get("publishers", [])) or "none"
        subs = ", ".join(s["id"] for s in event.get("subscribers", [])) or "none"
        return f"{clock} {where}publishers: {pubs}; subscribers: {subs}"
    if kind == "publisher_joined":
        tracks = ", ".join(t["kind"] for t in event.get("tracks", [])) or "no tracks"
        return f"{clock} {where}{event['peer']} publishes ({tracks}) on {event.get('node')}"
    if kind == "subscriber_joined":
        return f"{clock} {where}{event['peer']} subscribes on {event.get('node')}"
    if kind in ("publisher_left", "subscriber_left"):
        return f"{clock} {where}{event['peer']} left ({kind.split('_')[0]})"
    if kind == "chat":
        return f"{clock} {where}<{event.get('from')}> {event.get('text')}"
    if kind == "node_drained":
        return f"{clock} node {event.get('node')} drains: stream ends"
    return f"{clock} {where}{json.dumps(event)}"
