"""Where a server peer's datagrams go: the one interface the UDP and TCP transports share.

A peer sends "to a path" and never asks which transport it is: the shared UDP socket plus a
remote address (:class:`trio_sfu.rtc.udp_path.UdpPath`) or one ICE-TCP connection carrying RFC 4571
frames (:class:`trio_sfu.rtc.tcp.TcpConnection`). A path is handed to the peer only after a
valid STUN check arrived over it (RFC 8445 §7.3), and ``send`` never blocks: a full buffer
drops and counts (DESIGN.md, hot path).
"""

from __future__ import annotations

from typing import Protocol

Address = tuple[str, int]


class Path(Protocol):
    @property
    def address(self) -> Address:
        """The remote transport address (for logs, consent and XOR-MAPPED-ADDRESS)."""
        ...

    @property
    def transport(self) -> str:
        """``"udp"`` or ``"tcp"``, as in an ICE candidate."""
        ...

    @property
    def usable(self) -> bool:
        """False once the path can carry nothing more (a closed TCP connection)."""
        ...

    def send(self, data: bytes | memoryview) -> None:
        """Send one datagram now, or drop and count it; never blocks, never raises."""
        ...
