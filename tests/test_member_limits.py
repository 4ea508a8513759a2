"""What one member may cost (issue 14 item 2): a CHAT rate limit per member, a send-buffer
cap per member with a drop-then-disconnect policy, and an SCTP retransmission limit that aborts
a peer which stops acknowledging while its ICE consent stays alive."""

from __future__ import annotations

from typing import Any

import trio

from tests.sfu_helpers import SfuEnv, start_sfu, wait_for
from trio_sfu.client.sfu import SubscriberClient
from trio_sfu.rtc.demux import Kind
from trio_sfu.sfu.limits import SfuLimits
from trio_sfu.sfu.member import CONTROL_HEADROOM

LINE = "x" * 4000  # a 4 KB chat line, as in the flood


def stall(client: SubscriberClient) -> None:
    """The client stops reading DTLS (so it never acknowledges SCTP) but keeps answering and
    sending ICE consent checks: the stalled subscriber of the issue."""
    pc = client.pc
    original = pc.datagram_received

    def drop_dtls(kind: Kind, data: bytes, addr: Any, now: float) -> None:
        if kind is not Kind.DTLS:
            original(kind, data, addr, now)

    pc.datagram_received = drop_dtls  # type: ignore[method-assign]


def chats(client: SubscriberClient) -> list[str]:
    return [line for line in client.lines if line.startswith("CHAT ")]


async def test_chat_rate_limit_per_member(nursery: trio.Nursery) -> None:
    env = await start_sfu(nursery)
    env.sfu.limits = SfuLimits(chat_rate=2.0, chat_burst=5)
    bob = await env.subscriber("r", "bob-1")
    carol = await env.subscriber("r", "carol-1")
    began = trio.current_time()
    for i in range(30):
        carol.send(f"CHAT line {i}")
    error = await carol.expect("ERROR chat rate limit")
    print(error)
    await trio.sleep(0.5)
    # The burst went through, the rest was refused (but for what 2/s refilled meanwhile).
    got = len(chats(bob))
    elapsed = trio.current_time() - began
    print(f"30 CHAT sent at once → {got} relayed in {elapsed:.2f} s")
    assert 5 <= got <= 5 + 2 * elapsed + 1
    # The allowance comes back with time, and the connection stayed.
    await trio.sleep(1.0)
    carol.send("CHAT later")
    await wait_for(lambda: any(line.endswith(" later") for line in chats(bob)), timeout=5)
    assert carol.pc.connected


async def test_stalled_subscriber_is_capped_then_dropped_others_unaffected(
    nursery: trio.Nursery,
) -> None:
    env = await start_sfu(nursery)
    cap = 64 * 1024
    env.sfu.limits = SfuLimits(
        chat_rate=100_000.0, chat_burst=100_000, max_send_buffer=cap, send_stall_limit=2.0
    )
    env.server.sctp_max_retransmits = None  # the buffer policy alone, here
    healthy = await env.subscriber("r", "healthy-1")
    stalled = await env.subscriber("r", "stalled-1")
    sender = await env.subscriber("r", "sender-1")
    stall(stalled)
    member = env.sfu.rooms["r"].subscribers["stalled-1"]
    channel = member.control
    assert channel is not None
    peak = 0
    sent = 0
    with trio.move_on_after(20):
        while "stalled-1" in env.sfu.rooms["r"].subscribers:
            for _ in range(20):
                sender.send(f"CHAT {LINE}")
                sent += 1
            peak = max(peak, channel.buffered_amount)
            await trio.sleep(0.02)
    print(
        f"sent {sent} x 4 KB; stalled member peak buffer {peak} B (cap {cap}), "
        f"{member.chat_dropped} dropped, closed: {member.pc.close_reason}"
    )
    assert member.removed, "the stalled member was never dropped"
    assert member.pc.close_reason == "send buffer full"
    assert peak <= cap + CONTROL_HEADROOM
    assert member.chat_dropped > 0
    # The healthy subscriber got every line and stays.
    await wait_for(lambda: len(chats(healthy)) == sent, timeout=20)
    assert healthy.pc.connected and sender.pc.connected


async def test_sctp_retransmission_limit_aborts_a_peer_that_stops_acknowledging(
    nursery: trio.Nursery,
) -> None:
    env: SfuEnv = await start_sfu(nursery)
    env.server.sctp_max_retransmits = 3  # RFC 9260 default is 10; 3 keeps the test short
    stalled = await env.subscriber("r", "stalled-1")
    other = await env.subscriber("r", "other-1")
    stall(stalled)
    member = env.sfu.rooms["r"].subscribers["stalled-1"]
    other.send("CHAT hello")  # something to retransmit
    await wait_for(lambda: member.removed, timeout=30)
    print(f"closed: {member.pc.close_reason}")
    assert member.pc.close_reason is not None
    assert "too many retransmissions" in member.pc.close_reason
    assert other.pc.connected
