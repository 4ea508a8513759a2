"""ICE restart signalled outside SDP (the WHIP/WHEP PATCH path), our client against our server
over loopback: make before break, media moves to the new path, a failed restart keeps the old
session alive past the consent timeout.

Then the same through HTTP: a WHIP publisher (our client) restarts with a PATCH fragment.
"""

from __future__ import annotations

import functools
from pathlib import Path

import httpx
import trio

from tests.rtc_helpers import Received, client_certificate, connect, new_client, rtp
from tests.test_http import http_server
from tests.test_whip_http import WhipPeer, patch, pump, restart_frag
from trio_sfu.client import ClientPeerConnection
from trio_sfu.client.sfu import SubscriberClient
from trio_sfu.http import create_app
from trio_sfu.proto.sdp.frag import parse_frag
from trio_sfu.rtc.server import RtcServer, ServerPeerConnection
from trio_sfu.sfu.service import Sfu


async def echo_until(client: ClientPeerConnection, ssrc: int, back: Received, seqs: range) -> None:
    """Send ``seqs`` and wait until each came back (the server echoes)."""
    want = len(back.packets) + len(seqs)
    for seq in seqs:
        client.send_rtp(rtp(ssrc, seq))
        if seq % 20 == 0:
            await trio.sleep(0.002)
    with trio.fail_after(5):
        while len(back.packets) < want:
            await trio.sleep(0.01)


async def connected_pair(
    server: RtcServer, nursery: trio.Nursery, **client_options: object
) -> tuple[ClientPeerConnection, ServerPeerConnection, int, Received]:
    client = new_client(**client_options)
    video = client.add_transceiver("video", "sendrecv")
    back = Received()
    client.on_rtp = back
    spc = await connect(server, nursery, client)
    await echo_until(client, video.sender_ssrc, back, range(0, 50))
    return client, spc, video.sender_ssrc, back


async def test_restart_moves_media_to_a_new_path(
    rtc_server: RtcServer, nursery: trio.Nursery
) -> None:
    client, spc, ssrc, back = await connected_pair(rtc_server, nursery)
    old_client_addr, old_server_creds = spc.remote_address, spc.ice_agent.local_ufrags
    old_remote = (client.ice_agent.remote_ufrag, client.ice_agent.remote_pwd)

    ufrag, pwd = client.begin_ice_restart(rebind=True)
    server_ufrag, server_pwd = spc.restart_ice(ufrag, pwd)
    assert (server_ufrag, server_pwd) != old_remote
    # Make before break: both generations route while the restart is under way ...
    assert set(spc.ice_agent.local_ufrags) == {server_ufrag, *old_server_creds}
    await echo_until(client, ssrc, back, range(50, 80))  # ... and media still flows, old path
    assert spc.remote_address == old_client_addr

    assert await client.complete_ice_restart(server_ufrag, server_pwd)
    new_addr = client.local_address
    assert new_addr != old_client_addr
    # The new pair's check alone does not move a confirmed path (docs/security.md, "Path
    # changes"); the old generation is gone once the new one was used (RFC 8445 §9).
    assert spc.ice_agent.candidate == new_addr and spc.remote_address == old_client_addr
    assert spc.ice_agent.local_ufrags == (server_ufrag,)
    assert (client.ice_agent.local_ufrag, client.ice_agent.remote_ufrag) == (ufrag, server_ufrag)
    # Media resumes on the new path, both ways: the first authenticated packet from the new
    # address moves the path, and the echoes reach the new socket.
    await echo_until(client, ssrc, back, range(80, 200))
    assert spc.remote_address == new_addr
    assert sorted(seq for _, seq in back.packets) == list(range(200))
    # Both sides' JSEP state knows the new credentials: no spurious restart later.
    assert spc.jsep.transport.ice_ufrag == server_ufrag
    assert spc.jsep.remote_ice_ufrag == ufrag
    assert client.jsep.transport.ice_ufrag == ufrag
    assert client.jsep.remote_ice_ufrag == server_ufrag
    assert spc.connected and client.connected
    assert spc.stats.srtp_rejected == 0 and client.stats.srtp_rejected == 0


async def test_restart_on_the_same_socket_and_repeated(
    rtc_server: RtcServer, nursery: trio.Nursery
) -> None:
    async with trio.open_nursery() as peers:
        client, spc, ssrc, back = await connected_pair(rtc_server, peers)
        seq = 50
        seen_ufrags = {spc.ice_agent.local_ufrag}
        for _ in range(3):
            ufrag, pwd = client.begin_ice_restart()
            server_ufrag, server_pwd = spc.restart_ice(ufrag, pwd)
            assert server_ufrag not in seen_ufrags
            seen_ufrags.add(server_ufrag)
            assert await client.complete_ice_restart(server_ufrag, server_pwd)
            assert spc.ice_agent.local_ufrags == (server_ufrag,)
            await echo_until(client, ssrc, back, range(seq, seq + 40))
            seq += 40
        assert spc.remote_address == client.local_address
        client.close()
        with trio.fail_after(10):
            await spc.wait_closed()
    # Every generation's route went with the peer.
    assert rtc_server.endpoint.demux_entries() == 0


