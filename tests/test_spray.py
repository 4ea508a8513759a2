"""Bad input at a live server: 10,000 hostile datagrams while a real peer streams.

The datagrams cover every RFC 7983 demux class and come from two places: a stranger's socket
(never validated by ICE) and the streaming peer's own validated address (so garbage reaches its
DTLS and SRTP paths too). The streaming peer must not lose a single echoed packet or message,
the server must count what it dropped, and it must still accept a new peer afterwards.
"""

from __future__ import annotations

import random
import socket

import trio

from tests.rtc_helpers import Received, connect, new_client, next_event, rtp
from trio_sfu.proto import stun
from trio_sfu.rtc import events as ev
from trio_sfu.rtc.server import RtcServer

SPRAY = 10_000
STREAM = 600
FORGED = 20  # each forged STUN check, from each address


def _garbage(rng: random.Random, first: range, real: list[bytes]) -> bytes:
    """Random bytes in one demux class, or a truncated / bit-flipped copy of a real datagram."""
    choice = rng.random()
    if real and choice < 0.4:
        sample = rng.choice(real)
        return sample[: rng.randrange(0, len(sample))]  # truncated (may be empty)
    if real and choice < 0.6:
        flipped = bytearray(rng.choice(real))
        for _ in range(rng.randint(1, 4)):
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        return bytes(flipped)
    size = rng.choice([1, 2, 4, 12, 20, 28, 100, 1200, 1500])
    data = bytearray(rng.randbytes(size))
    data[0] = rng.choice(first)
    return bytes(data)


async def test_spray_does_not_disturb_a_streaming_peer(
    rtc_server: RtcServer, nursery: trio.Nursery
) -> None:
    client = new_client()
    video = client.add_transceiver("video", "sendrecv")
    channel = client.create_data_channel("control")
    back = Received()
    client.on_rtp = back
    sent_real: list[bytes] = []
    original_send = client._send_datagram

    def recording_send(data: bytes) -> None:  # keep real SRTP/DTLS datagrams to mutate
        if len(sent_real) < 200:
            sent_real.append(data)
        original_send(data)

    client._send_datagram = recording_send  # type: ignore[method-assign]
    spc = await connect(rtc_server, nursery, client)
    await next_event(client, ev.DataChannelOpen)

    server_addr = rtc_server.endpoint.local_address
    rng = random.Random(2024)
    # A well-formed check with the right ufrag but the wrong password, and one for a stranger.
    forged_checks = [
        stun.binding_request(
            username=f"{spc.ice_agent.local_ufrag}:{client.ice_agent.local_ufrag}",
            password="not-the-password-of-this-peer",
            priority=1,
            tie_breaker=7,
            transaction_id=stun.new_transaction_id(),
            use_candidate=True,
        ),
        stun.binding_request(
            username="nobody:here",
            password="x" * 22,
            priority=1,
            tie_breaker=7,
            transaction_id=stun.new_transaction_id(),
        ),
    ]
    classes = [
        range(0, 4),
        range(20, 64),
        range(128, 192),
        range(4, 20),
        range(64, 128),
        range(192, 256),
    ]

    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.bind(("127.0.0.1", 0))
    stats_before = rtc_server.endpoint.stats.datagrams_in

    # Mutations start from a snapshot: what the list holds must not depend on how far the
    # stream got when a datagram is drawn.
    real = [*sent_real, *forged_checks]

    async def spray() -> None:
        # The forged checks themselves, always: FORGED times each, from both addresses.
        for _ in range(FORGED):
            for check in forged_checks:
                stranger.sendto(check, server_addr)
                client._sock.sendto(check, server_addr)
            await trio.sleep(0.001)
        for i in range(SPRAY):
            data = _garbage(rng, classes[i % len(classes)], real if i % 3 else [])
            try:
                if i % 2:  # from the validated address: reaches the peer's DTLS/SRTP paths
                    client._sock.sendto(data, server_addr)
                else:
                    stranger.sendto(data, server_addr)
            except BlockingIOError:
                await trio.sleep(0.001)
            if i % 100 == 0:
                await trio.sleep(0.001)

    async def stream() -> None:
        for seq in range(STREAM):
            client.send_rtp(rtp(video.sender_ssrc, seq))
            if seq % 20 == 0:
                channel.send(f"ping {seq}")
            await trio.sleep(0.002)

    async with trio.open_nursery() as work:
        work.start_soon(spray)
        work.start_soon(stream)
    with trio.fail_after(10):
        while len(back.packets) < STREAM:
            await trio.sleep(0.01)
    pongs = set()
    with trio.fail_after(10):
        while len(pongs) < STREAM // 20:
            event = await next_event(client, ev.DataChannelMessage)
            assert isinstance(event, ev.DataChannelMessage)
            pongs.add(event.data)

    # Every packet came back exactly once, in the original numbering.
    assert sorted(seq for _, seq in back.packets) == list(range(STREAM))
    assert pongs == {f"ping {seq}" for seq in range(0, STREAM, 20)}
    assert spc.connected and client.connected

    # The server saw the spray and counted what it dropped.
    ep = rtc_server.endpoint.stats
    assert ep.datagrams_in - stats_before >= SPRAY // 2  # loopback: nearly all arrive
    assert ep.unknown_address > 0 and ep.stun_malformed > 0 and ep.unknown_kind > 0
    # Every forged check was refused (loopback loses nothing at this rate): the wrong password
    # with a 401 (counted as rejected), the stranger's ufrag silently (unknown user).
    assert ep.stun_rejected >= 2 * FORGED and ep.stun_unknown_user >= 2 * FORGED
    assert spc.stats.srtp_rejected > 0  # bad or replayed SRTP from the peer's own address

    # And it keeps serving: a brand-new peer connects and echoes.
    late = new_client()
    late_channel = late.create_data_channel("late")
    await connect(rtc_server, nursery, late)
    await next_event(late, ev.DataChannelOpen)
    late_channel.send("still here")
    event = await next_event(late, ev.DataChannelMessage)
    assert isinstance(event, ev.DataChannelMessage) and event.data == "still here"
    stranger.close()
