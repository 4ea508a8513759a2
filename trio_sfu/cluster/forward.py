"""Forwarding requests about one connection to the pod that holds it (issue 9, item 1).

The HTTP side (:mod:`trio_sfu.http.forwarding`) decides *what* to forward; this module carries
it: the owner of a connection id is read from Redis (``P:id:ID``, written by the claim), the
request travels as one NATS request to the owner's ``P.http.<node>`` subject, and the owner
replays it into its own application and replies with the answer.

Why NATS request/reply rather than a redirect or a pod-to-pod HTTP call: every pod already
holds a NATS connection, pods need not reach each other's HTTP ports, and NATS answers "no
responders" at once for a node that is not running — so a request for a session whose pod died
is a quick ``404``, never a hang. One round trip adds about a millisecond on loopback
(``tests/test_cluster.py::test_session_requests_work_on_any_pod`` prints the figure).

Wire format (msgpack, version first, appended fields only within a version, like ``codec.py``):
request ``[1, method, path, query, [[name, value], ...], body, client, origin]``, answer
``[1, status, [[name, value], ...], body]``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import msgpack
import trio

from trio_sfu.http.forwarding import ASGIApp, ForwardedRequest, ForwardedResponse, replay
from trio_sfu.sfu.errors import BackendUnavailable, NodeUnreachable, NotFound, Unavailable

log = logging.getLogger(__name__)

VERSION = 1
#: How long a forwarded request may take on the owner: above ``Sfu.stop``'s 5 s wait for a
#: connection's cleanup, so a slow DELETE answers the owner's 200 rather than our timeout.
FORWARD_TIMEOUT = 6.0
#: Forwarded requests waiting for this pod to answer them; beyond this they are dropped (the
#: forwarding pod answers 503 after its timeout) rather than queued without bound.
BACKLOG = 256
RETRY_AFTER = 2


def encode_request(forwarded: ForwardedRequest) -> bytes:
    return msgpack.packb(  # type: ignore[no-any-return]
        [
            VERSION,
            forwarded.method,
            forwarded.path,
            forwarded.query,
            [[k, v] for k, v in forwarded.headers],
            forwarded.body,
            forwarded.client,
            forwarded.origin,
        ]
    )


def decode_request(data: bytes) -> ForwardedRequest:
    fields: Any = msgpack.unpackb(data)
    if not isinstance(fields, list) or len(fields) < 8 or fields[0] != VERSION:
        raise ValueError("not a version-1 forwarded request")
    _, method, path, query, headers, body, client, origin = fields[:8]
    return ForwardedRequest(
        str(method), str(path), bytes(query), [(str(k), str(v)) for k, v in headers],
        bytes(body), str(client), str(origin),
    )


def encode_response(answer: ForwardedResponse) -> bytes:
    return msgpack.packb(  # type: ignore[no-any-return]
        [VERSION, answer.status, [[k, v] for k, v in answer.headers], answer.body]
    )


def decode_response(data: bytes) -> ForwardedResponse:
    fields: Any = msgpack.unpackb(data)
    if not isinstance(fields, list) or len(fields) < 4 or fields[0] != VERSION:
        raise ValueError("not a version-1 forwarded answer")
    return ForwardedResponse(
        int(fields[1]), [(str(k), str(v)) for k, v in fields[2]], bytes(fields[3])
    )


class RequestLink(Protocol):
    """What forwarding needs of NATS (``NatsBus`` provides it)."""

    async def request_node(self, node_id: str, data: bytes, timeout: float) -> bytes: ...

    def serve_node_requests(
        self, on_request: Callable[[bytes, str], None]
    ) -> AbstractAsyncContextManager[None]: ...

    async def publish_raw(self, subject: str, data: bytes) -> None: ...


class Owners(Protocol):
    """What forwarding needs of Redis (``RedisStateStore`` provides it)."""

    async def owner_of(self, connection_id: str) -> str | None: ...

    async def live_nodes(self) -> list[str]: ...


class ClusterForwarder:
    """The :class:`~trio_sfu.http.forwarding.Forwarder` of cluster mode."""

    def __init__(
        self, bus: RequestLink, state: Owners, node_id: str, *, timeout: float = FORWARD_TIMEOUT
    ) -> None:
        self.bus = bus
        self.state = state
        self.node_id = node_id
        self.timeout = timeout
        self.forwarded = 0  # requests sent to other pods
        self.answered = 0  # requests other pods sent here

    async def owner_of(self, connection_id: str) -> str | None:
        try:
            return await self.state.owner_of(connection_id)
        except BackendUnavailable as exc:
            raise Unavailable(
                f"cannot find the pod holding {connection_id} now: {exc}", retry_after=RETRY_AFTER
            ) from exc

    async def other_live_node(self) -> str | None:
        """A live pod other than this one (at random), or None: where a draining pod sends a
        new session (issue 9, item 2)."""
        try:
            nodes = [n for n in await self.state.live_nodes() if n != self.node_id]
        except BackendUnavailable:
            return None
        return random.choice(nodes) if nodes else None

    async def forward(self, node: str, forwarded: ForwardedRequest) -> ForwardedResponse:
        try:
            data = await self.bus.request_node(node, encode_request(forwarded), self.timeout)
        except NodeUnreachable:
            raise NotFound(
                f"the session is not on a live pod (pod {node} is gone)"
            ) from None
        except BackendUnavailable as exc:
            raise Unavailable(
                f"cannot reach pod {node}, which holds the session: {exc}",
                retry_after=RETRY_AFTER,
            ) from exc
        self.forwarded += 1
        try:
            return decode_response(data)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise Unavailable(
                f"pod {node} answered in a format this pod does not read ({exc})",
                retry_after=RETRY_AFTER,
            ) from exc

    async def serve(
        self, app: ASGIApp, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Answer requests other pods forward here, each through ``app``, until cancelled."""
        send, receive = trio.open_memory_channel[tuple[bytes, str]](BACKLOG)

        def on_request(data: bytes, reply: str) -> None:  # asyncio side: a hand-off only
            try:
                send.send_nowait((data, reply))
            except (trio.WouldBlock, trio.ClosedResourceError):
                pass  # overloaded or stopping: the forwarding pod answers 503 after its timeout

        async with trio.open_nursery() as nursery, self.bus.serve_node_requests(on_request):
            task_status.started()
            async for data, reply in receive:
                nursery.start_soon(self._answer, app, data, reply)

    async def _answer(self, app: ASGIApp, data: bytes, reply: str) -> None:
        try:
            forwarded = decode_request(data)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            log.warning("undecodable forwarded request", extra={"node": self.node_id,
                                                                "error": str(exc)})
            answer = ForwardedResponse(
                502, [("Content-Type", "text/plain")], b"502 forwarded request unreadable\n"
            )
        else:
            answer = await replay(app, forwarded)
        self.answered += 1
        try:
            await self.bus.publish_raw(reply, encode_response(answer))
        except BackendUnavailable:
            pass  # the forwarding pod times out and answers 503
