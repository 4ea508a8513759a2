"""A room as this process sees it: its local members, and the commands all members hear.

Membership truth lives in the state store (so ``GET /rooms`` is the same everywhere); what
happens in the room travels as commands on the bus, which this object's listener applies to
the local subscribers. The same code path serves one process and a cluster.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import trio

from trio_sfu.sfu import dc_protocol
from trio_sfu.sfu.context import Host
from trio_sfu.sfu.downstream import Downstream
from trio_sfu.sfu.errors import BackendUnavailable
from trio_sfu.sfu.limits import SfuLimits
from trio_sfu.sfu.member import Member
from trio_sfu.sfu.model import (
    ActiveSpeaker,
    Chat,
    Command,
    PubJoin,
    PubLeft,
    PublisherInfo,
    SpeakerLevels,
    SubJoin,
    SubLeft,
    TrackChange,
    TrackInfo,
)
from trio_sfu.sfu.publisher import Publisher
from trio_sfu.sfu.remote import Relay
from trio_sfu.sfu.speaker import WINDOW, RoomSpeakers
from trio_sfu.sfu.track import TrackSource

log = logging.getLogger(__name__)

#: Wait before listening again after a room's listener ended (a backend may be down).
LISTENER_RETRY = 0.5


class Room:
    """The :class:`~trio_sfu.sfu.context.RoomContext` of its members; what it needs of the
    SFU is its :class:`~trio_sfu.sfu.context.Host`."""

    def __init__(self, host: Host, name: str) -> None:
        self._host = host
        self.name = name
        self.publishers: dict[str, Publisher] = {}
        #: seed-API subscribers and WHEP viewers: everyone we send media to
        self.subscribers: dict[str, Downstream] = {}
        self._cancel = trio.CancelScope()
        self._listening = trio.Event()
        #: the room's active speaker across pods (issue 11), ticked by :meth:`_speaker_timer`
        self.speakers = RoomSpeakers(host.node_id)
        #: called with the publisher id when the room's active speaker changes (the
        #: bandwidth allocator's priority hook; called in the room's listener task)
        self.speaker_listeners: list[Callable[[str], None]] = []
        self._speaker_wake = trio.Event()
        self._speaker_scope = trio.CancelScope()

    @property
    def limits(self) -> SfuLimits:
        """What each member may send and have queued (chat rate, send-buffer cap)."""
        return self._host.limits

    @property
    def node_id(self) -> str:
        return self._host.node_id

    @property
    def relay(self) -> Relay | None:
        return self._host.relay

    def track_source(self, publisher: PublisherInfo, track: TrackInfo) -> TrackSource | None:
        return self._host.track_source(self.name, publisher, track)

    @property
    def speaker(self) -> str | None:
        """The room's active speaker (a publisher id, maybe on another pod), or None."""
        return self.speakers.speaker

    @property
    def empty(self) -> bool:
        return not self.publishers and not self.subscribers

    async def listen(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Apply the room's bus commands to local members until :meth:`stop`.

        Started when the room opens (the first subscription's failure is the joiner's 503).
        A listener that ends later — NATS or the local bus cut off a listener that fell
        behind, a subscription lost — is made again, so a room never goes deaf while it has
        members (issue 9 item 4, issue 14 item 1).
        """
        with self._cancel:
            self._host.spawn(self._speaker_timer)
            async with self._host.bus.listen(self.name) as inbox:
                task_status.started()
                await self._follow(inbox)
            while True:
                log.warning("room listener ended; listening again", extra={"room": self.name})
                await trio.sleep(LISTENER_RETRY)
                try:
                    async with self._host.bus.listen(self.name) as inbox:
                        await self._follow(inbox)
                except BackendUnavailable:
                    pass

    async def _follow(self, inbox: trio.MemoryReceiveChannel[Command]) -> None:
        async for command in inbox:
            self._apply(command)

    def stop(self) -> None:
        self._cancel.cancel()
        self._speaker_scope.cancel()

    # -- active speaker (issue 11) --------------------------------------------------------

    def _has_audio(self) -> bool:
        return any(
            p.announced and any(t.level_id for t in p.tracks) for p in self.publishers.values()
        )

    def _local_levels(self) -> tuple[tuple[str, int], ...] | None:
        """This window's report for our announced audio publishers (None: we have none)."""
        sums = []
        for publisher in self.publishers.values():
            if not publisher.announced:
                continue
            total = count = 0
            best = -1
            for track in publisher.tracks:
                if track.level_id:
                    t, c = track.take_levels()
                    mean = t // c if c else 0
                    if mean > best:  # a publisher's loudest audio track speaks for it
                        best, total, count = mean, t, c
            if best >= 0:
                sums.append((publisher.id, total, count))
        return RoomSpeakers.report(sums) if sums else None

    async def _speaker_timer(self) -> None:
        """Every :data:`WINDOW` while the room has audio publishers here or hears another
        pod's reports: report ours, tick the detector, publish the decision if we decide.
        Idle (no wake-ups) in a room without audio. Reports are best effort: one lost in an
        outage is only a missed window, so nothing is queued for later."""
        with self._speaker_scope:
            await self._speaker_windows()

    async def _speaker_windows(self) -> None:
        # Every room's windows end on one grid of Trio's clock (as the reports' do,
        # sfu/ticks.py): a pod's rooms report in the same pass of the run loop, not each on
        # a wake-up of its own (issue 10: 20 rooms made 20 × 4 of them a second).
        window = math.floor(trio.current_time() / WINDOW)  # the grid's instants, counted
        warned = False
        while True:
            if not self._has_audio() and not self.speakers.active:
                self._speaker_wake = trio.Event()
                await self._speaker_wake.wait()
                continue
            window = max(window + 1, math.floor(trio.current_time() / WINDOW) + 1)
            await trio.sleep_until(window * WINDOW)
            now = trio.current_time()
            levels = self._local_levels()
            if levels is not None:
                # Ours go into the detector at once, not when the bus brings them back
                # (:meth:`_apply` skips them): with one pod the window is then one task step
                # in one pass of the run loop, not a publish, a listener's step and a pass
                # more; other pods hear them on the bus.
                self.speakers.heard_levels(self.node_id, levels, now)
            decision = self.speakers.tick(now)
            try:
                if levels is not None and self._host.bus.spans_pods:
                    await self._host.bus.publish(
                        self.name, SpeakerLevels(self.name, self.node_id, levels)
                    )
                if decision is not None:
                    speaker, listed = decision
                    await self._host.bus.publish(
                        self.name, ActiveSpeaker(self.name, self.node_id, speaker, listed)
                    )
            except BackendUnavailable:
                pass
            except Exception:  # the speaker is a nicety: never let it take the pod down
                if not warned:  # once per room: not four lines a second
                    warned = True
                    log.exception("speaker report failed", extra={"room": self.name})

    def _on_decision(self, command: ActiveSpeaker) -> None:
        before = self.speakers.speaker
        lines = self.speakers.heard_decision(command.speaker, command.levels, trio.current_time())
        for subscriber in list(self.subscribers.values()):
            for line in lines:
                subscriber.send_event(line)
        after = self.speakers.speaker
        if after is not None and after != before:
            log.info("active speaker", extra={"room": self.name, "peer": after,
                                              "node": command.node})
            for listener in list(self.speaker_listeners):
                listener(after)

    def _apply(self, command: Command) -> None:
        if isinstance(command, PubJoin):
            for subscriber in list(self.subscribers.values()):
                subscriber.publisher_joined(command.publisher)
        elif isinstance(command, TrackChange):
            for subscriber in list(self.subscribers.values()):
                subscriber.publisher_changed(command.publisher)
        elif isinstance(command, PubLeft):
            self.speakers.publisher_left(command.publisher_id)
            for subscriber in list(self.subscribers.values()):
                subscriber.publisher_left(command.publisher_id)
        elif isinstance(command, SpeakerLevels):
            if command.node != self.node_id:  # ours were taken when made (_speaker_windows)
                self.speakers.heard_levels(command.node, command.levels, trio.current_time())
                self._speaker_wake.set()
        elif isinstance(command, ActiveSpeaker):
            self._on_decision(command)
        elif isinstance(command, Chat):
            line = dc_protocol.chat(command.from_id, command.text)
            for subscriber in list(self.subscribers.values()):
                subscriber.send_chat(line)
        elif isinstance(command, SubJoin | SubLeft):
            pass

    # -- called by members ----------------------------------------------------------------

    async def publisher_infos(self) -> list[PublisherInfo]:
        try:
            state = await self._host.state.room(self.name)
        except BackendUnavailable:
            return []  # the bus's PubJoins still arrive; the state returns with Redis
        return list(state.publishers.values()) if state is not None else []

    async def publisher_ready(self, info: PublisherInfo) -> None:
        """A publisher's transport is up: record it, then tell the room (PUB_JOIN)."""
        self._host.reliably(self._record_then_announce, info)
        self._speaker_wake.set()
        log.info(
            "publisher joined",
            extra={
                "room": self.name,
                "peer": info.publisher_id,
                "audio": info.audio,
                "video": info.video,
            },
        )

    async def _record_then_announce(self, info: PublisherInfo) -> None:
        """The state store first, then PUB_JOIN (queued once the record is in): a pod killed
        right after announcing a publisher must leave it where the sweep of its dead node
        finds it, or every other pod would keep a ghost publisher (no PUB_LEFT would ever
        come; seen as a rare failure of tests/test_cluster.py's killed-pod test, when the
        bus's queue ran ahead of the state store's). A publisher that left meanwhile is not
        announced (its departure is queued already), and the announcement carries its tracks
        as they are now."""
        host = self._host
        await host.state.add_publisher(self.name, info)
        publisher = self.publishers.get(info.publisher_id)
        if publisher is None:
            return
        current = publisher.info
        host.reliably(host.bus.publish, self.name, PubJoin(self.name, current))

    def tracks_changed(self, info: PublisherInfo) -> None:
        """A live publisher's tracks changed (issue 15): the state store keeps ``GET /rooms``
        counts true, the bus tells every pod's subscribers (TrackChange)."""
        host = self._host
        host.reliably(host.state.add_publisher, self.name, info)
        host.reliably(host.bus.publish, self.name, TrackChange(self.name, info))
        self._speaker_wake.set()

    def publisher_left(self, publisher_id: str) -> None:
        """An announced publisher left: out of the state store, PUB_LEFT to every pod
        (reliably: a departure lost to an outage would leave a ghost in the room)."""
        host = self._host
        host.reliably(host.state.remove_publisher, self.name, publisher_id)
        host.reliably(host.bus.publish, self.name, PubLeft(self.name, publisher_id))

    def subscriber_left(self, subscriber_id: str) -> None:
        host = self._host
        host.reliably(host.state.remove_subscriber, self.name, subscriber_id)
        host.reliably(host.bus.publish, self.name, SubLeft(self.name, subscriber_id))

    async def chat(self, from_id: str, text: str) -> None:
        host = self._host
        host.reliably(host.bus.publish, self.name, Chat(self.name, from_id, text))
        await trio.lowlevel.checkpoint()

    # -- called by the SFU ----------------------------------------------------------------

    def remove(self, member: Member) -> None:
        """Forget ``member`` (if it is the one registered under its id)."""
        for members in (self.publishers, self.subscribers):
            if members.get(member.id) is member:
                del members[member.id]
