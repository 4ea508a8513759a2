"""What the HTTP API accepts before anything reaches the SFU: names, content type, body size.

Everything here turns client input into a 4xx with a message saying what is wrong; none of it
can raise anything else, which is how "no 500 for anything a client can send" holds at the edge.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from typing import Any

import trio
from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendCallable,
    ASGISendEvent,
    HTTPScope,
    Scope,
)
from quart import Request
from werkzeug.exceptions import UnsupportedMediaType

from trio_sfu.http.cors import allowed_origin
from trio_sfu.sfu.errors import BadRequest, SfuError, TooMany, Unavailable
from trio_sfu.sfu.limits import TokenBucket

# The seed's ids: ASCII letters, digits, `_`, `.` and `-`, short enough to log and key on.
NAME_PATTERN = "[A-Za-z0-9_.-]{1,64}"
_NAME = re.compile(NAME_PATTERN + r"\Z")

# An SDP offer with a few dozen m-sections is ~10-20 KiB; 64 KiB leaves room and caps memory.
MAX_BODY = 64 * 1024

SDP_TYPE = "application/sdp"


def check_name(what: str, value: str) -> str:
    if not _NAME.match(value):
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise BadRequest(f"{what} {shown!r} does not match {NAME_PATTERN}")
    return value


def check_sdp_content_type(request: Request) -> None:
    # RFC 8866 §5: SDP travels as application/sdp; parameters such as charset are tolerated.
    if request.mimetype != SDP_TYPE:
        got = request.headers.get("Content-Type")
        raise UnsupportedMediaType(
            f"Content-Type must be {SDP_TYPE}, got {got!r}"
            if got
            else f"Content-Type {SDP_TYPE} is required"
        )


async def read_sdp(request: Request) -> str:
    """The request body as SDP text, never buffering more than about ``MAX_BODY`` bytes.

    Quart enforces ``MAX_CONTENT_LENGTH`` (set to ``MAX_BODY`` by the app factory) both on a
    declared Content-Length, before reading anything, and while a chunked body streams in,
    dropping the rest: either way it raises RequestEntityTooLarge (413).
    """
    check_sdp_content_type(request)
    data = await request.get_data(cache=False, as_text=False, parse_form_data=False)
    if not data.strip():
        raise BadRequest("empty body: an SDP offer is required")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        # RFC 8866 §5: SDP text is UTF-8 (ISO 10646).
        raise BadRequest(f"SDP is not UTF-8 (byte {error.start})") from None


# A client that sends its whole body before reading (httpx, curl, most libraries) would never
# see an early 413: once a response is complete with the request body unfinished, the server
# closes, and the kernel answers the rest of the upload with a reset that discards our response.
# So the response waits until the client has finished its body — read and dropped by Quart past
# MAX_BODY — within bounds (the "lingering close" idea of RFC 9112 §9.6). Past them we answer
# and Hypercorn closes the connection. That close runs inside our final send, which Quart-Trio
# cancels as soon as the disconnect the close itself causes arrives (Hypercorn 0.18), leaving
# the socket open and the client uploading forever; so that one send is shielded.
DRAIN_LIMIT = 1024 * 1024
DRAIN_TIME = 5.0


class DrainUnreadBody:
    """ASGI middleware: hold the response start until the request body has been received."""

    def __init__(self, app: ASGIFramework) -> None:
        self.app = app

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_received = False  # the client finished its body (or left)
        stop_waiting = trio.Event()
        received = 0

        async def watched_receive() -> ASGIReceiveEvent:
            nonlocal received, body_received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if not message.get("more_body", False):
                    body_received = True
            else:  # http.disconnect: nothing more will come
                body_received = True
            if body_received or received > DRAIN_LIMIT:
                stop_waiting.set()
            return message

        async def gated_send(message: ASGISendEvent) -> None:
            if message["type"] == "http.response.start" and not stop_waiting.is_set():
                with trio.move_on_after(DRAIN_TIME):
                    await stop_waiting.wait()
            final = message["type"] == "http.response.body" and not message.get("more_body")
            with trio.CancelScope(shield=final and not body_received):
                await send(message)

        await self.app(scope, watched_receive, gated_send)


# -- admission: joins per second (issue 14 item 4) -------------------------------------------

#: The join routes: a POST to any of them creates a session.
JOIN_ROUTES = ("pub", "sub", "whip", "whep")
#: Buckets kept for this many addresses at most; idle (full) ones are forgotten first.
MAX_TRACKED_SOURCES = 10_000


class JoinRateLimits:
    """Joins per second from one client address and in total, each a token bucket allowing
    bursts of twice its rate. A refusal costs little more than the check: it happens before
    the request is routed, its token verified or a peer made, so a flood cannot starve the
    node."""

    def __init__(self, *, per_source: float = 10.0, total: float = 200.0) -> None:
        self.per_source = per_source
        self.total = total
        self._total = TokenBucket(total, 2 * total, trio.current_time())
        self._sources: dict[str, TokenBucket] = {}

    def check(self, source: str) -> None:
        """Take a token for a join from ``source``, else raise (429 one address, 503 all)."""
        now = trio.current_time()
        bucket = self._sources.get(source)
        if bucket is None:
            if len(self._sources) >= MAX_TRACKED_SOURCES:
                self._forget_idle(now)
            bucket = self._sources[source] = TokenBucket(
                self.per_source, 2 * self.per_source, now
            )
        wait = bucket.take(now)
        if wait:
            raise TooMany(
                f"too many joins from {source} (at most {self.per_source:g} per second)",
                retry_after=max(1, math.ceil(wait)),
            )
        wait = self._total.take(now)
        if wait:
            bucket.tokens += 1  # not this address's fault
            raise Unavailable(
                f"this node is admitting {self.total:g} joins per second; try again",
                retry_after=max(1, math.ceil(wait)),
            )

    def _forget_idle(self, now: float) -> None:
        for source, bucket in list(self._sources.items()):
            if bucket.refill(now) >= bucket.burst:
                del self._sources[source]
        while len(self._sources) >= MAX_TRACKED_SOURCES:  # all busy: forget the oldest
            del self._sources[next(iter(self._sources))]


def is_join(method: str, path: str) -> bool:
    return method == "POST" and path.lstrip("/").split("/", 1)[0] in JOIN_ROUTES


async def _discard_body(receive: ASGIReceiveCallable) -> None:
    """Read what the client sends of its body, within bounds, before we answer (see
    DrainUnreadBody for why an early answer would be lost)."""
    received = 0
    with trio.move_on_after(DRAIN_TIME):
        while received <= DRAIN_LIMIT:
            message = await receive()
            if message["type"] != "http.request":
                return
            received += len(message.get("body", b""))
            if not message.get("more_body", False):
                return


#: Joins of one client address handled at once; the rest wait their turn, in order. Trio runs
#: every ready task in turn, so without this a legitimate join shared the loop with a whole
#: burst from another address (measured: 0.5-0.7 s behind 1,000 joins on an idle machine,
#: 1.9 s on a busy one); with it, with at most this many of the burst.
JOIN_TURNS_PER_ADDRESS = 32


class _Turns:
    """One address's turns: a FIFO semaphore and how many requests hold or wait for it (the
    entry goes when none do, so idle addresses cost nothing)."""

    __slots__ = ("semaphore", "users")

    def __init__(self, turns: int) -> None:
        self.semaphore = trio.Semaphore(turns)
        self.users = 0


class AdmitJoins:
    """ASGI middleware: joins past :class:`JoinRateLimits` are answered here, before the
    framework routes, parses or logs anything, so refusing a flood costs the least we can.
    Joins of one address take turns (:data:`JOIN_TURNS_PER_ADDRESS` at once), so a burst from
    one address waits on itself and a join from another is served at once. Refusals are
    counted in :attr:`refused`, not logged one by one."""

    def __init__(
        self, app: ASGIFramework, limits: JoinRateLimits, *, cors_origins: Collection[str] = ()
    ) -> None:
        self.app = app
        self.limits = limits
        self.cors_origins = frozenset(cors_origins)
        self.refused = 0
        self.turns_per_address = JOIN_TURNS_PER_ADDRESS
        self._turns: dict[str, _Turns] = {}

    @property
    def addresses_waiting(self) -> int:
        """Addresses with a join in hand or waiting (tests check none are left behind)."""
        return len(self._turns)

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "http" or not is_join(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        address = client[0] if client else "?"
        turns = self._turns.get(address)
        if turns is None:
            turns = self._turns[address] = _Turns(self.turns_per_address)
        turns.users += 1
        try:
            async with turns.semaphore:
                await self._join(address, scope, receive, send)
        finally:
            turns.users -= 1
            if not turns.users:
                del self._turns[address]

    async def _join(
        self,
        address: str,
        scope: HTTPScope,
        receive: ASGIReceiveCallable,
        send: ASGISendCallable,
    ) -> None:
        try:
            self.limits.check(address)
        except SfuError as refusal:
            self.refused += 1
            await _discard_body(receive)
            body = (refusal.message + "\n").encode("ascii", "backslashreplace")
            headers = [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(refusal.retry_after or 1).encode()),
            ]
            if self.cors_origins:  # a browser on another origin may read the refusal
                origin = next(
                    (v.decode("latin-1") for k, v in scope["headers"] if k == b"origin"),
                    None,
                )
                allow = allowed_origin(self.cors_origins, origin)
                if allow is not None:
                    headers.append((b"access-control-allow-origin", allow.encode("latin-1")))
                if "*" not in self.cors_origins:
                    headers.append((b"vary", b"Origin"))
            await send(
                {
                    "type": "http.response.start",
                    "status": refusal.status,
                    "headers": headers,
                    "trailers": False,
                }
            )
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        await self.app(scope, receive, send)


# -- HTTP/2 without TLS ----------------------------------------------------------------------


def refuse_cleartext_http2() -> None:
    """Make Hypercorn answer h2c upgrades and HTTP/2 prior-knowledge prefaces on a cleartext
    connection as HTTP/1.1 (RFC 9110 §7.8: a server may ignore Upgrade), for servers whose
    Hypercorn config sets ``trio_sfu_h2c = False``. Hypercorn (0.18) has no setting for it;
    cleartext HTTP/2 is where the rapid-reset flood costs an attacker least (no TLS)."""
    from hypercorn.protocol.h11 import H11Protocol

    if getattr(H11Protocol, "_trio_sfu_patched", False):
        return
    original = H11Protocol._check_protocol

    async def check_protocol(self: H11Protocol, event: Any) -> None:
        if getattr(self.config, "trio_sfu_h2c", True):
            await original(self, event)

    H11Protocol._check_protocol = check_protocol  # type: ignore[method-assign]
    H11Protocol._trio_sfu_patched = True  # type: ignore[attr-defined]
