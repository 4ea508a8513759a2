"""The stages around a forwarded track, in the spirit of pion's interceptors (DESIGN.md).

Each is a small sans-IO class — no Trio, no sockets, no clock reads; time comes in as
``now`` (monotonic seconds) and, for NTP fields, ``unix`` — that the forwarding path calls:

* :class:`PacketCache`: a publisher stream's recent packets, to answer subscribers' NACKs;
* :func:`rtx_wrap` / :func:`rtx_unwrap`: RFC 4588 retransmissions towards subscribers and
  from publishers;
* :class:`NackGenerator`: which of a publisher's packets to NACK, and when;
* :class:`KeyframeThrottle` / :class:`FirSequence`: PLI/FIR towards a publisher;
* :class:`KeyframeGate`: new subscribers start at a keyframe;
* :class:`ReceiveStatistics` / :class:`SendStatistics`: the RR of the publisher leg and the
  SR of the subscriber leg, with round-trip times (RTCP is terminated per leg).
"""

from __future__ import annotations

from trio_sfu.proto.receive_stats import ReceiveStatistics
from trio_sfu.sfu.feedback.cache import PacketCache
from trio_sfu.sfu.feedback.keyframe import FirSequence, KeyframeGate, KeyframeThrottle
from trio_sfu.sfu.feedback.nack import NackGenerator
from trio_sfu.sfu.feedback.rtx import rtx_unwrap, rtx_wrap
from trio_sfu.sfu.feedback.send_stats import SendStatistics

__all__ = [
    "FirSequence",
    "KeyframeGate",
    "KeyframeThrottle",
    "NackGenerator",
    "PacketCache",
    "ReceiveStatistics",
    "SendStatistics",
    "rtx_unwrap",
    "rtx_wrap",
]
