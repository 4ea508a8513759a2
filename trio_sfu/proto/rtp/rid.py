"""RtpStreamId / RepairedRtpStreamId header extension values (RFC 8852 §3.1-3.2).

``urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id`` and ``…:repaired-rtp-stream-id`` carry the
RID of a simulcast stream (or of the stream an RTX packet repairs) as the SDES item's text:
the rid-id of RFC 8851 §10 (letters, digits, ``-``, ``_``; at most 255 bytes per RFC 8852
§3.3). The SFU maps an unannounced SSRC to its simulcast layer by this value.
"""

from __future__ import annotations

import re

__all__ = ["rid_value"]

_RID = re.compile(rb"[A-Za-z0-9_-]{1,255}")


def rid_value(value: bytes | None) -> str | None:
    """The RID carried by an extension value, or None if absent or not a valid rid-id.

    Trailing NUL bytes (RFC 8285 §4.3 padding inside a two-byte element, which some senders
    leave) are ignored; anything else invalid gives None, never an exception.
    """
    if not value:
        return None
    value = value.rstrip(b"\x00")
    if _RID.fullmatch(value) is None:
        return None
    return value.decode("ascii")
