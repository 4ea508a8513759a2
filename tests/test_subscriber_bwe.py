"""A subscriber's transport-cc feedback and REMB reach its bandwidth estimator (issue 11 §3).

The SFU numbers every packet towards a subscriber with a transport-wide sequence number; the
subscriber (here our own client over a real DTLS-SRTP leg) reports when each arrived. The
estimator on the server's side of that leg (``Downstream.bwe``) must match those reports to
what was sent: the delivered rate it measures is the rate the publisher sent at.
"""

from __future__ import annotations

import math

import trio

from tests.sfu_helpers import SfuEnv, record_transport_cc, start_sfu, wait_for
from trio_sfu.client.load import Feedback, Receiver
from trio_sfu.proto.rtcp import ReceiverReport, Remb, ReportBlock
from trio_sfu.proto.rtcp.transport_cc import TransportCcFeedback


async def test_subscriber_feedback_drives_its_estimator(nursery: trio.Nursery) -> None:
    env: SfuEnv = await start_sfu(nursery)
    bob = await env.subscriber("r", "bob-1")
    alice = await env.publisher("r", "alice-1", audio=False)
    await wait_for(lambda: env.forwarding("r", "bob-1", "alice-1"))
    video = next(t for t in bob.pc.transceivers if t.kind == "video" and t.receiving)
    recorder = record_transport_cc(bob)
    bwe = env.sfu.rooms["r"].subscribers["bob-1"].bwe
    before = bwe.estimate

    async def feedback_loop() -> None:
        while True:
            await trio.sleep(0.05)
            for fb in recorder.build_feedback(trio.current_time(), 1, 0):
                bob.pc.send_rtcp(fb.serialize())

    async with trio.open_nursery() as inner_nursery:
        inner_nursery.start_soon(feedback_loop)
        # ~1000 B every 10 ms = ~800 kbit/s of payload for 1.5 s
        for i in range(150):
            alice.send_frame(keyframe=i == 0, size=1000)
            await trio.sleep(0.01)
        await wait_for(lambda: bwe.acked_bitrate() is not None, 10)
        inner_nursery.cancel_scope.cancel()
    acked = bwe.acked_bitrate()
    assert acked is not None
    # what arrived over the last half second at roughly the rate it was sent (the payload plus
    # RTP headers; trio's sleep granularity under load only slows the sender down)
    assert 100_000 < acked < 2_000_000, acked
    assert bwe.loss == 0.0
    assert bwe.estimate >= before  # nothing lost, no queue: no reason to go down

    # REMB caps the estimate (a receiver that only has REMB still limits its layers)
    bob.pc.send_rtcp(Remb(sender_ssrc=1, bitrate=120_000, ssrcs=video.remote_ssrcs).serialize())
    await wait_for(lambda: bwe.estimate <= 120_000, 10)


async def test_a_receiver_without_transport_cc_feedback_is_throttled_by_its_reports_loss(
    nursery: trio.Nursery,
) -> None:
    """aiortc (and other receivers without transport-cc) send RTCP receiver reports only:
    the loss they report over the packets expected since the previous one (RFC 3550
    §6.4.1) is the estimator's congestion signal — until transport-cc feedback shows up,
    which then speaks alone (its loss is measured per packet, and would count twice)."""
    env: SfuEnv = await start_sfu(nursery)
    bob = await env.subscriber("r", "bob-1")
    await env.publisher("r", "alice-1", audio=False)
    await wait_for(lambda: env.forwarding("r", "bob-1", "alice-1"))
    video = next(t for t in bob.pc.transceivers if t.kind == "video" and t.receiving)
    ours = video.remote_ssrcs[0]
    bwe = env.sfu.rooms["r"].subscribers["bob-1"].bwe
    stats = env.sfu.rooms["r"].subscribers["bob-1"].live[ours].stats
    highest = 1000

    async def report(fraction_lost: int) -> None:
        """One receiver report of 100 more packets, once the server has taken it."""
        nonlocal highest
        highest += 100
        block = ReportBlock(ours, fraction_lost=fraction_lost, highest_sequence=highest)
        bob.pc.send_rtcp(ReceiverReport(ssrc=1, reports=[block]).serialize())
        await wait_for(lambda: stats.last_report is not None
                       and stats.last_report.highest_sequence == highest)

    await report(0)  # the first report: nothing expected since an earlier one
    await report(3)  # ~1 % of 100
    await trio.sleep(0.6)  # a loss window (0.5 s) later
    await report(77)  # 30 %
    assert bwe.decreases == 1
    assert math.isclose(bwe.loss, 0.3, abs_tol=0.02)
    # transport-cc feedback from here on: the reports' loss no longer counts
    bob.pc.send_rtcp(TransportCcFeedback(1, ours, 0, 0, 0, [(0, True, 0)]).serialize())
    await trio.sleep(0.6)
    await report(77)
    await report(77)
    assert bwe.decreases == 1  # 30 % over 200 packets: would have lowered it again


async def test_the_load_testers_feedback_drives_the_estimator_and_the_rtt(
    nursery: trio.Nursery,
) -> None:
    """``trio-sfu load --feedback``: the subscriber's :class:`Feedback` (on its real leg)
    answers like a browser's receiver — transport-cc feedback the server's estimator matches
    to what it sent, and receiver reports whose LSR/DLSR give the server a round-trip time."""
    env: SfuEnv = await start_sfu(nursery)
    bob = await env.subscriber("r", "bob-1")
    alice = await env.publisher("r", "alice-1", audio=False)
    await wait_for(lambda: env.forwarding("r", "bob-1", "alice-1"))
    receiver = Receiver()
    feedback = Feedback(bob.pc, receiver)

    def on_rtp(_stream: object, packet: bytes, now: float) -> None:
        receiver.on_rtp(packet)
        feedback.on_rtp(packet, now)

    bob.pc.on_rtp, bob.pc.on_rtcp = on_rtp, feedback.on_rtcp
    member = env.sfu.rooms["r"].subscribers["bob-1"]
    for i in range(150):  # ~1000 B every 10 ms for 1.5 s, feedback every 100 ms
        alice.send_frame(keyframe=i == 0, size=1000)
        await trio.sleep(0.01)
        if i % 10 == 9:
            feedback.send_feedback(trio.current_time())
    await wait_for(lambda: member.bwe.acked_bitrate() is not None, 10)
    assert member.bwe.loss == 0.0
    assert receiver.received > 100 and receiver.expected == receiver.received
    # A sender report reaches the client within the SFU's 1 s report period; the next
    # receiver report echoes it, and the server measures a round trip from it.
    await wait_for(lambda: feedback._last_sr, 5)
    before = sum(member.rtt_reports.counts)
    feedback.send_report(trio.current_time())
    await wait_for(lambda: sum(member.rtt_reports.counts) > before, 5)
