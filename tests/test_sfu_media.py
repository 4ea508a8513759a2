"""RTCP per leg and loss repair through the SFU (issue 3, item 5), with our clients as peers."""

from __future__ import annotations

import itertools

import pytest
import trio

from tests.sfu_helpers import SfuEnv, start_sfu, wait_for
from trio_sfu.client.sfu import PublisherClient, SubscriberClient
from trio_sfu.proto.codecs import vp8
from trio_sfu.proto.rtcp import (
    Nack,
    Pli,
    ReceiverReport,
    ReportBlock,
    RtcpPacket,
    SenderReport,
    TransportCcFeedback,
)
from trio_sfu.proto.rtp import parse_rtp
from trio_sfu.rtc.events import IncomingStream


@pytest.fixture
async def env(nursery: trio.Nursery) -> SfuEnv:
    return await start_sfu(nursery)


class Rtcp:
    """Collects what one peer receives over RTCP."""

    def __init__(self) -> None:
        self.packets: list[tuple[float, RtcpPacket]] = []

    def __call__(self, packets: list[RtcpPacket], now: float) -> None:
        self.packets.extend((now, p) for p in packets)

    def of(self, kind: type) -> list[RtcpPacket]:
        return [p for _, p in self.packets if isinstance(p, kind)]


class Media:
    """Collects a subscriber's RTP: (ssrc, pt, seq, payload)."""

    def __init__(self, client: SubscriberClient) -> None:
        self.packets: list[tuple[int, int, int, bytes]] = []
        self._inner = client.pc.on_rtp
        client.pc.on_rtp = self

    def __call__(self, stream: IncomingStream, packet: bytes, now: float) -> None:
        parsed = parse_rtp(packet)
        self.packets.append(
            (parsed.ssrc, parsed.payload_type, parsed.sequence_number, parsed.payload)
        )
        if self._inner is not None:
            self._inner(stream, packet, now)


async def pair(env: SfuEnv) -> tuple[PublisherClient, SubscriberClient, Rtcp, Rtcp, Media]:
    bob = await env.subscriber("r", "bob-1")
    alice = await env.publisher("r", "alice-1", audio=False)
    alice_rtcp, bob_rtcp = Rtcp(), Rtcp()
    alice.pc.on_rtcp = alice_rtcp
    bob.pc.on_rtcp = bob_rtcp
    media = Media(bob)
    await wait_for(lambda: env.forwarding("r", "bob-1", "alice-1"))
    return alice, bob, alice_rtcp, bob_rtcp, media


