"""What the HTTP API accepts before anything reaches the SFU: names, content type, body size.

Everything here turns client input into a 4xx with a message saying what is wrong; none of it
can raise anything else, which is how "no 500 for anything a client can send" holds at the edge.
"""

from __future__ import annotations

import re

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
            f"Content-Type must be {SDP_TYPE}, got {got!r}" if got else
            f"Content-Type {SDP_TYPE} is required"
        )


async def read_sdp(request: Request) -> str:
    """The request body as SDP text, read at most ``MAX_BODY`` bytes far.

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
