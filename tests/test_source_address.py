"""Replies and media leave from the local address the peer's checks arrived on (issue 8, item 4).

With the default ``--udp-host 0.0.0.0`` on a host with several addresses the kernel picks a
reply's source by route, not by where the peer sent to, and browsers drop such answers
(Firefox: ``Peer address mismatch``). Two local addresses are easy to have without a
namespace for IPv4 (all of 127.0.0.0/8 is local); IPv6 gets two ULA addresses on ``lo``
inside a fresh network namespace (``tests/netns.py``), where this module is its own scenario
runner. Our client is strict in the same way as Firefox: RFC 8445 §7.2.5.2.1 fails a check
whose answer comes from another address, so connecting at all proves the source.
"""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys

import trio

from tests.netns import REPO, netns_argv, require_netns
from tests.rtc_helpers import Received, connect, new_client, rtp
from trio_sfu.proto import stun
from trio_sfu.rtc.server import RtcServer

V6_A, V6_B = "fd00:5f0::a", "fd00:5f0::b"


async def connect_and_probe(
    server_host: str, advertised: str, client_host: str
) -> dict[str, object]:
    """A server bound to the wildcard ``server_host`` advertising ``advertised``; our client
    on ``client_host`` connects and streams; a raw socket's check is answered from
    ``advertised``. Returns what was seen."""
    server = RtcServer.bind(server_host, 0, public_addresses=[advertised])
    port = server.endpoint.local_address[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve)
        client = new_client(host=client_host)
        video = client.add_transceiver("video", "sendrecv")
        back = Received()
        client.on_rtp = back
        spc = await connect(server, nursery, client)
        for seq in range(30):
            client.send_rtp(rtp(video.sender_ssrc, seq))
        with trio.fail_after(5):
            while len(back.packets) < 30:
                await trio.sleep(0.01)
        # Lower level: a valid check from another socket of the client's address, answered
        # from the address it was sent to (what the response's source is, read directly).
        family = socket.AF_INET6 if ":" in client_host else socket.AF_INET
        raw = socket.socket(family, socket.SOCK_DGRAM)
        raw.bind((client_host, 0))
        raw.settimeout(5)
        check = stun.binding_request(
            username=f"{spc.ice_agent.local_ufrag}:{client.ice_agent.local_ufrag}",
            password=spc.ice_agent.local_pwd,
            priority=stun.ice_priority(),
            tie_breaker=1,
            transaction_id=random.randbytes(12),
        )
        raw.sendto(check, (advertised, port))
        data, source = await trio.to_thread.run_sync(raw.recvfrom, 2048)
        raw.close()
        answer = stun.parse(data)
        nursery.cancel_scope.cancel()
    server.close()
    return {
        "echoed": len(back.packets),
        "answer_class": answer.message_class.name,
        "source": [source[0], source[1]],
        "port": port,
        "server_sees": list(spc.remote_address or ()),
    }


async def test_ipv4_replies_and_media_from_the_address_checks_arrived_on() -> None:
    # 127.0.0.2 is local but not what the kernel picks to reach 127.0.0.1.
    seen = await connect_and_probe("0.0.0.0", "127.0.0.2", "127.0.0.1")
    assert seen["echoed"] == 30
    assert seen["answer_class"] == "RESPONSE"
    assert seen["source"] == ["127.0.0.2", seen["port"]]


async def test_a_server_bound_to_one_address_uses_plain_sends() -> None:
    server = RtcServer.bind("127.0.0.1", 0)
    try:
        assert not server.endpoint._pktinfo
    finally:
        server.close()


def test_ipv6_replies_and_media_from_the_address_checks_arrived_on() -> None:
    require_netns()
    argv = netns_argv([sys.executable, "-m", "tests.test_source_address", "v6"])
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["echoed"] == 30
    assert seen["answer_class"] == "RESPONSE"
    assert seen["source"][0] == V6_B and seen["source"][1] == seen["port"]


def _v6_scenario() -> None:
    """Inside the namespace: two ULA addresses on lo, then the same probe over IPv6. (A new
    namespace may start with IPv6 disabled, as this host's default says: enable it there.)"""
    subprocess.run(
        ["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0",
         "net.ipv6.conf.default.disable_ipv6=0", "net.ipv6.conf.lo.disable_ipv6=0"],
        check=True,
    )
    for address in (V6_A, V6_B):
        subprocess.run(
            ["ip", "-6", "addr", "add", f"{address}/128", "dev", "lo", "nodad"], check=True
        )
    seen = trio.run(connect_and_probe, "::", V6_B, V6_A)
    print(json.dumps(seen))


if __name__ == "__main__":
    if sys.argv[1:] == ["v6"]:
        _v6_scenario()
