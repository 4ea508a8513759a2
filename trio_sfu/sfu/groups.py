"""Forwarding groups: the rewrite shared by every subscriber of a track that sees it the same.

The SFU offers every subscriber's renegotiation, so the subscribers of one track mostly end up
with the same payload types and header-extension ids (all browsers of one kind, every bot).
For those, the per-packet rewrite — payload type, extension ids, sequence and timestamp
continuity — is the same, so it is done once per incoming packet per *group*; per subscriber
only what truly differs remains: its SSRC and its transport-wide sequence number (patched while
the packet is copied into the SRTP buffer), the SRTP protect and the send (issue 10).

A group is (source, negotiated mapping, numbering): a subscriber joins the first group of its
source with its mapping; one that needs numbering of its own (a WHEP viewer following a replaced
publisher, a simulcast layer switch, issue 11) leaves with a copy of its group's rewriter
(:meth:`RtpRewriter.clone`), so its stream continues without a glitch, and forms a new group
that later joiners with the same mapping may share.

For a VP9 SVC source (one stream carrying spatial and temporal layers, RFC 9628) a group
that forwards everything has no selector; a subscriber given a layer limit gets a group of its
own whose selector drops the spatial layers above it at frame boundaries
(:meth:`ForwardingGroup.forward_svc`). Its numbering closes over the dropped packets, so such
a group keeps its own packet cache for NACKs, and sets the RTP marker on the last packet of the
highest forwarded spatial layer (RFC 9628 §4.1: the marker ends a picture; a receiver waits for
it).

For a simulcast source a group is also a layer choice: it owns a :class:`LayerSelector` that
sees every stream's packets and forwards one stream, switching at a keyframe of the target
(RFC 8853; docs/layers.md); the rewriter continues the numbering across the switch
(:meth:`RtpRewriter.switch_source`) and, for VP8, a :class:`PictureIdRewriter` the picture
ids. New subscribers join only a group that forwards the default (top) stream, since they are
released at its keyframes; a subscriber that switches layer gets a group of its own.
"""

from __future__ import annotations

import struct
from functools import partial
from typing import Final, Protocol

from trio_sfu.proto.codecs.vp8 import PictureIdRewriter
from trio_sfu.proto.codecs.vp9 import (
    SVC_END,
    SVC_KEYFRAME,
    SVC_START,
    SVC_SWITCH_TO_SHIFT,
    SVC_SWITCH_UP,
)
from trio_sfu.proto.layers import NO_LIMIT, LayerSelector
from trio_sfu.proto.rtp import RtpRewriter, payload_offset, payload_size
from trio_sfu.rtc.budget import BUDGET, FANOUT_CHUNK
from trio_sfu.sfu.feedback import PacketCache, SendStatistics

#: (payload type map, extension id map, clock rate, transport-cc extension id or 0), each map
#: as sorted (input, output) pairs: what makes two subscribers' rewrites the same.
GroupKey = tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...], int, int]

_TS: Final = struct.Struct("!I")
_SEQ_TS: Final = struct.Struct("!HI")


class GroupMember(Protocol):
    """What a group needs of its members (``track.DownTrack``): named here, so groups.py does
    not import the module that builds on it (issue 16: no import cycle)."""

    group_key: GroupKey
    layer: int | None

    @property
    def group(self) -> ForwardingGroup | None: ...
    def deliver(self, out: bytes, twcc_offset: int, now: float) -> None: ...
    def new_rewriter(self) -> RtpRewriter: ...
    def joined(self, group: ForwardingGroup) -> None: ...
    def left(self, group: ForwardingGroup) -> None: ...


