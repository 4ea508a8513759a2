"""Per-peer counters: plain ints, bumped on the hot path, read by metrics and tests."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class PeerStats:
    rtp_in: int = 0
    rtp_out: int = 0
    rtcp_in: int = 0
    rtcp_out: int = 0
    srtp_rejected: int = 0  # failed authentication or replay check (RFC 3711 §3.3)
    srtcp_rejected: int = 0
    rtcp_malformed: int = 0
    rtp_unknown_ssrc: int = 0
    media_dropped: int = 0  # SRTP before keys, or too short to be RTP
    media_not_sent: int = 0
    dtls_dropped: int = 0
    sctp_malformed: int = 0
    dc_messages_in: int = 0
