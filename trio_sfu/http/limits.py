"""What the HTTP API accepts before anything reaches the SFU: names, content type, body size.

Everything here turns client input into a 4xx with a message saying what is wrong; none of it
can raise anything else, which is how "no 500 for anything a client can send" holds at the edge.
"""

from __future__ import annotations

import re

import trio
from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendCallable,
    ASGISendEvent,
    Scope,
)
from quart import Request
from werkzeug.exceptions import UnsupportedMediaType

from trio_sfu.sfu.errors import BadRequest

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
