"""Forwarding groups: the rewrite shared by every subscriber of a track that sees it the same.

The SFU offers every subscriber's renegotiation, so the subscribers of one track mostly end up
with the same payload types and header-extension ids (all browsers of one kind, every bot).
For those, the per-packet rewrite — payload type, extension ids, sequence and timestamp
continuity — is the same, so it is done once per incoming packet per *group*; per subscriber
only what truly differs remains: its SSRC and its transport-wide sequence number (patched while
the packet is copied into the SRTP buffer), the SRTP protect and the send (issue 10).

A group is (source, negotiated mapping, numbering): a subscriber joins the first group of its
source with its mapping; one that needs numbering of its own (a WHEP viewer following a replaced
publisher, later a simulcast layer switch, issue 11) leaves with a copy of its group's rewriter
(:meth:`RtpRewriter.clone`), so its stream continues without a glitch, and forms a new group
that later joiners with the same mapping may share.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from trio_sfu.proto.rtp import RtpRewriter, payload_size
from trio_sfu.sfu.feedback import SendStatistics

if TYPE_CHECKING:
    from trio_sfu.sfu.track import DownTrack

#: (payload type map, extension id map, clock rate, transport-cc extension id or 0), each map
#: as sorted (input, output) pairs: what makes two subscribers' rewrites the same.
GroupKey = tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...], int, int]

_TS = struct.Struct("!I")


class ForwardingGroup:
    """Subscribers of one source that receive the same rewrite of each packet."""

    __slots__ = ("key", "last_forward", "members", "rewriter", "stats")

    def __init__(self, key: GroupKey, rewriter: RtpRewriter) -> None:
        self.key = key
        self.rewriter = rewriter
        self.members: list[DownTrack] = []
        #: what every member has been sent (counts and the RTP-timestamp mapping of its SRs)
        self.stats = SendStatistics(key[2])
        self.last_forward = 0.0

    def __repr__(self) -> str:
        return f"<ForwardingGroup {len(self.members)} members>"

    def forward(self, packet: bytes, now: float) -> None:
        """The hot path: one rewrite, then per member its own numbering, protect and send."""
        rewriter = self.rewriter
        out = rewriter.rewrite(packet)
        if out is None:
            return
        self.last_forward = now
        # RFC 3550 §6.4.1: the SR's octet count is payload only (no header, extension, padding).
        self.stats.update(_TS.unpack_from(out, 4)[0], payload_size(out), now)
        at = rewriter.twcc_offset
        for member in self.members:
            member.deliver(out, at, now)


class Fanout:
    """A source's forwarding groups; the source calls :meth:`forward` per packet."""

    __slots__ = ("groups",)

    def __init__(self) -> None:
        self.groups: list[ForwardingGroup] = []

    def __len__(self) -> int:
        return sum(len(g.members) for g in self.groups)

    def forward(self, packet: bytes, now: float) -> None:
        for group in self.groups:
            group.forward(packet, now)

    def add(self, downtrack: DownTrack, carry: ForwardingGroup | None = None) -> ForwardingGroup:
        """Put ``downtrack`` in the first group with its mapping, or a new one. With ``carry``
        (the group whose numbering it must continue) always in a new group that starts as a
        copy of that one's state, so its stream goes on without a glitch."""
        key = downtrack.group_key
        group = None
        if carry is None:
            group = next((g for g in self.groups if g.key == key), None)
        if group is None:
            if carry is None:
                group = ForwardingGroup(key, downtrack.new_rewriter())
            else:
                group = ForwardingGroup(key, carry.rewriter.clone())
                group.last_forward = carry.last_forward
                group.stats.follow(carry.stats, 0, 0)
            self.groups = [*self.groups, group]
        # Lists are replaced, never mutated, so a fan-out running over them is never disturbed.
        group.members = [*group.members, downtrack]
        downtrack.joined(group)
        return group

    def remove(self, downtrack: DownTrack) -> None:
        group = downtrack.group
        if group is None or group not in self.groups:
            return
        downtrack.left(group)
        group.members = [m for m in group.members if m is not downtrack]
        if not group.members:
            self.groups = [g for g in self.groups if g is not group]

    def split(self, downtrack: DownTrack) -> ForwardingGroup | None:
        """Give ``downtrack`` numbering of its own that continues its group's exactly: the step
        before its stream diverges from the others' (issue 11's layer switch). A member alone
        in its group keeps it."""
        group = downtrack.group
        if group is None or group not in self.groups:
            return None
        if len(group.members) == 1:
            return group
        self.remove(downtrack)
        return self.add(downtrack, carry=group)