class ForwardingGroup:
    """Subscribers of one source that receive the same rewrite of each packet."""

    __slots__ = (
        "cache",
        "key",
        "last_forward",
        "members",
        "pictures",
        "rewriter",
        "selector",
        "stats",
    )

    def __init__(
        self,
        key: GroupKey,
        rewriter: RtpRewriter,
        selector: LayerSelector | None = None,
        pictures: PictureIdRewriter | None = None,
    ) -> None:
        self.key = key
        self.rewriter = rewriter
        #: a simulcast source's layer choice (None: one stream, everything is forwarded)
        self.selector = selector
        #: VP8 picture-id continuity across stream switches (simulcast VP8 only)
        self.pictures = pictures
        self.members: list[GroupMember] = []
        #: what every member has been sent (counts and the RTP-timestamp mapping of its SRs)
        self.stats = SendStatistics(key[2])
        self.last_forward = 0.0
        #: an SVC group's packets as numbered for its rewriter (NACKs are answered from it:
        #: its numbering is not the source's); None: the source's caches serve
        self.cache: PacketCache | None = None

    def __repr__(self) -> str:
        return f"<ForwardingGroup {len(self.members)} members>"

    @property
    def target(self) -> int | None:
        """The simulcast stream this group wants (None: not a simulcast group)."""
        return self.selector.target_stream if self.selector is not None else None

    def copy(self) -> ForwardingGroup:
        """A group that continues this one's numbering exactly (no members): the start of a
        subscriber's own numbering when it leaves (a split, a pause, a switch)."""
        twin = ForwardingGroup(
            self.key,
            self.rewriter.clone(),
            self.selector.clone() if self.selector is not None else None,
            self.pictures.clone() if self.pictures is not None else None,
        )
        twin.last_forward = self.last_forward
        twin.stats.follow(self.stats, 0, 0)
        if self.cache is not None:
            # the numbering diverges from here: a cache of its own (older NACKs miss)
            twin.cache = PacketCache()
        return twin

    def forward_layer(
        self,
        packet: bytes,
        stream: int,
        ssrc: int,
        seq: int,
        ts: int,
        keyframe: bool,
        frame_start: bool,
        now: float,
    ) -> None:
        """A packet of any stream of a simulcast source: the selector decides (a switch only
        at the first packet of the target's keyframe), then :meth:`forward`."""
        sel = self.selector
        assert sel is not None
        current = sel.current
        if not sel.push(stream, 0, 0, seq, ts, keyframe, frame_start, False, now):
            return
        if sel.current != current:
            # The numbering goes on from the new stream: seq last + 1, timestamps moved on by
            # the time since the last packet (RtpRewriter.switch_source).
            self.rewriter.switch_source(now - self.last_forward if self.last_forward else 0.0, ssrc)
            if self.pictures is not None:
                self.pictures.switch()
        pictures = self.pictures
        if pictures is not None:
            packet = pictures.rewrite(packet, payload_offset(packet))
        self.forward(packet, now)

    def forward_svc(
        self, packet: bytes, sid: int, tid: int, seq: int, ts: int, flags: int, now: float
    ) -> None:
        """A packet of a VP9 SVC source (``flags``: ``vp9.layer_info``'s) for a group with a
        layer limit: the selector drops the layers above it at frame boundaries and closes
        the numbering over them; the last packet of the highest forwarded spatial layer gets
        the marker bit (RFC 9628 §4.1), which the dropped layer above it carried."""
        sel = self.selector
        assert sel is not None
        pictures = self.pictures
        if not sel.push(
            0,
            sid,
            tid,
            seq,
            ts,
            bool(flags & SVC_KEYFRAME),
            bool(flags & SVC_START),
            bool(flags & SVC_SWITCH_UP),
            now,
            (flags >> SVC_SWITCH_TO_SHIFT) - 1,
        ):
            if pictures is not None and flags & SVC_START and tid > sel.temporal:
                pictures.skip_frame()  # a VP8 frame of a dropped temporal layer
            return
        if pictures is not None:
            packet = pictures.rewrite(packet, payload_offset(packet))
        out_seq, out_ts = sel.numbering(seq, ts)
        marker = flags & SVC_END and sid == sel.spatial and not packet[1] & 0x80
        if marker or out_seq != seq or out_ts != ts:
            buf = bytearray(packet)
            if marker:
                buf[1] |= 0x80
            _SEQ_TS.pack_into(buf, 2, out_seq, out_ts)
            packet = bytes(buf)
        cache = self.cache
        if cache is not None:
            cache.put(packet)
        self.forward(packet, now)

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
        members = self.members
        if len(members) <= FANOUT_CHUNK:
            for member in members:
                member.deliver(out, at, now)
        else:
            self._deliver(members, 0, out, at, False, now)

    def _deliver(
        self,
        members: list[GroupMember],
        start: int,
        out: bytes,
        at: int,
        resumed: bool,
        now: float,
    ) -> None:
        """Deliver ``out`` to ``members[start:]``, a chunk at a time; past the reader's
        deadline the rest is left to its next pass (rtc/budget.py). ``members`` is the list
        of when the packet came (lists are replaced, never mutated): a resumed delivery skips
        whoever left this group since — a leaver, or a member moved to another group, whose
        numbering may differ from this one's: it misses this packet, and its NACK gets it
        from its new group's numbering, rather than a packet numbered for others."""
        budget = BUDGET
        n = len(members)
        i = start
        while True:
            end = i + FANOUT_CHUNK
            for member in members[i:end]:
                if resumed and member.group is not self:
                    continue
                member.deliver(out, at, now)
            if end >= n:
                return
            if budget.clock() >= budget.deadline:
                budget.leftover.append(partial(self._deliver, members, end, out, at, True))
                return
            i = end


