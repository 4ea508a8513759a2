"""The sans-IO peer core (issue 16): one WebRTC peer connection without Trio, sockets or clocks.

See :mod:`trio_sfu.proto.peer.core`; ``trio_sfu.rtc.peer`` is its Trio driver.
"""

from trio_sfu.proto.peer.core import (
    DTLS_MTU,
    DTLS_RECORD_OVERHEAD,
    MAX_STREAMS,
    Closed,
    Connected,
    CoreEvent,
    IceHooks,
    IncomingStream,
    LocalCredentialsChanged,
    PeerCore,
    PeerStats,
)

__all__ = [
    "DTLS_MTU",
    "DTLS_RECORD_OVERHEAD",
    "MAX_STREAMS",
    "Closed",
    "Connected",
    "CoreEvent",
    "IceHooks",
    "IncomingStream",
    "LocalCredentialsChanged",
    "PeerCore",
    "PeerStats",
]
