"""Requests about one connection, answered by the pod that holds it (cluster mode, issue 9).

A session URL (``PATCH``/``DELETE /sessions/{id}``) or a seed-API ``DELETE /pub|/sub/{room}/{id}``
names a connection that lives in one pod's memory, while a load balancer without session
affinity sends the request to any pod. The pod that receives it hands the whole request to the
owning pod (the cluster's :class:`Forwarder`: NATS request/reply to that pod's subject), which
runs it through its own application exactly as if the client had reached it — so status codes,
headers and bodies are the owner's, byte for byte, and there is one implementation of every
route. The measured alternative, a ``307`` to the owner, needs every pod reachable by clients
and WHIP clients that follow redirects on ``PATCH``, which several do not.

This module is the HTTP side: what a forwarded request is, how the owner replays it into its
ASGI app (:func:`replay`), and the header that stops a forwarded request from being forwarded
again. The transport is :mod:`trio_sfu.cluster.forward`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio
from quart import Response, request

from trio_sfu.sfu.errors import SfuError

#: Set on a request replayed on the owning pod: it is answered there, never forwarded again.
FORWARDED_HEADER = "X-Trio-Sfu-Forwarded"
#: Headers that describe one hop of the connection, not the request (RFC 9110 §7.6.1).
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "host",
        "date",
        "server",
    }
)


@dataclass(slots=True)
class ForwardedRequest:
    method: str
    path: str
    query: bytes
    headers: list[tuple[str, str]]
    body: bytes
    client: str  # the original client's address, for the owner's access log
    origin: str = ""  # the node that forwarded it


@dataclass(slots=True)
class ForwardedResponse:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


class Forwarder(Protocol):
    """How a pod reaches the pod that holds a connection (``cluster/forward.py``)."""

    node_id: str

    async def owner_of(self, connection_id: str) -> str | None:
        """The node holding connection id ``connection_id``, or None if none does.
        Raises :class:`~trio_sfu.sfu.errors.Unavailable` when that cannot be known now."""
        ...

    async def other_live_node(self) -> str | None:
        """A live pod other than this one, or None (a draining pod's new sessions go there)."""
        ...

    async def forward(self, node: str, forwarded: ForwardedRequest) -> ForwardedResponse:
        """The owner's answer. Raises :class:`~trio_sfu.sfu.errors.NotFound` when ``node`` is
        not a live pod, :class:`~trio_sfu.sfu.errors.Unavailable` when it did not answer."""
        ...


def is_forwarded() -> bool:
    """The current request was forwarded here: answer it, whatever the answer is."""
    return FORWARDED_HEADER in request.headers


async def current_request(origin: str) -> ForwardedRequest:
    """The request being handled, as the owning pod needs it."""
    body = await request.get_data(cache=True, as_text=False, parse_form_data=False)
    headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP]
    return ForwardedRequest(
        method=request.method,
        path=request.path,
        query=request.query_string,
        headers=headers,
        body=body,
        client=request.remote_addr or "",
        origin=origin,
    )


async def forward_current(forwarder: Forwarder, node: str) -> Response:
    """Answer the current request with the owning pod's answer."""
    answer = await forwarder.forward(node, await current_request(forwarder.node_id))
    response = Response(answer.body, status=answer.status)
    for name in {k for k, _ in response.headers.items() if k.lower() != "content-length"}:
        del response.headers[name]  # the owner's headers only, as the owner sent them
    for name, value in answer.headers:
        response.headers.add(name, value)
    return response


async def forward_new_session(forwarder: Forwarder | None, draining: bool) -> Response | None:
    """A draining pod (issue 9, item 2) hands a new session's POST to a live pod, so a client
    that a load balancer still sends here is served rather than refused; None: answer here
    (not draining, already forwarded once, or no other live pod: then the 503 stands)."""
    if forwarder is None or not draining or is_forwarded():
        return None
    node = await forwarder.other_live_node()
    if node is None:
        return None
    try:
        return await forward_current(forwarder, node)
    except SfuError:
        return None  # that pod vanished meanwhile: our own 503 + Retry-After follows


ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


async def replay(app: ASGIApp, forwarded: ForwardedRequest) -> ForwardedResponse:
    """Run a forwarded request through this pod's own ASGI application (the owner's side).

    One ASGI exchange with a client that sent its whole body and waits for the whole answer;
    ``receive`` reports the disconnect only once the answer is complete, as a real client that
    stays would.
    """
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in forwarded.headers]
    headers.append((FORWARDED_HEADER.lower().encode(), forwarded.origin.encode("latin-1")))
    headers.append((b"content-length", str(len(forwarded.body)).encode()))
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": forwarded.method,
        "scheme": "http",
        "path": forwarded.path,
        "raw_path": forwarded.path.encode("utf-8"),
        "query_string": forwarded.query,
        "root_path": "",
        "headers": headers,
        "client": (forwarded.client, 0) if forwarded.client else None,
        "server": None,
        "extensions": {},
    }
    answer = ForwardedResponse(500)
    done = trio.Event()
    sent_body = False
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": forwarded.body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer.status = int(message["status"])
            answer.headers = [
                (k.decode("latin-1"), v.decode("latin-1"))
                for k, v in message.get("headers", [])
                if k.decode("latin-1").lower() not in _HOP_BY_HOP
            ]
        elif message["type"] == "http.response.body":
            chunks.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                done.set()

    try:
        await app(scope, receive, send)
    finally:
        done.set()
    answer.body = b"".join(chunks)
    return answer