class Fanout:
    """A source's forwarding groups; the source calls :meth:`forward` per packet."""

    __slots__ = (
        "clock_rate",
        "default",
        "groups",
        "layers",
        "svc_layers",
        "svc_seq",
        "svc_temporal",
        "svc_ts",
        "vp8",
    )

    def __init__(self, layers: int = 0, *, clock_rate: int = 90000, vp8: bool = False) -> None:
        self.groups: list[ForwardingGroup] = []
        #: simulcast streams of the source (0: not simulcast); index ``layers - 1`` is the
        #: top, the default for new subscribers
        self.layers = layers
        #: the stream new subscribers start on and subscribers without a choice of their own
        #: get: the top, or the highest one the publisher actually sends
        #: (``PublishedTrack.review_streams``)
        self.default = layers - 1
        self.clock_rate = clock_rate
        self.vp8 = vp8
        #: spatial layers of a VP9 SVC source (its scalability structure; 0: not SVC), and
        #: the newest input sequence number and timestamp of its stream
        self.svc_layers = 0
        #: temporal layers seen in it (L1T3: 3): the choice when it has one spatial layer
        self.svc_temporal = 0
        self.svc_seq = -1  # none yet
        self.svc_ts = 0

    @property
    def top(self) -> int:
        return self.layers - 1

    @property
    def svc_choices(self) -> int:
        """An SVC stream's layers to choose from: its spatial layers, or with one spatial
        layer its temporal ones (L1T3: 7.5, 15 or 30 frames/s); 0 or 1: nothing to choose."""
        return self.svc_layers if self.svc_layers > 1 else self.svc_temporal

    @property
    def temporal_choice(self) -> bool:
        """Whether an SVC subscriber's layer is a temporal one (one spatial layer)."""
        return self.svc_layers <= 1 and self.svc_temporal > 1

    @property
    def choices(self) -> int:
        """Layers a subscriber can choose from: simulcast streams, else SVC layers (0 or 1:
        nothing to choose)."""
        return self.layers or self.svc_choices

    def layer_target(self, layer: int) -> tuple[int, int, int]:
        """(stream, spatial limit, temporal limit) for a subscriber's layer choice (0 =
        lowest)."""
        if self.layers:
            return layer, NO_LIMIT, NO_LIMIT
        limit = layer if layer < self.svc_choices - 1 else NO_LIMIT
        if self.temporal_choice:
            return 0, NO_LIMIT, limit
        return 0, limit, NO_LIMIT

    def limit_svc(
        self, group: ForwardingGroup, layer: int, now: float, *, adopt: bool
    ) -> LayerSelector:
        """Give an SVC group the layer limit ``layer``: a selector (``adopt``: it takes over
        a stream forwarded whole so far, a split, rather than starting at a keyframe), a cache
        of its own numbering and, for VP8, picture ids closed over the dropped frames."""
        selector = LayerSelector(self.clock_rate)
        if adopt:
            selector.adopt(0, self.svc_seq, self.svc_ts, now)
        selector.set_target(*self.layer_target(layer), now=now)
        group.selector = selector
        group.cache = PacketCache()
        if self.vp8:
            group.pictures = group.pictures or PictureIdRewriter()
        return selector

    def __len__(self) -> int:
        return sum(len(g.members) for g in self.groups)

    def forward(self, packet: bytes, now: float) -> None:
        for group in self.groups:
            group.forward(packet, now)

    def add(self, downtrack: GroupMember, carry: ForwardingGroup | None = None) -> ForwardingGroup:
        """Put ``downtrack`` in the first group with its mapping, or a new one. With ``carry``
        (the group whose numbering it must continue) always in a new group that starts as a
        copy of that one's state, so its stream goes on without a glitch."""
        key = downtrack.group_key
        group = None
        want = downtrack.layer if downtrack.layer is not None else self.default
        if carry is None and want == self.default:
            group = next((g for g in self.groups if g.key == key and self._joinable(g)), None)
        if group is None:
            if carry is None and self.svc_choices > 1 and downtrack.layer is not None:
                # released at a keyframe with a layer limit already chosen (a hint)
                group = ForwardingGroup(key, downtrack.new_rewriter(), None)
                self.limit_svc(group, downtrack.layer, 0.0, adopt=False)
            elif carry is None:
                layering = self._new_layering(want)
                group = ForwardingGroup(key, downtrack.new_rewriter(), *layering)
            else:
                group = carry.copy()
                if (group.selector is None) != (self.layers == 0):
                    # carried over from another source (a WHEP viewer's switch)
                    group.selector, group.pictures = self._new_layering(want)
            self.groups = [*self.groups, group]
        # Lists are replaced, never mutated, so a fan-out running over them is never disturbed.
        group.members = [*group.members, downtrack]
        downtrack.joined(group)
        return group

    def _joinable(self, group: ForwardingGroup) -> bool:
        """New subscribers come in at a keyframe of the default stream: only a group
        forwarding (and staying on) that stream can take them without a glitch."""
        sel = group.selector
        if sel is None:
            return True
        # on the top stream, or new and about to start on it (at the same keyframe)
        return sel.target_stream == self.default and (
            sel.current == self.default or (sel.current is None and not group.last_forward)
        )

    def _new_layering(self, want: int) -> tuple[LayerSelector | None, PictureIdRewriter | None]:
        if not self.layers:
            return None, None
        selector = LayerSelector(self.clock_rate)
        selector.set_target(want, now=0.0)  # nothing forwarded yet: no switch-down deadline
        return selector, PictureIdRewriter() if self.vp8 else None

    def remove(self, downtrack: GroupMember) -> None:
        group = downtrack.group
        if group is None or group not in self.groups:
            return
        downtrack.left(group)
        group.members = [m for m in group.members if m is not downtrack]
        if not group.members:
            self.groups = [g for g in self.groups if g is not group]

    def split(self, downtrack: GroupMember) -> ForwardingGroup | None:
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