async def test_failed_restart_keeps_the_old_session(nursery: trio.Nursery) -> None:
    """The server restarted but the client never gets the new pair working (here: a wrong
    password): the old credentials keep consent and media going well past the consent
    timeout, and the client's old pair is untouched."""
    server = RtcServer.bind("127.0.0.1", 0, consent_timeout=2.0)
    nursery.start_soon(server.serve)
    try:
        client, spc, ssrc, back = await connected_pair(server, nursery, consent_interval=0.4)
        old_addr = spc.remote_address
        ufrag, pwd = client.begin_ice_restart(rebind=True)
        server_ufrag, _server_pwd = spc.restart_ice(ufrag, pwd)
        ok = await client.complete_ice_restart(server_ufrag, "x" * 32, timeout=1.5)
        assert not ok
        # Longer than the consent timeout: only the old credentials keep the session alive.
        with trio.move_on_after(3.0):
            await spc.wait_closed()
        assert not spc.closing and not client.closing, spc.close_reason
        assert spc.remote_address == old_addr == client.local_address
        await echo_until(client, ssrc, back, range(50, 120))
        # A later restart still works.
        ufrag, pwd = client.begin_ice_restart()
        server_ufrag, server_pwd = spc.restart_ice(ufrag, pwd)
        assert await client.complete_ice_restart(server_ufrag, server_pwd)
        await echo_until(client, ssrc, back, range(120, 150))
    finally:
        server.close()


async def test_abandoned_restart_changes_nothing(
    rtc_server: RtcServer, nursery: trio.Nursery
) -> None:
    """The signaling failed (the server refused the PATCH): the client drops the restart."""
    client, spc, ssrc, back = await connected_pair(rtc_server, nursery)
    before = (client.ice_agent, client.local_address, spc.ice_agent.local_ufrags)
    client.begin_ice_restart(rebind=True)
    client.abandon_ice_restart()
    assert (client.ice_agent, client.local_address, spc.ice_agent.local_ufrags) == before
    await echo_until(client, ssrc, back, range(50, 100))


# -- through HTTP: a WHIP publisher (our client) restarts with a PATCH fragment --------------------


async def test_whip_patch_restart_moves_media_and_a_refused_one_changes_nothing(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    rtc = RtcServer.bind("127.0.0.1", 0, consent_timeout=30.0)
    nursery.start_soon(rtc.serve)
    sfu = Sfu(rtc)
    await nursery.start(sfu.run)
    try:
        async with http_server(create_app(sfu, site_dir=tmp_path)) as url, httpx.AsyncClient(
            base_url=url, timeout=10
        ) as http:
            sub = SubscriberClient("bob-x9", certificate=client_certificate())
            await nursery.start(sub.connect, functools.partial(sfu.subscribe, "r1", "bob-x9"))
            await sub.wait_open()
            publisher = WhipPeer("whip")
            assert (await publisher.post(http, "/whip/r1")).status_code == 201
            await nursery.start(publisher.pc.run)
            publisher_id = (await sub.expect("PUB_JOIN whip-")).split()[1]
            await pump(publisher, lambda: sub.packets[publisher_id] >= 20)
            server_pc = sfu.member("pub", "r1", publisher_id).pc
            old_addr = server_pc.remote_address
            # The POST's ETag names the SFU's current ICE session: trickle with it is accepted.
            ufrag = publisher.pc.ice_agent.local_ufrag
            r = await patch(http, publisher.url, f"a=ice-ufrag:{ufrag}\r\n", publisher.etag)
            assert r.status_code == 204, r.text

            # A refused restart (a stale ETag: 412) is dropped by the client; nothing changes.
            ufrag, pwd = publisher.pc.begin_ice_restart(rebind=True)
            r = await patch(http, publisher.url, restart_frag(ufrag, pwd), '"stale"')
            assert r.status_code == 412
            publisher.pc.abandon_ice_restart()
            count = sub.packets[publisher_id]
            await pump(publisher, lambda: sub.packets[publisher_id] >= count + 20)
            assert server_pc.remote_address == old_addr

            # RFC 9725 restart: new credentials with If-Match: *, the server's come back.
            ufrag, pwd = publisher.pc.begin_ice_restart(rebind=True)
            r = await patch(http, publisher.url, restart_frag(ufrag, pwd), "*")
            assert r.status_code == 200, r.text
            frag = parse_frag(r.text)
            assert frag.ice_ufrag and frag.ice_pwd
            assert r.headers["etag"] != publisher.etag
            assert await publisher.pc.complete_ice_restart(
                frag.ice_ufrag, frag.ice_pwd, [c for _, c in frag.candidates]
            )
            new_addr = publisher.pc.local_address
            assert new_addr != old_addr
            # Media resumes on the new path (its first packet moves the server's pair there):
            # the subscriber keeps receiving.
            count = sub.packets[publisher_id]
            await pump(publisher, lambda: sub.packets[publisher_id] >= count + 40)
            assert server_pc.remote_address == new_addr
            # The new ETag guards trickle now.
            r = await patch(http, publisher.url, f"a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\n",
                            r.headers["etag"])
            assert r.status_code == 204
            assert (await http.delete(publisher.url)).status_code == 200
            await sub.expect(f"PUB_LEFT {publisher_id}")
            sub.stop()
    finally:
        rtc.close()
