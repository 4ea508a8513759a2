"""A remote address on the shared UDP socket: where a connected peer's datagrams go.

A module of its own, without Trio, so that it compiles with the per-packet modules
(``trio_sfu/compiled.py``): :meth:`UdpPath.send` is the last step of every forwarded packet,
and interpreted it was the one frame left between the down-track and the socket (3.7 % of a
compiled pod's CPU at 100 subscribers, docs/benchmarks.md). A path is made once per valid
STUN check (RFC 8445 §7.3, :mod:`trio_sfu.rtc.udp`), not per packet.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Protocol

from trio_sfu.rtc.counters import EndpointStats
from trio_sfu.rtc.path import Address

__all__ = ["PathEndpoint", "UdpPath"]


class PathEndpoint(Protocol):
    """What a path needs of its endpoint: :class:`trio_sfu.rtc.udp.UdpEndpoint`, which makes
    the paths and so imports this module (a protocol here, not that class: no cycle)."""

    _pktinfo: bool  # bound to a wildcard address: each send chooses its source
    _sock: socket.socket
    stats: EndpointStats

    def sendto(self, data: bytes | memoryview, addr: Address) -> None: ...

    def _send_failed(self, exc: OSError, addr: Address) -> None: ...


class UdpPath:
    """``address`` on ``endpoint``'s socket (a :class:`trio_sfu.rtc.path.Path`). Two paths to
    the same address on the same endpoint are equal, so a repeated check is no path change.

    What :meth:`send` needs of the endpoint — whether it must choose a source address, its
    socket's ``sendto``, its counters — is taken once here: an endpoint's socket, bind and
    counters are set when it is made and never change."""

    __slots__ = ("_pktinfo", "_sendto", "_stats", "address", "endpoint", "transport", "usable")

    def __init__(self, endpoint: PathEndpoint, address: Address) -> None:
        self.endpoint = endpoint
        self.address = address
        self.transport = "udp"
        self.usable = True
        self._pktinfo: bool = endpoint._pktinfo
        self._sendto: Callable[[bytes | memoryview, Address], int] = endpoint._sock.sendto
        self._stats: EndpointStats = endpoint.stats

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, UdpPath)
            and other.endpoint is self.endpoint
            and other.address == self.address
        )

    def __hash__(self) -> int:
        return hash((id(self.endpoint), self.address))

    def __repr__(self) -> str:
        return f"UdpPath(address={self.address!r})"

    def send(self, data: bytes | memoryview) -> None:
        """:meth:`UdpEndpoint.sendto`, with its common case (a socket bound to one address:
        no source to choose) inlined: send now or drop and count, never block."""
        if self._pktinfo:
            self.endpoint.sendto(data, self.address)
            return
        try:
            self._sendto(data, self.address)
        except OSError as exc:
            self.endpoint._send_failed(exc, self.address)
            return
        stats = self._stats
        stats.datagrams_out += 1
        stats.bytes_out += len(data)