def scrape(env: SfuEnv) -> dict[str, float]:
    """/metrics as prometheus-client renders it, keyed by sample name and labels (but node)."""
    from prometheus_client.parser import text_string_to_metric_families

    from trio_sfu.metrics import exposition, node_registry

    text = exposition(node_registry(env.sfu, "local")).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sample.labels.items() if k != "node")
            out[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return out


def video_of(bob: SubscriberClient):  # type: ignore[no-untyped-def]
    return next(t for t in bob.pc.transceivers if t.kind == "video" and t.receiving)


async def test_keyframe_requests_are_throttled_per_track(env: SfuEnv) -> None:
    alice, bob, alice_rtcp, _, _ = await pair(env)
    alice.send_frame(keyframe=True)
    # A new subscriber's video makes the SFU ask the publisher for a keyframe at once.
    await wait_for(lambda: len(alice_rtcp.of(Pli)) >= 1)
    await trio.sleep(0.6)
    theirs = video_of(bob)
    ours = theirs.remote_ssrcs[0]

    def plis_since(count: int) -> list[float]:
        return [t for t, p in alice_rtcp.packets if isinstance(p, Pli)][count:]

    # A burst of 20 PLIs from the subscriber in 200 ms: one goes now, the rest are refused;
    # the publisher's keyframe then answers them, so none is sent when the interval ends.
    before = len(alice_rtcp.of(Pli))
    for _ in range(20):
        bob.pc.send_rtcp(Pli(sender_ssrc=1, media_ssrc=ours).serialize())
        await trio.sleep(0.01)
    await wait_for(lambda: len(plis_since(before)) >= 1)
    alice.send_frame(keyframe=True)
    await trio.sleep(0.8)
    assert len(plis_since(before)) == 1

    # The same burst with no keyframe in answer: the refused requests go once, 500 ms later.
    before = len(alice_rtcp.of(Pli))
    for _ in range(20):
        bob.pc.send_rtcp(Pli(sender_ssrc=1, media_ssrc=ours).serialize())
        await trio.sleep(0.01)
    await trio.sleep(0.8)
    times = plis_since(before)
    assert len(times) == 2
    assert all(b - a >= 0.5 for a, b in itertools.pairwise(times))
    assert all(p.media_ssrc == alice.video.sender_ssrc for p in alice_rtcp.of(Pli))  # type: ignore[attr-defined, union-attr]


async def test_a_new_subscriber_starts_at_a_keyframe(env: SfuEnv) -> None:
    """Delta frames before the first keyframe are held back (they could not be decoded),
    the SFU keeps asking for a keyframe meanwhile, and the first packet the subscriber gets
    starts a keyframe."""
    alice, _, alice_rtcp, _, media = await pair(env)
    for _ in range(10):
        alice.send_frame(keyframe=False)
        await trio.sleep(0.02)
    await wait_for(lambda: len(alice_rtcp.of(Pli)) >= 1)
    await trio.sleep(0.1)
    assert media.packets == []
    alice.send_frame(keyframe=True)
    for _ in range(5):
        alice.send_frame(keyframe=False)
    await wait_for(lambda: len(media.packets) >= 6)
    await trio.sleep(0.1)
    assert len(media.packets) == 6
    assert vp8.is_keyframe(media.packets[0][3])
    assert not any(vp8.is_keyframe(p[3]) for p in media.packets[1:])


async def test_sender_report_counts_payload_octets_only(env: SfuEnv) -> None:
    """RFC 3550 §6.4.1: the SR's sender's octet count is payload octets, "not including header
    or padding" — the forwarded packets carry a transport-cc extension, which must not count."""
    alice, bob, _, bob_rtcp, media = await pair(env)
    for i in range(40):
        alice.send_frame(keyframe=i == 0, size=200 + i)
        await trio.sleep(0.005)
    ours = video_of(bob).remote_ssrcs[0]
    await wait_for(lambda: sum(p[0] == ours for p in media.packets) == 40)

    def final() -> SenderReport | None:
        srs = [p for p in bob_rtcp.of(SenderReport) if p.ssrc == ours]  # type: ignore[attr-defined]
        return next((sr for sr in reversed(srs) if sr.packet_count == 40), None)  # type: ignore[attr-defined]

    await wait_for(lambda: final() is not None, 10)
    sr = final()
    assert sr is not None
    assert sr.octet_count == sum(len(p[3]) for p in media.packets if p[0] == ours)
    assert sr.octet_count == sum(200 + i for i in range(40))


async def test_subscriber_rtt_from_receiver_reports_spaces_repeated_nacks(env: SfuEnv) -> None:
    """RTT per subscriber from its RR (RFC 3550 §6.4.1: A - LSR - DLSR against our SR), and
    the NACK path uses it: a NACK repeated within one round trip of our retransmission is not
    answered twice; one after the round trip is."""
    alice, bob, _, bob_rtcp, media = await pair(env)
    for i in range(30):
        alice.send_frame(keyframe=i == 0, size=300 + i)
        await trio.sleep(0.01)
    t = video_of(bob)
    ours = t.remote_ssrcs[0]
    rtx_ssrc = t.remote_rtx_ssrcs[ours]
    await wait_for(lambda: any(p.ssrc == ours for p in bob_rtcp.of(SenderReport)), 10)  # type: ignore[attr-defined]
    await trio.sleep(0.25)
    arrived, sr = next(
        (t, p)
        for t, p in reversed(bob_rtcp.packets)
        if isinstance(p, SenderReport) and p.ssrc == ours
    )
    # DLSR: how long we held the SR before reporting; the SFU must subtract it.
    held = trio.current_time() - arrived
    block = ReportBlock(ours, highest_sequence=30, lsr=sr.compact_ntp, dlsr=int(held * 65536))
    downtrack = next(
        d
        for (pid, _), d in env.sfu.rooms["r"].subscribers["bob-1"].downtracks.items()
        if pid == "alice-1" and d.source.kind == "video"
    )
    assert downtrack.stats.rtt is None
    bob.pc.send_rtcp(ReceiverReport(ssrc=1, reports=[block]).serialize())
    await wait_for(lambda: downtrack.stats.rtt is not None)
    rtt = downtrack.stats.rtt
    assert rtt is not None and 0 <= rtt < 1.0 and downtrack.rtt == rtt

    def rtx_count() -> int:
        return sum(1 for p in media.packets if p[0] == rtx_ssrc)

    wanted = sorted(seq for ssrc, _, seq, _ in media.packets if ssrc == ours)[5]
    for _ in range(3):  # three NACKs back to back: one repair
        bob.pc.send_rtcp(Nack.from_lost(1, ours, [wanted]).serialize())
    await wait_for(lambda: rtx_count() >= 1)
    await trio.sleep(0.05)
    assert rtx_count() == 1 and downtrack.nack_repeats >= 1
    await trio.sleep(max(rtt, 0.01) + 0.05)  # one round trip later: answered again
    bob.pc.send_rtcp(Nack.from_lost(1, ours, [wanted]).serialize())
    await wait_for(lambda: rtx_count() >= 2)


async def test_subscriber_nack_is_answered_from_the_cache_as_rtx(env: SfuEnv) -> None:
    alice, bob, _, _, media = await pair(env)
    for i in range(30):
        alice.send_frame(keyframe=i == 0, size=300 + i)
        await trio.sleep(0.002)
    await wait_for(lambda: len(media.packets) >= 30)
    t = video_of(bob)
    media_ssrc = t.remote_ssrcs[0]
    rtx_ssrc = t.remote_rtx_ssrcs[media_ssrc]
    wanted = sorted(seq for ssrc, _, seq, _ in media.packets if ssrc == media_ssrc)[10:13]
    originals = {seq: payload for ssrc, _, seq, payload in media.packets if seq in wanted}
    bob.pc.send_rtcp(Nack.from_lost(1, media_ssrc, wanted).serialize())
    await wait_for(lambda: sum(1 for p in media.packets if p[0] == rtx_ssrc) >= 3)
    assert sum(1 for p in media.packets if p[0] == rtx_ssrc) == 3, (wanted, media.packets[-6:])
    for ssrc, pt, _, payload in media.packets:
        if ssrc != rtx_ssrc:
            continue
        assert t.codec(pt) is not None and t.codec(pt).is_rtx  # type: ignore[union-attr]
        osn = int.from_bytes(payload[:2], "big")
        assert payload[2:] == originals[osn]  # RFC 4588 §4: OSN + the original payload


async def test_publisher_loss_is_nacked_and_repaired_by_rtx(env: SfuEnv) -> None:
    alice, bob, alice_rtcp, _, media = await pair(env)
    assert alice.video is not None
    for i in range(40):
        alice.send_frame(keyframe=i == 0, skip=i in (20, 21))
        await trio.sleep(0.002)
    await wait_for(lambda: alice_rtcp.of(Nack))
    lost = sorted({s for p in alice_rtcp.of(Nack) for s in p.lost})  # type: ignore[attr-defined]
    assert lost == [20, 21]
    for seq in lost:
        assert alice.resend_as_rtx(alice.video, seq)
    await wait_for(lambda: len({p[2] for p in media.packets}) >= 40)
    media_ssrc = video_of(bob).remote_ssrcs[0]
    seqs = sorted(seq for ssrc, _, seq, _ in media.packets if ssrc == media_ssrc)
    assert seqs == list(range(seqs[0], seqs[0] + 40))  # the repaired packets filled the gap
    # The SFU stops asking once repaired.
    await trio.sleep(0.3)
    count = len(alice_rtcp.of(Nack))
    await trio.sleep(0.3)
    assert len(alice_rtcp.of(Nack)) == count


async def test_rtcp_is_terminated_per_leg(env: SfuEnv) -> None:
    alice, bob, alice_rtcp, bob_rtcp, _ = await pair(env)
    assert alice.video is not None
    for i in range(150):
        alice.send_frame(keyframe=i == 0)
        await trio.sleep(0.01)
    await wait_for(lambda: bob_rtcp.of(SenderReport) and alice_rtcp.of(ReceiverReport), 5)
    # Subscribers get the SFU's sender reports for the SSRC the SFU sends them.
    ours = video_of(bob).remote_ssrcs[0]
    srs = [p for p in bob_rtcp.of(SenderReport) if p.ssrc == ours]  # type: ignore[attr-defined]
    assert srs and srs[-1].packet_count > 0 and srs[-1].ntp_msw > 0  # type: ignore[attr-defined]
    # Publishers get receiver reports about what they sent.
    blocks = [b for rr in alice_rtcp.of(ReceiverReport) for b in rr.reports]  # type: ignore[attr-defined]
    mine = [b for b in blocks if b.ssrc == alice.video.sender_ssrc]
    assert mine and mine[-1].highest_sequence >= 50 and mine[-1].packets_lost == 0
    # Publishers' own SRs never reach subscribers; only the SFU's do.
    assert all(p.ssrc == ours for p in bob_rtcp.of(SenderReport))  # type: ignore[attr-defined]
    # transport-cc feedback flows to the publisher (its estimate depends on it).
    feedback = alice_rtcp.of(TransportCcFeedback)
    assert feedback
    received = {s for f in feedback for s, ok, _ in f.packets if ok}  # type: ignore[attr-defined]
    assert len(received) >= 100


async def test_transport_cc_feedback_reports_the_last_packets_of_a_burst(env: SfuEnv) -> None:
    """Feedback goes out with the first packet that finds it due (issue 10: no wake-up of its
    own); packets with none after them are reported by the publisher's timer instead."""
    alice, _, alice_rtcp, _, _ = await pair(env)
    for i in range(10):  # back to back, within one feedback interval, then nothing
        alice.send_frame(keyframe=i == 0)
    last = (alice._twcc_seq - 1) & 0xFFFF

    def reported() -> set[int]:
        feedback = alice_rtcp.of(TransportCcFeedback)
        return {s for f in feedback for s, ok, _ in f.packets if ok}  # type: ignore[attr-defined]

    await wait_for(lambda: last in reported(), 5)
    assert {(last - k) & 0xFFFF for k in range(10)} <= reported()


async def test_a_gap_is_nacked_before_the_feedback_that_follows_it(env: SfuEnv) -> None:
    """The publisher's timer sleeps through packets (issue 10); a gap moves its deadline at
    once, so the NACK does not wait for the next transport-cc feedback to be due."""
    alice, _, alice_rtcp, _, _ = await pair(env)
    assert alice.video is not None
    for i in range(10):  # back to back, within one feedback interval, then nothing
        alice.send_frame(keyframe=i == 0, skip=i == 5)
    last = (alice._twcc_seq - 1) & 0xFFFF

    def order(packet: RtcpPacket) -> int:
        """Where ``packet`` came among alice's RTCP (or past the end)."""
        kinds = [p for _, p in alice_rtcp.packets]
        return next((i for i, p in enumerate(kinds) if p is packet), len(kinds))

    def reporting_last() -> list[RtcpPacket]:
        return [
            f
            for f in alice_rtcp.of(TransportCcFeedback)
            if any(s == last and ok for s, ok, _ in f.packets)  # type: ignore[attr-defined]
        ]

    await wait_for(lambda: alice_rtcp.of(Nack) and reporting_last(), 5)
    assert order(alice_rtcp.of(Nack)[0]) < order(reporting_last()[0])


async def test_subscribers_with_one_mapping_share_forwarding_groups(env: SfuEnv) -> None:
    """Issue 10: two subscribers on our stack negotiate the same numbers, so each of the
    publisher's tracks is rewritten once per packet for both (one group per track); each still
    gets its own SSRC and the publisher's payloads, in order, without a gap."""
    bob = await env.subscriber("r", "bob-1")
    carol = await env.subscriber("r", "carol-1")
    alice = await env.publisher("r", "alice-1")
    media = [Media(bob), Media(carol)]
    await wait_for(lambda: env.forwarding("r", "bob-1", "alice-1"))
    await wait_for(lambda: env.forwarding("r", "carol-1", "alice-1"))
    for i in range(20):
        alice.send_frame(keyframe=i == 0, size=600 + i)
        await trio.sleep(0.005)
    await wait_for(lambda: all(len(m.packets) >= 40 for m in media))
    ssrcs = [{p[0] for p in m.packets} for m in media]
    assert len(ssrcs[0]) == len(ssrcs[1]) == 2 and not ssrcs[0] & ssrcs[1]
    for m in media:
        video = [p for p in m.packets if len(p[3]) > 200]
        assert [len(p[3]) for p in video] == [600 + i for i in range(20)]
        seqs = [p[2] for p in video]
        assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))
    after = scrape(env)  # the hot path's plain ints, summed at scrape time
    # (Counted once forwarding runs: a video down-track joins its group at the first keyframe.)
    assert after["trio_sfu_downtracks"] == 4  # 2 subscribers × (audio, video)
    assert after["trio_sfu_forwarding_groups"] == 2  # one per track
    assert after['trio_sfu_packets_total{direction="in",kind="rtp"}'] >= 40
    assert after['trio_sfu_packets_total{direction="out",kind="rtp"}'] >= 80
