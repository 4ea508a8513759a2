"""Our client against our server over loopback: the Trio drivers end to end."""

from __future__ import annotations

import random

import pytest
import trio

from tests.conftest import live_tasks
from tests.rtc_helpers import (
    Received,
    connect,
    echo_events,
    live_srtp_contexts,
    new_client,
    next_event,
    rtp,
)
from trio_sfu.proto.errors import SdpError
from trio_sfu.rtc import events as ev
from trio_sfu.rtc.server import RtcServer


async def test_datachannel_echo_ordered_unordered_and_server_opened(
    rtc_server: RtcServer, nursery: trio.Nursery
) -> None:
    client = new_client(name="client")
    ordered = client.create_data_channel("ordered")
    unordered = client.create_data_channel("unordered", ordered=False)
    spc = await connect(rtc_server, nursery, client, echo=False)

    rng = random.Random(5)
    messages: list[str | bytes] = []
    for i in range(120):
        size = rng.choice([1, 2, 100, 1200, 5000, 65536, 200_000, 262_144])
        if i % 3 == 0:
            messages.append("é" * (size // 2) if size > 1 else "x")
        elif i % 3 == 1:
            messages.append(rng.randbytes(size))
        else:
            messages.append(b"" if i % 2 else "")

    # The server echoes, and also opens a channel of its own towards the client.
    spc.start_soon(echo_events, spc)
    server_channel = spc.create_data_channel("from-server", protocol="x-test")

    got: dict[str, list[str | bytes]] = {"ordered": [], "unordered": []}
    opened: set[str] = set()
    sent = False
    with trio.fail_after(30):
        async for event in client.events:
            if isinstance(event, ev.DataChannelOpen):
                opened.add(event.channel.label)
                if event.channel.label == "from-server":
                    assert event.channel.protocol == "x-test"
                    assert event.channel.id is not None and event.channel.id % 2 == 1
                if {"ordered", "unordered"} <= opened and not sent:
                    sent = True
                    for i, m in enumerate(messages):
                        (ordered if i % 2 == 0 else unordered).send(m)
                        await ordered.wait_buffered_amount_below(1 << 20)
            elif isinstance(event, ev.DataChannelMessage):
                got[event.channel.label].append(event.data)
                if sum(len(v) for v in got.values()) == len(messages):
                    break
    assert got["ordered"] == messages[0::2]  # order and type preserved
    assert sorted(map(repr, got["unordered"])) == sorted(map(repr, messages[1::2]))
    assert "from-server" in opened and server_channel.ready_state == "open"
    assert ordered.id is not None and ordered.id % 2 == 0  # DTLS client: even ids (RFC 8832 §6)


async def test_rtp_both_ways(rtc_server: RtcServer, nursery: trio.Nursery) -> None:
    client = new_client()
    video = client.add_transceiver("video", "sendrecv")
    client.create_data_channel("control")
    back = Received(want=300)
    client.on_rtp = back
    spc = await connect(rtc_server, nursery, client)
    server_got = Received()
    echo = spc.on_rtp
    assert echo is not None

    def spy(stream, packet, now):  # type: ignore[no-untyped-def]
        server_got(stream, packet, now)
        echo(stream, packet, now)

    spc.on_rtp = spy
    for seq in range(300):
        client.send_rtp(rtp(video.sender_ssrc, 65400 + seq))  # wraps past 65535
        if seq % 50 == 0:
            await trio.sleep(0.001)
    with trio.fail_after(10):
        await back.arrived.wait()
    assert {ssrc for ssrc, _ in server_got.packets} == {video.sender_ssrc}
    server_video = spc.transceivers[0]
    assert {ssrc for ssrc, _ in back.packets} == {server_video.sender_ssrc}
    assert sorted(seq for _, seq in back.packets) == sorted(
        (65400 + s) & 0xFFFF for s in range(300)
    )
    assert all(p[12:] == b"\x90\x80" + bytes(100) for p in back.payloads)
    assert spc.stats.srtp_rejected == 0 and client.stats.srtp_rejected == 0


async def test_connect_disconnect_cycles_leave_nothing(
    rtc_server: RtcServer, nursery: trio.Nursery
) -> None:
    await trio.sleep(0)
    baseline_tasks = len(live_tasks())
    assert rtc_server.endpoint.demux_entries() == 0
    for cycle in range(200):
        async with trio.open_nursery() as peers:
            client = new_client()
            channel = client.create_data_channel("c")
            client.add_transceiver("audio", "sendrecv")
            spc = await connect(rtc_server, peers, client)
            if cycle % 10 == 0:  # exercise the data path now and then
                await next_event(client, ev.DataChannelOpen)
                channel.send(f"ping {cycle}")
                message = await next_event(client, ev.DataChannelMessage)
                assert isinstance(message, ev.DataChannelMessage)
                assert message.data == f"ping {cycle}"
            # Alternate who ends it: the client (close_notify), the server (STOP/DELETE).
            (client if cycle % 2 else spc).close("bye")
            with trio.fail_after(10):
                await spc.wait_closed()
                await client.wait_closed()
        del client, spc, channel
    await trio.sleep(0)
    assert len(live_tasks()) == baseline_tasks
    assert rtc_server.endpoint.demux_entries() == 0
    assert live_srtp_contexts() == 0


async def test_address_change_keeps_media_flowing(
    rtc_server: RtcServer, nursery: trio.Nursery
) -> None:
    client = new_client()
    video = client.add_transceiver("video", "sendrecv")
    back = Received()
    client.on_rtp = back
    spc = await connect(rtc_server, nursery, client)
    offers_before = spc.jsep.current_local_description

    for seq in range(50):
        client.send_rtp(rtp(video.sender_ssrc, seq))
    with trio.fail_after(5):
        while len(back.packets) < 50:
            await trio.sleep(0.01)
    old_address = spc.remote_address
    assert old_address is not None
    assert rtc_server.endpoint.routes_from(old_address[0]) == 1  # what ICE-TCP parking reads
    new_local = await client.rebind()
    # The nominating check from the new address alone does not move a confirmed path
    # (docs/security.md, "Path changes"): it waits as the candidate ...
    with trio.fail_after(5):
        while spc.ice_agent.candidate != new_local:
            await trio.sleep(0.01)
    assert spc.remote_address == old_address != new_local
    # ... until authenticated SRTP arrives from there: the first packet moves the path, so
    # every echo, that packet's included, goes to the new address.
    for seq in range(50, 100):
        client.send_rtp(rtp(video.sender_ssrc, seq))
    with trio.fail_after(5):
        while spc.remote_address != new_local:
            await trio.sleep(0.01)
    with trio.fail_after(5):
        while len(back.packets) < 100:
            await trio.sleep(0.01)
    assert sorted(seq for _, seq in back.packets) == list(range(100))
    assert rtc_server.endpoint.routes_from(old_address[0]) == 2  # both addresses are routed
    # No renegotiation happened: same descriptions, stable, still connected.
    assert spc.jsep.current_local_description is offers_before
    assert spc.jsep.signaling_state == "stable" and spc.connected and client.connected


async def test_consent_timeout_closes_a_vanished_client(nursery: trio.Nursery) -> None:
    server = RtcServer.bind("127.0.0.1", 0, consent_timeout=1.5)
    nursery.start_soon(server.serve)
    client = new_client()
    client.create_data_channel("c")
    async with trio.open_nursery() as client_nursery:
        spc = await connect(server, client_nursery, client, server_nursery=nursery)
        # The client vanishes: no close_notify, no more consent checks.
        client.closing = True
        client_nursery.cancel_scope.cancel()
    with trio.fail_after(5):
        await spc.wait_closed()
    assert spc.close_reason == "consent timeout"
    assert server.endpoint.demux_entries() == 0
    server.close()


async def test_peer_that_never_connects_is_closed(nursery: trio.Nursery) -> None:
    server = RtcServer.bind("127.0.0.1", 0, consent_timeout=1.0)
    nursery.start_soon(server.serve)
    client = new_client()
    client.create_data_channel("c")
    spc = server.create_peer("ghost")
    spc.handle_offer(client.create_offer())  # the answer never reaches the client
    await nursery.start(spc.run)
    with trio.fail_after(5):
        await spc.wait_closed()
    assert spc.close_reason in ("consent timeout", "connect timeout")
    assert server.endpoint.demux_entries() == 0
    server.close()


async def test_fingerprint_mismatch_fails_the_connection(
    rtc_server: RtcServer, nursery: trio.Nursery
) -> None:
    client = new_client()
    client.create_data_channel("c")
    spc = rtc_server.create_peer("victim")
    answer = spc.handle_offer(client.create_offer())
    real = rtc_server.certificate.fingerprint("sha-256")
    forged = ("00" if not real.startswith("00") else "11") + real[2:]
    client.handle_answer(answer.replace(real, forged))
    await nursery.start(spc.run)
    await nursery.start(client.run)
    with trio.fail_after(10):
        await client.wait_closed()
        await spc.wait_closed()
    assert client.close_reason is not None and "dtls failure" in client.close_reason
    assert "fingerprint" in client.close_reason
    assert not spc.connected


async def test_sctp_abort_from_the_client_ends_the_server_peer(
    rtc_server: RtcServer, nursery: trio.Nursery
) -> None:
    client = new_client()
    client.create_data_channel("c")
    spc = await connect(rtc_server, nursery, client)
    await next_event(client, ev.DataChannelOpen)
    assert client._dc is not None
    client._dc.abort("testing")
    client._pump(trio.current_time())
    with trio.fail_after(5):
        await spc.wait_closed()
    assert spc.close_reason is not None and spc.close_reason.startswith("sctp abort")


async def test_server_shutdown_ends_every_peer_task(nursery: trio.Nursery) -> None:
    baseline = len(live_tasks())
    clients = []
    async with trio.open_nursery() as client_nursery:
        async with trio.open_nursery() as server_nursery:
            server = RtcServer.bind("127.0.0.1", 0)
            server_nursery.start_soon(server.serve)
            servers = []
            for _ in range(5):
                client = new_client()
                client.create_data_channel("c")
                clients.append(client)
                servers.append(
                    await connect(server, client_nursery, client, server_nursery=server_nursery)
                )
            server_nursery.cancel_scope.cancel()  # the process is shutting down
        server.close()
        assert all(s.close_reason == "cancelled" for s in servers)
        with trio.fail_after(5):
            for client in clients:
                await client.wait_closed()
    # The server told each client: SCTP ABORT (it had data channels), then close_notify.
    assert [c.close_reason for c in clients] == [
        "sctp abort: aborted by peer (cause 12: cancelled)"
    ] * 5
    assert len(live_tasks()) == baseline


async def test_renegotiation_as_offerer_and_answerer_with_recycling(
    rtc_server: RtcServer, nursery: trio.Nursery
) -> None:
    client = new_client()
    client.create_data_channel("c")
    spc = await connect(rtc_server, nursery, client)
    got = Received()
    client.on_rtp = got

    # The server offers a new sendonly video track (what the SFU does for subscribers).
    t1 = spc.add_transceiver("video", "sendonly")
    client.handle_answer  # noqa: B018 - the client answers below
    answer = client.handle_offer(spc.create_offer())
    spc.handle_answer(answer)
    assert t1.mid is not None and t1.sending
    for seq in range(20):
        spc.send_rtp(rtp(t1.sender_ssrc, seq))
    with trio.fail_after(5):
        while len(got.packets) < 20:
            await trio.sleep(0.01)
    assert {s for s, _ in got.packets} == {t1.sender_ssrc}
    sizes = []
    # Publishers come and go: stop, then add — the zero-port section gets recycled.
    for _ in range(10):
        spc.stop_transceiver(spc.transceivers[-1])
        spc.handle_answer(client.handle_offer(spc.create_offer()))
        spc.add_transceiver("video", "sendonly")
        offer = spc.create_offer()
        sizes.append(offer.count("\nm="))
        spc.handle_answer(client.handle_offer(offer))
    assert max(sizes) == min(sizes) == 2  # data + one video section, however many rounds

    # The client offers too (adding audio); the server answers.
    client.add_transceiver("audio", "sendrecv")
    client.handle_answer(spc.handle_offer(client.create_offer()))
    assert any(t.kind == "audio" and t.receiving for t in spc.transceivers)
    assert spc.connected and client.connected


async def test_malformed_offer_is_an_sdp_error(rtc_server: RtcServer) -> None:
    spc = rtc_server.create_peer("bad")
    with pytest.raises(SdpError):
        spc.handle_offer("v=0\r\nthis is not sdp\r\n")
    rtc_server.endpoint.unregister(spc)


# -- consent from media, and no path theft (docs/security.md, "Path changes") -------------------


async def test_media_alone_keeps_consent_and_silence_ends_it(nursery: trio.Nursery) -> None:
    """RFC 7675 puts consent on the sender of media: a client that sends no consent checks
    after connecting (libnice does this) but keeps sending authenticated SRTP — or only
    data-channel messages (DTLS) — is not closed; once it sends nothing it ends at the
    consent timeout."""
    server = RtcServer.bind("127.0.0.1", 0, consent_timeout=1.0)
    nursery.start_soon(server.serve)
    # consent_interval far beyond the test: the client never sends a check after connecting.
    media = new_client(consent_interval=10_000.0)
    video = media.add_transceiver("video", "sendrecv")
    chat = new_client(consent_interval=10_000.0)
    channel = chat.create_data_channel("c")
    async with trio.open_nursery() as clients:
        spc_media = await connect(server, clients, media, server_nursery=nursery)
        spc_chat = await connect(server, clients, chat, server_nursery=nursery)
        # Four consent timeouts of media / messages and nothing else.
        for seq in range(160):
            media.send_rtp(rtp(video.sender_ssrc, seq))
            if seq % 5 == 0 and channel.ready_state == "open":
                channel.send(f"m{seq}")
            await trio.sleep(0.025)
        assert not spc_media.closing, spc_media.close_reason
        assert not spc_chat.closing, spc_chat.close_reason
        assert spc_media.stats.rtp_in >= 150 and spc_chat.stats.dc_messages_in >= 25
        # Now both go quiet (no close_notify): the consent timeout ends them.
        media.closing = chat.closing = True
        clients.cancel_scope.cancel()
    with trio.fail_after(5):
        await spc_media.wait_closed()
        await spc_chat.wait_closed()
    assert spc_media.close_reason == spc_chat.close_reason == "consent timeout"
    server.close()


async def test_a_valid_check_from_a_live_peers_address_is_refused(
    rtc_server: RtcServer, nursery: trio.Nursery
) -> None:
    """An attacker with its own session sends a valid nominating check of that session from
    the victim's address (here: from the victim's own socket, which is what a spoofed source
    looks like to the server). The address stays the victim's; the attacker's session gets
    no route, no answer, and media keeps flowing to the victim."""
    from trio_sfu.proto import stun

    victim = new_client()
    video = victim.add_transceiver("video", "sendrecv")
    back = Received()
    victim.on_rtp = back
    spc = await connect(rtc_server, nursery, victim)
    for seq in range(20):
        victim.send_rtp(rtp(video.sender_ssrc, seq))
    with trio.fail_after(5):
        while len(back.packets) < 20:
            await trio.sleep(0.01)

    attacker = new_client()
    attacker.add_transceiver("video", "sendrecv")
    hijack = rtc_server.create_peer("attacker")
    attacker.handle_answer(hijack.handle_offer(attacker.create_offer()))
    await nursery.start(hijack.run)
    check = stun.binding_request(
        username=f"{hijack.ice_agent.local_ufrag}:{attacker.ice_agent.local_ufrag}",
        password=hijack.ice_agent.local_pwd,
        priority=stun.ice_priority(),
        tie_breaker=1,
        transaction_id=random.randbytes(12),
        use_candidate=True,
    )
    server_addr = rtc_server.endpoint.local_address
    taken = rtc_server.endpoint.stats.stun_address_taken
    for _ in range(10):
        victim._sock.sendto(check, server_addr)
    with trio.fail_after(5):
        while rtc_server.endpoint.stats.stun_address_taken < taken + 10:
            await trio.sleep(0.01)
    assert victim.local_address not in (hijack.remote_address, hijack.ice_agent.selected)
    assert hijack.ice_agent.candidate != victim.local_address
    assert spc.remote_address == victim.local_address
    for seq in range(20, 60):
        victim.send_rtp(rtp(video.sender_ssrc, seq))
    with trio.fail_after(5):
        while len(back.packets) < 60:
            await trio.sleep(0.01)
    # The same check from the attacker's own address is accepted: the rule is about the
    # address's owner, not the credentials.
    rejected = rtc_server.endpoint.stats.stun_rejected
    attacker._sock.sendto(check, server_addr)
    with trio.fail_after(5):
        while hijack.remote_address != attacker.local_address:
            await trio.sleep(0.01)
    assert rtc_server.endpoint.stats.stun_rejected == rejected
    hijack.close()


async def test_transport_rtt_comes_from_the_sctp_association(
    rtc_server: RtcServer, nursery: trio.Nursery
) -> None:
    """The publisher leg's NACK timing uses the SCTP SRTT of the same transport (RFC 9260
    §6.3.1): measured once data has been acknowledged, None before and without channels."""
    client = new_client()
    channel = client.create_data_channel("c")
    spc = await connect(rtc_server, nursery, client)
    await next_event(client, ev.DataChannelOpen)
    for i in range(5):
        channel.send(f"m{i}")
        await next_event(client, ev.DataChannelMessage)  # echoed: both directions acked
    with trio.fail_after(5):
        while spc.transport_rtt is None:
            await trio.sleep(0.01)
    assert 0 <= spc.transport_rtt < 1.0  # loopback
    bare = new_client()
    bare.add_transceiver("video", "sendrecv")
    assert (await connect(rtc_server, nursery, bare)).transport_rtt is None
