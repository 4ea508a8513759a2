"""Media path theft by source spoofing (issue 14, item 3), against the live SFU.

An attacker opens a session of its own (a half-open ``POST /pub``: it knows that session's ICE
credentials from the answer) and sends valid, nominating checks of that session from a raw
socket (``IP_HDRINCL``) with the *victim publisher's* source address and port, ten a second.
Before the rule in docs/security.md ("Path changes") the server handed the victim's address to
the attacker's session and the victim's subscriber dropped to 0 fps. Now the address stays the
victim's: the subscriber keeps receiving every frame, the forged checks are counted and never
answered, and the attacker's session gets no route.
"""

from __future__ import annotations

import errno
import random
import re
import socket
import struct

import pytest
import trio

from tests.rtc_helpers import new_client
from tests.sfu_helpers import SfuEnv, start_sfu, wait_for
from trio_sfu.proto import stun

FRAMES = 100


def spoofed_udp(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> bytes:
    """An IPv4 + UDP datagram with any source (RFC 791, RFC 768). The kernel fills the IP
    checksum, total length and id for IP_HDRINCL; a zero UDP checksum means "none"."""
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 0, 0, 0x4000, 64, socket.IPPROTO_UDP, 0,
        socket.inet_aton(src[0]), socket.inet_aton(dst[0]),
    )
    udp = struct.pack("!HHHH", src[1], dst[1], 8 + len(payload), 0)
    return header + udp + payload


def raw_socket() -> socket.socket:
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    except PermissionError as error:
        pytest.fail(f"a raw socket needs root or CAP_NET_RAW ({error})")
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    return sock


async def test_spoofed_nominating_checks_of_another_session_do_not_steal_the_path(
    nursery: trio.Nursery,
) -> None:
    env: SfuEnv = await start_sfu(nursery)
    bob = await env.subscriber("r", "bob-1")
    alice = await env.publisher("r", "alice-1", audio=False)
    await wait_for(lambda: env.forwarding("r", "bob-1", "alice-1"))
    victim_pc = env.sfu.rooms["r"].publishers["alice-1"].pc
    victim_addr = victim_pc.remote_address
    assert victim_addr == alice.pc.local_address

    # The attacker's own session: an offer POSTed, the answer's credentials, never connected.
    mallory = new_client()
    mallory.add_transceiver("video", "sendonly")
    answer = await env.sfu.publish("r", "mallory-1", mallory.create_offer())
    ufrag = re.search(r"a=ice-ufrag:(\S+)", answer)
    pwd = re.search(r"a=ice-pwd:(\S+)", answer)
    assert ufrag and pwd
    server_addr = env.server.endpoint.local_address
    raw = raw_socket()
    taken_before = env.server.endpoint.stats.stun_address_taken

    async def attack() -> None:
        for _ in range(30):  # 10/s for 3 s, while the victim streams
            check = stun.binding_request(
                username=f"{ufrag.group(1)}:{mallory.ice_agent.local_ufrag}",
                password=pwd.group(1),
                priority=stun.ice_priority(),
                tie_breaker=random.getrandbits(64),
                transaction_id=random.randbytes(12),
                use_candidate=True,
            )
            try:
                raw.sendto(spoofed_udp(victim_addr, server_addr, check), (server_addr[0], 0))
            except OSError as error:  # pragma: no cover - a kernel refusing IP_HDRINCL
                assert error.errno != errno.EPERM, error
                raise
            await trio.sleep(0.1)

    start = bob.packets["alice-1"]
    async with trio.open_nursery() as attackers:
        attackers.start_soon(attack)
        for i in range(FRAMES):
            alice.send_frame(keyframe=i == 0)
            await trio.sleep(0.03)
    raw.close()
    await wait_for(lambda: bob.packets["alice-1"] >= start + FRAMES)
    # Every spoofed check reached the server and was refused, unanswered.
    assert env.server.endpoint.stats.stun_address_taken - taken_before == 30
    assert victim_pc.remote_address == victim_addr
    mallory_pc = env.sfu.rooms["r"].publishers.get("mallory-1")
    if mallory_pc is not None:
        assert mallory_pc.pc.remote_address != victim_addr
    mallory.close()
