"""JSEP (RFC 8829) negotiation core, sans-IO: the offer/answer state of one peer connection.

The SFU is the answerer for a browser's first offer (publishers and subscribers alike) and the
offerer afterwards, when it adds a sendonly m-section per remote track for a subscriber and
stops it again when the publisher leaves. Everything is max-bundle (one ICE/DTLS transport) and
rtcp-mux. A stopped section is recycled by the next added transceiver (RFC 8829 §5.2.2), so a
subscriber that watches publishers come and go keeps an SDP of bounded size.

Remote descriptions are validated completely before anything changes: an unacceptable one
raises :class:`SdpError` and leaves the session as it was. Calling methods in the wrong
signaling state is our own bug, not the peer's, and raises :class:`JsepStateError`.
"""

from __future__ import annotations

from .session import JsepSession
from .types import (
    DtlsRole,
    JsepStateError,
    LocalTransport,
    MediaKind,
    RemoteChanges,
    SignalingState,
    Transceiver,
)

__all__ = [
    "DtlsRole",
    "JsepSession",
    "JsepStateError",
    "LocalTransport",
    "MediaKind",
    "RemoteChanges",
    "SignalingState",
    "Transceiver",
]
