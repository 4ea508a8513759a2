"""The media sockets' plain counters (read by ``/metrics`` and tests).

A module of their own, without Trio, so that they compile with the per-packet modules
(``trio_sfu/compiled.py``): every forwarded packet counts into :class:`EndpointStats` from
the compiled :meth:`trio_sfu.rtc.udp_path.UdpPath.send`, where a counter of an interpreted
class would be a generic attribute read and write. Nothing here is behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CheckStats", "EndpointStats", "TcpStats"]


@dataclass(slots=True)
class CheckStats:
    """The STUN-check counters both transports keep (see
    :func:`trio_sfu.rtc.udp.authenticate_check`)."""

    stun_malformed: int = 0
    stun_unknown_user: int = 0
    stun_rejected: int = 0  # parsed, known user, but integrity/fingerprint/role refused
    stun_ignored: int = 0  # responses/indications: a lite server sends no requests
    stun_address_taken: int = 0  # a check from an address bound to another, connected peer


@dataclass(slots=True)
class EndpointStats(CheckStats):
    """The UDP port's counters; never touched by anything but its reader (and the sends the
    reader's dispatch makes)."""

    datagrams_in: int = 0
    datagrams_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    send_dropped: int = 0  # socket buffer full: dropped rather than blocking the reader
    send_errors: int = 0
    unknown_address: int = 0  # DTLS/SRTP from an address no valid STUN check vouched for
    unknown_kind: int = 0  # first byte outside every RFC 7983 range
    overload_dropped: int = 0  # media the reader's queue dropped (MAX_QUEUE_AGE, MAX_PENDING)


@dataclass(slots=True)
class TcpStats(CheckStats):
    """The ICE-TCP port's counters (``trio_sfu.rtc.tcp``)."""

    accepted: int = 0
    bound: int = 0
    closed_unbound: int = 0  # closed before a valid check: invalid first frame, timeout, evicted
    bind_timeouts: int = 0
    parked: int = 0  # times a silent connection was kept for another bind_timeout (a backup)
    evicted: int = 0
    frames_in: int = 0
    bytes_in: int = 0
    frames_out: int = 0
    bytes_out: int = 0
    send_dropped: int = 0  # the connection's send buffer was full: frame dropped whole
    unknown_kind: int = 0
    wrong_peer: int = 0  # a bound connection carried a check for another peer
