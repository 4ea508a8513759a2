"""Counters the metrics endpoint reads from an association, gathered from its parts.

The association's own counters are plain int attributes; these come from the sender and the
heartbeat, which exist only once the association is up, hence the properties.
"""

from __future__ import annotations

from .heartbeat import Heartbeat
from .sender import Sender


class Counters:
    __slots__ = ()  # SctpAssociation is slotted (issue 10)

    _sender: Sender | None
    _hb: Heartbeat

    @property
    def heartbeats_sent(self) -> int:
        return self._hb.sent

    @property
    def heartbeat_acks_received(self) -> int:
        return self._hb.acks

    @property
    def retransmissions(self) -> int:
        return self._sender.retransmissions if self._sender else 0

    @property
    def fast_retransmits(self) -> int:
        return self._sender.fast_retransmits if self._sender else 0

    @property
    def t3_expirations(self) -> int:
        return self._sender.t3_expirations if self._sender else 0

    @property
    def messages_abandoned(self) -> int:
        return self._sender.messages_abandoned if self._sender else 0
