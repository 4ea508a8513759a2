"""ICE: a controlling client against the lite server, in memory with a fake clock, plus
interop with aioice's own agent over real UDP sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import itertools
import random
import socket
from collections.abc import Callable, Mapping
from typing import cast

import pytest
from aioice import Candidate
from aioice import ice as aioice_ice
from aioice import stun as aioice_stun

from trio_sfu.proto import stun
from trio_sfu.proto.ice import (
    TCP_TAKEOVER_SILENCE,
    Connected,
    ConsentLost,
    Failed,
    IceControllingAgent,
    IceEvent,
    IceLiteAgent,
    IceReply,
    IceState,
)

SERVER = ("192.0.2.1", 3478)
CLIENT = ("198.51.100.7", 50000)
SERVER_UFRAG, SERVER_PWD = "srvF", "server-password-0123456789"
CLIENT_UFRAG, CLIENT_PWD = "cliF", "client-password-0123456789"

Address = tuple[str, int]


class Net:
    """One client, one UDP port on the server with a ufrag-keyed demux, a fake clock.

    ``drop_up``/``drop_down`` decide per datagram (given the time) whether it is lost.
    """

    def __init__(self, *, now: float = 0.0, consent_interval: float = 5.0) -> None:
        self.now = now
        self.lite = IceLiteAgent(SERVER_UFRAG, SERVER_PWD, now=now)
        self.lite.set_remote_credentials(CLIENT_UFRAG, CLIENT_PWD)
        self.client = IceControllingAgent(
            CLIENT_UFRAG, CLIENT_PWD, rng=random.Random(7), consent_interval=consent_interval
        )
        self.client.set_remote(SERVER_UFRAG, SERVER_PWD, [SERVER])
        self.client_addr = CLIENT
        self.agents = {SERVER_UFRAG: self.lite}
        self.drop_up: Callable[[bytes, float], bool] = lambda data, now: False
        self.drop_down: Callable[[bytes, float], bool] = lambda data, now: False
        self.sent_up: list[tuple[float, bytes]] = []  # every check the client sent
        self.replies: list[tuple[float, Address, IceReply]] = []
        self.events: list[tuple[float, IceEvent]] = []

    def demux(self, data: bytes, addr: Address) -> IceReply | None:
        """What the lead's UDP endpoint does: parse once, find the agent by local ufrag."""
        msg = stun.parse(data)
        local, _ = stun.username_parts(msg)
        agent = self.agents.get(local)
        if agent is None:
            return None
        return agent.handle_request(msg, data, addr, self.now)

    def flush(self) -> None:
        for data, dest in self.client.datagrams_to_send(self.now):
            assert dest == SERVER
            self.sent_up.append((self.now, data))
            if self.drop_up(data, self.now):
                continue
            reply = self.demux(data, self.client_addr)
            assert reply is not None
            self.replies.append((self.now, self.client_addr, reply))
            if reply.response is not None and not self.drop_down(reply.response, self.now):
                self.client.receive(stun.parse(reply.response), reply.response, SERVER, self.now)
        while (event := self.client.next_event()) is not None:
            self.events.append((self.now, event))

    def run_until(self, end: float) -> None:
        self.flush()
        while True:
            timer = self.client.get_timer()
            if timer is None or timer > end:
                break
            self.now = max(self.now, timer)
            self.client.handle_timer(self.now)
            self.flush()
        self.now = end

    def start(self) -> None:
        self.client.start(self.now)
        self.flush()


def request(
    *,
    username: str = f"{SERVER_UFRAG}:{CLIENT_UFRAG}",
    password: str = SERVER_PWD,
    attrs: Mapping[str, object] | None = None,
    fingerprint: bool = True,
) -> bytes:
    """A hand-made check, so each rule can be broken on its own."""
    msg = aioice_stun.Message(aioice_stun.Method.BINDING, aioice_stun.Class.REQUEST)
    if username:
        msg.attributes["USERNAME"] = username
    msg.attributes.update(
        attrs if attrs is not None else {"PRIORITY": 1, "ICE-CONTROLLING": 1, "USE-CANDIDATE": None}
    )
    if password:
        msg.add_message_integrity(password.encode())  # adds FINGERPRINT too
    else:
        msg.add_fingerprint()
    if not fingerprint:
        msg.attributes.pop("FINGERPRINT", None)
    return bytes(msg)


def lite_handle(
    agent: IceLiteAgent, data: bytes, addr: Address = CLIENT, now: float = 1.0
) -> IceReply:
    return agent.handle_request(stun.parse(data), data, addr, now)


def new_lite(now: float = 0.0) -> IceLiteAgent:
    agent = IceLiteAgent(SERVER_UFRAG, SERVER_PWD, now=now)
    agent.set_remote_credentials(CLIENT_UFRAG, CLIENT_PWD)
    return agent


# -- the happy path ----------------------------------------------------------------------


def test_connect() -> None:
    net = Net()
    net.start()
    assert net.events == [(0.0, Connected(SERVER))]
    assert net.client.state is IceState.CONNECTED
    assert net.client.selected == SERVER
    assert net.client.mapped_address == CLIENT  # XOR-MAPPED-ADDRESS read back
    [(_, addr, reply)] = net.replies
    assert addr == CLIENT
    assert reply.valid and reply.nominated and reply.reason == ""
    assert net.lite.selected == CLIENT
    # The check itself: what a lite server needs, per RFC 8445 §7.1.1.
    msg = stun.parse(net.sent_up[0][1])
    assert msg.attributes["USERNAME"] == f"{SERVER_UFRAG}:{CLIENT_UFRAG}"
    assert msg.attributes["ICE-CONTROLLING"] == net.client.tie_breaker
    assert "USE-CANDIDATE" in msg.attributes and "PRIORITY" in msg.attributes
    assert stun.check_integrity(msg, SERVER_PWD)
    assert net.client.get_timer() is not None  # consent checks are scheduled


def test_candidates_are_paced_and_the_first_working_pair_wins() -> None:
    net = Net()
    dead = ("192.0.2.99", 9)
    net.client.set_remote(SERVER_UFRAG, SERVER_PWD, [dead, SERVER])
    sent: list[tuple[float, Address]] = []

    # A dead first candidate: its datagrams go nowhere.
    def flush() -> None:
        for data, dest in net.client.datagrams_to_send(net.now):
            sent.append((net.now, dest))
            if dest == SERVER:
                reply = net.demux(data, CLIENT)
                assert reply is not None and reply.response is not None
                net.client.receive(stun.parse(reply.response), reply.response, SERVER, net.now)

    net.flush = flush  # type: ignore[method-assign]
    net.client.start(0.0)
    net.flush()
    net.run_until(1.0)
    assert sent[:2] == [(0.0, dead), (0.05, SERVER)]  # RFC 8445 Ta = 50 ms
    assert net.client.next_event() == Connected(SERVER)
    assert len(sent) == 2  # the dead pair's retransmissions stopped once connected


# -- retransmission ------------------------------------------------------------------------


def test_retransmission_under_loss() -> None:
    net = Net()
    lost = 2
    net.drop_up = lambda data, now: len([t for t, _ in net.sent_up]) <= lost
    net.start()
    net.run_until(5.0)
    # RFC 8489 §6.2.1: RTO 500 ms, doubling; the third transmission gets through.
    assert [t for t, _ in net.sent_up[:3]] == [0.0, 0.5, 1.5]
    # Same transaction each time (a retransmission, not a new check).
    assert len({data for _, data in net.sent_up[:3]}) == 1
    assert net.events[0] == (1.5, Connected(SERVER))


def test_retransmission_schedule_and_failure() -> None:
    net = Net()
    net.drop_up = lambda data, now: True
    net.start()
    net.run_until(60.0)
    # Rc = 7 transmissions, then Rm = 16 RTOs: fails at 39.5 s.
    assert [t for t, _ in net.sent_up] == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert net.events == [(39.5, Failed("all candidate pairs failed"))]
    assert net.client.state is IceState.FAILED
    assert net.client.get_timer() is None


def test_response_with_bad_integrity_is_ignored_and_retransmission_continues() -> None:
    net = Net()
    answered = 0

    def forge(data: bytes, now: float) -> bool:
        nonlocal answered
        answered += 1
        if answered == 1:  # replace the first answer by one signed with the wrong key
            msg = stun.parse(data)
            fake = stun.binding_success(msg, ("203.0.113.66", 1), "not-the-password")
            net.client.receive(stun.parse(fake), fake, SERVER, now)
            return True
        return False

    net.drop_down = forge
    net.start()
    assert net.events == []
    net.run_until(1.0)
    assert net.events == [(0.5, Connected(SERVER))]
    assert net.client.mapped_address == CLIENT


def test_response_from_another_address_fails_the_pair() -> None:
    net = Net()
    net.client.start(0.0)
    [(data, _)] = net.client.datagrams_to_send(0.0)
    reply = net.demux(data, CLIENT)
    assert reply is not None and reply.response is not None
    # RFC 8445 §7.2.5.2.1: the response must come from where the request went.
    net.client.receive(stun.parse(reply.response), reply.response, ("192.0.2.2", 3478), 0.01)
    assert net.client.next_event() == Failed("all candidate pairs failed")


# -- consent -------------------------------------------------------------------------------


def test_consent_refresh_keeps_both_sides_alive() -> None:
    net = Net()
    net.start()
    for t in range(10, 301, 10):
        net.run_until(float(t))
        assert not net.lite.consent_expired(net.now)
        assert net.lite.consent_expires_at > net.now + 20
    assert [e for _, e in net.events] == [Connected(SERVER)]
    times = [t for t, _ in net.sent_up]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # RFC 7675 §5.1: every 5 s randomised to [4, 6] s, never more often than 4 s.
    assert len(gaps) >= 49 and all(4.0 <= g <= 6.0 for g in gaps)
    assert max(gaps) - min(gaps) > 0.5  # actually randomised
    assert len({data[8:20] for _, data in net.sent_up}) == len(net.sent_up)  # fresh ids


def test_consent_expires_on_both_sides_when_the_link_dies() -> None:
    net = Net()
    net.start()
    net.run_until(20.0)
    net.drop_up = lambda data, now: True  # the path breaks at t = 20
    last_answered = max(t for t, _, r in net.replies if r.valid)
    net.run_until(100.0)
    lost = [(t, e) for t, e in net.events if isinstance(e, ConsentLost)]
    # RFC 7675 §5.1: 30 s after the last answered check was *sent*.
    assert [e for _, e in lost] == [ConsentLost(SERVER)]
    assert lost[0][0] == pytest.approx(last_answered + 30.0)
    assert net.client.state is IceState.CONSENT_LOST
    assert net.client.get_timer() is None and net.client.datagrams_to_send(net.now) == []
    # The lite side: consent ran out 30 s after the last valid check arrived.
    assert net.lite.consent_expires_at == pytest.approx(last_answered + 30.0)
    assert not net.lite.consent_expired(last_answered + 29.9)
    assert net.lite.consent_expired(last_answered + 30.0)


def test_lite_consent_is_granted_for_the_first_timeout_only() -> None:
    agent = IceLiteAgent(SERVER_UFRAG, SERVER_PWD, consent_timeout=30.0, now=100.0)
    assert agent.consent_expires_at == 130.0
    assert not agent.consent_expired(129.9) and agent.consent_expired(130.0)


def test_checks_from_another_address_do_not_refresh_consent_of_the_selected_pair() -> None:
    agent = new_lite()
    assert lite_handle(agent, request(), CLIENT, now=1.0).nominated
    other = ("198.51.100.8", 4000)
    reply = lite_handle(agent, request(attrs={"PRIORITY": 1, "ICE-CONTROLLING": 1}), other, 20.0)
    assert reply.valid and not reply.nominated
    assert agent.consent_expires_at == 31.0 and agent.selected == CLIENT


# -- address change --------------------------------------------------------------------------


def test_client_address_change_moves_the_lite_pair() -> None:
    net = Net()
    net.start()
    net.run_until(12.0)
    new_addr = ("203.0.113.50", 61000)
    net.client_addr = new_addr  # e.g. Wi-Fi to cellular: same agent, new source address
    net.client.refresh(net.now)
    net.flush()
    t, addr, reply = net.replies[-1]
    assert (t, addr) == (12.0, new_addr)
    assert reply.valid and reply.nominated
    assert net.lite.selected == new_addr
    assert stun.parse(reply.response or b"").attributes["XOR-MAPPED-ADDRESS"] == new_addr
    assert net.client.mapped_address == new_addr
    assert net.lite.consent_expires_at == 42.0


# -- strict validation on the lite side -------------------------------------------------------


def test_valid_request_and_response_format() -> None:
    agent = new_lite()
    data = request()
    reply = lite_handle(agent, data, CLIENT, now=3.0)
    assert reply.valid and reply.nominated
    response = stun.parse(reply.response or b"")
    assert response.message_class == stun.Class.RESPONSE
    assert response.transaction_id == stun.parse(data).transaction_id
    assert response.attributes["XOR-MAPPED-ADDRESS"] == CLIENT
    assert stun.check_integrity(response, SERVER_PWD)
    assert stun.check_fingerprint(reply.response or b"")
    assert agent.consent_expires_at == 33.0


def test_bad_integrity_gets_unsigned_401() -> None:
    agent = new_lite()
    reply = lite_handle(agent, request(password="wrong-password-0123456789"))
    assert not reply.valid and reply.reason == "bad MESSAGE-INTEGRITY"
    response = stun.parse(reply.response or b"")
    assert response.error_code == 401
    assert "MESSAGE-INTEGRITY" not in response.attributes
    assert agent.selected is None and agent.consent_expires_at == 30.0


def test_missing_fingerprint_is_dropped() -> None:
    agent = new_lite()
    data = request(fingerprint=False)
    assert not stun.check_fingerprint(data)
    assert lite_handle(agent, data) == IceReply(None, False, False, "missing or bad FINGERPRINT")


@pytest.mark.parametrize(
    ("username", "reason"),
    [
        (f"other:{CLIENT_UFRAG}", "wrong USERNAME"),  # not our local ufrag
        (f"{SERVER_UFRAG}:other", "wrong USERNAME"),  # remote part checked once known
        (SERVER_UFRAG, "wrong USERNAME"),
    ],
)
def test_wrong_username_gets_401(username: str, reason: str) -> None:
    agent = new_lite()
    reply = lite_handle(agent, request(username=username))
    assert (reply.valid, reply.reason) == (False, reason)
    assert stun.parse(reply.response or b"").error_code == 401


def test_remote_part_not_checked_before_the_remote_ufrag_is_known() -> None:
    agent = IceLiteAgent(SERVER_UFRAG, SERVER_PWD, now=0.0)
    assert lite_handle(agent, request(username=f"{SERVER_UFRAG}:anything")).valid


def test_unknown_ufrag_is_dropped_by_the_demux() -> None:
    net = Net()
    assert net.demux(request(username=f"nobody:{CLIENT_UFRAG}"), CLIENT) is None


def test_missing_credentials_get_400() -> None:
    agent = new_lite()
    for data in (request(username=""), request(password="")):
        reply = lite_handle(agent, data)
        assert not reply.valid and reply.reason == "no credentials"
        response = stun.parse(reply.response or b"")
        assert response.error_code == 400 and "MESSAGE-INTEGRITY" not in response.attributes


@pytest.mark.parametrize(
    "attrs",
    [{"ICE-CONTROLLING": 1}, {"PRIORITY": 1}, {"PRIORITY": 1, "USE-CANDIDATE": None}],
)
def test_missing_priority_or_role_gets_signed_400(attrs: dict[str, object]) -> None:
    agent = new_lite()
    reply = lite_handle(agent, request(attrs=attrs))
    assert not reply.valid
    response = stun.parse(reply.response or b"")
    assert response.error_code == 400 and stun.check_integrity(response, SERVER_PWD)


def test_role_conflict_gets_signed_487() -> None:
    agent = new_lite()
    # Whatever the tie-breaker: a lite agent never becomes controlling (RFC 8445 §6.1.1).
    for tie_breaker in (0, 2**64 - 1):
        data = request(attrs={"PRIORITY": 1, "ICE-CONTROLLED": tie_breaker})
        reply = lite_handle(agent, data)
        assert (reply.valid, reply.reason) == (False, "role conflict")
        response = stun.parse(reply.response or b"")
        assert response.error_code == 487
        assert stun.check_integrity(response, SERVER_PWD)
    assert agent.selected is None


def test_controlling_agent_fails_on_487() -> None:
    net = Net()
    net.client.start(0.0)
    [(data, _)] = net.client.datagrams_to_send(0.0)
    msg = stun.parse(data)
    conflict = stun.error_response(msg, 487, password=SERVER_PWD)
    net.client.receive(stun.parse(conflict), conflict, SERVER, 0.01)
    assert net.client.next_event() == Failed("role conflict: the peer will not be controlled")


def test_controlling_agent_ignores_unsigned_401() -> None:
    net = Net()
    net.client.start(0.0)
    [(data, _)] = net.client.datagrams_to_send(0.0)
    unauth = stun.error_response(stun.parse(data), 401)
    net.client.receive(stun.parse(unauth), unauth, SERVER, 0.01)
    assert net.client.next_event() is None and net.client.state is IceState.CHECKING


def test_non_requests_are_dropped() -> None:
    agent = new_lite()
    msg = stun.parse(request())
    success = stun.binding_success(msg, CLIENT, SERVER_PWD)
    assert lite_handle(agent, success).response is None
    indication = aioice_stun.Message(aioice_stun.Method.BINDING, aioice_stun.Class.INDICATION)
    indication.add_fingerprint()
    assert lite_handle(agent, bytes(indication)).reason == "not a Binding request"


def test_ice_restart_keeps_old_credentials_until_new_ones_are_used() -> None:
    agent = new_lite()
    assert lite_handle(agent, request(), now=1.0).valid
    agent.restart("newU", "new-password-0123456789")
    assert agent.local_ufrags == ("newU", SERVER_UFRAG)
    assert lite_handle(agent, request(), now=2.0).valid  # old credentials still fine
    agent.set_remote_credentials("cli2", "client-password-2")
    new = request(username="newU:cli2", password="new-password-0123456789")
    assert lite_handle(agent, new, now=3.0).valid
    assert list(agent.local_ufrags) == ["newU"]
    reply = lite_handle(agent, request(), now=4.0)  # the old ones are gone now
    assert not reply.valid and reply.reason == "wrong USERNAME"


def test_controlling_agent_answers_checks_of_a_full_peer() -> None:
    client = IceControllingAgent(CLIENT_UFRAG, CLIENT_PWD, rng=random.Random(1))
    client.set_remote(SERVER_UFRAG, SERVER_PWD, [SERVER])
    username = f"{CLIENT_UFRAG}:{SERVER_UFRAG}"
    controlled = {"PRIORITY": 1, "ICE-CONTROLLED": 3}
    ok = request(username=username, password=CLIENT_PWD, attrs=controlled)
    client.receive(stun.parse(ok), ok, SERVER, 0.0)
    bad = request(username=username, password="nope", attrs=controlled)
    client.receive(stun.parse(bad), bad, SERVER, 0.0)
    conflict = request(
        username=username, password=CLIENT_PWD, attrs={"PRIORITY": 1, "ICE-CONTROLLING": 3}
    )
    client.receive(stun.parse(conflict), conflict, SERVER, 0.0)
    out = [stun.parse(d) for d, _ in client.datagrams_to_send(0.0)]
    classes = [m.message_class for m in out]
    assert classes == [stun.Class.RESPONSE, stun.Class.ERROR, stun.Class.ERROR]
    assert stun.check_integrity(out[0], CLIENT_PWD)
    assert out[0].attributes["XOR-MAPPED-ADDRESS"] == SERVER
    assert [out[1].error_code, out[2].error_code] == [401, 487]


def test_start_without_remote_is_an_error_and_no_candidates_fail() -> None:
    client = IceControllingAgent(CLIENT_UFRAG, CLIENT_PWD)
    with pytest.raises(RuntimeError):
        client.start(0.0)
    client.set_remote(SERVER_UFRAG, SERVER_PWD, [])
    client.start(0.0)
    assert client.next_event() == Failed("no remote candidates")


# -- interop with aioice over real UDP ----------------------------------------------------------


class _LiteServer(asyncio.DatagramProtocol):
    """Our lite agent behind an asyncio UDP socket, with the same demux as the lead's."""

    def __init__(self, agent: IceLiteAgent) -> None:
        self.agent = agent
        self.replies: list[IceReply] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not stun.is_stun(data):
            return
        msg = stun.parse(data)
        if stun.username_parts(msg)[0] not in self.agent.local_ufrags:
            return
        reply = self.agent.handle_request(msg, data, addr, asyncio.get_running_loop().time())
        self.replies.append(reply)
        if reply.response is not None and self.transport is not None:
            self.transport.sendto(reply.response, addr)


def host_address() -> str:
    """aioice never gathers 127.0.0.1, so both sides use the machine's own IPv4 address."""
    addresses = aioice_ice.get_host_addresses(use_ipv4=True, use_ipv6=False)
    if not addresses:
        pytest.skip("no non-loopback IPv4 address for aioice to gather")
    return addresses[0]


def test_interop_aioice_controlling_against_our_lite_agent() -> None:
    host = host_address()

    async def main() -> tuple[list[IceReply], tuple[str, int], Address | None]:
        loop = asyncio.get_running_loop()
        agent = IceLiteAgent(SERVER_UFRAG, SERVER_PWD, now=loop.time())
        transport, server = await loop.create_datagram_endpoint(
            lambda: _LiteServer(agent), local_addr=(host, 0)
        )
        port = transport.get_extra_info("sockname")[1]
        conn = aioice_ice.Connection(ice_controlling=True, use_ipv6=False)
        conn.remote_is_lite = True
        try:
            await conn.gather_candidates()
            agent.set_remote_credentials(conn.local_username, conn.local_password)
            conn.remote_username, conn.remote_password = SERVER_UFRAG, SERVER_PWD
            await conn.add_remote_candidate(
                Candidate("1", 1, "udp", 2130706431, host, port, "host")
            )
            await conn.add_remote_candidate(None)
            await asyncio.wait_for(conn.connect(), 10)
            selected = conn._nominated[1].local_addr
            await conn.send(b"media would flow now")
        finally:
            await conn.close()
            transport.close()
        return server.replies, selected, agent.selected

    replies, selected, lite_selected = asyncio.run(main())
    assert any(r.valid and r.nominated for r in replies)
    # Both ends agree on the pair: aioice's nominated local address is our selected one.
    assert lite_selected == selected and selected[0] == host
    assert all(r.valid for r in replies), [r.reason for r in replies]


def test_interop_our_controlling_agent_against_aioice_controlled() -> None:
    bind = host_address()

    async def main() -> list[IceEvent]:
        loop = asyncio.get_running_loop()
        peer = aioice_ice.Connection(ice_controlling=False, use_ipv4=True, use_ipv6=False)
        await peer.gather_candidates()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((bind, 0))
        sock.setblocking(False)
        host, port = sock.getsockname()
        client = IceControllingAgent(CLIENT_UFRAG, CLIENT_PWD)
        remote = [(c.host, c.port) for c in peer.local_candidates if c.host == bind]
        client.set_remote(peer.local_username, peer.local_password, remote)
        peer.remote_username, peer.remote_password = CLIENT_UFRAG, CLIENT_PWD
        await peer.add_remote_candidate(Candidate("1", 1, "udp", 2130706431, host, port, "host"))
        await peer.add_remote_candidate(None)
        peer_task = asyncio.ensure_future(peer.connect())
        events: list[IceEvent] = []
        client.start(loop.time())
        try:
            deadline = loop.time() + 10
            while not peer_task.done() or not events:
                assert loop.time() < deadline, "ICE did not complete"
                for data, addr in client.datagrams_to_send(loop.time()):
                    sock.sendto(data, addr)
                await asyncio.sleep(0.01)
                while True:
                    try:
                        data, addr = sock.recvfrom(2048)
                    except BlockingIOError:
                        break
                    if stun.is_stun(data):
                        client.receive(stun.parse(data), data, addr, loop.time())
                timer = client.get_timer()
                if timer is not None and timer <= loop.time():
                    client.handle_timer(loop.time())
                while (event := client.next_event()) is not None:
                    events.append(event)
            await peer_task  # raises if aioice failed
            for data, addr in client.datagrams_to_send(loop.time()):  # answers to its checks
                sock.sendto(data, addr)
        finally:
            await peer.close()
            sock.close()
        return events

    events = asyncio.run(main())
    assert isinstance(events[0], Connected) and events[0].addr[0] == bind


# -- consent from media and the path rule (docs/security.md, "Path changes") --------------------

OTHER = ("203.0.113.9", 40000)


def confirmed_lite() -> IceLiteAgent:
    """A lite agent whose selected pair (CLIENT) has carried authenticated media at t=1."""
    agent = new_lite()
    assert lite_handle(agent, request(), CLIENT, now=1.0).nominated
    assert agent.selected == CLIENT and not agent.confirmed
    assert not agent.authenticated(CLIENT, 1.0)
    assert agent.confirmed
    return agent


def test_authenticated_media_keeps_consent_without_checks() -> None:
    """RFC 7675 §5.1: consent is the media sender's duty; authenticated media on the selected
    pair keeps a peer that sends no checks (libnice after nomination) alive."""
    agent = confirmed_lite()
    for t in range(2, 120):
        agent.heard(float(t))  # what the driver does for each authenticated packet
        assert not agent.consent_expired(t + 0.5)
    # Silence from then on: consent ends one timeout after the last authenticated packet.
    assert agent.consent_expires_at == 119.0 + 30.0
    assert not agent.consent_expired(148.9) and agent.consent_expired(149.0)


def test_media_from_an_unvalidated_or_other_address_keeps_nothing_alive() -> None:
    agent = confirmed_lite()
    assert not agent.authenticated(OTHER, 20.0)  # validated but never nominated
    assert agent.selected == CLIENT and agent.consent_expires_at == 31.0


def test_heard_never_moves_consent_backwards() -> None:
    agent = confirmed_lite()
    agent.heard(10.0)
    agent.heard(5.0)
    assert agent.consent_expires_at == 40.0


def test_a_nominating_check_alone_does_not_move_a_confirmed_path() -> None:
    agent = confirmed_lite()
    reply = lite_handle(agent, request(), OTHER, now=2.0)
    # Answered (the peer's own check is valid) and remembered, but media stays where it was.
    assert reply.valid and reply.nominated
    assert agent.selected == CLIENT and agent.candidate == OTHER
    # Any number of such checks: still not moved, and they do not renew consent.
    for t in (2.5, 3.0, 3.5):
        lite_handle(agent, request(), OTHER, now=t)
    assert agent.selected == CLIENT and agent.consent_expires_at == 31.0


def test_authenticated_media_from_the_candidate_moves_the_path() -> None:
    agent = confirmed_lite()
    lite_handle(agent, request(), OTHER, now=2.0)
    assert agent.authenticated(OTHER, 2.1)
    assert agent.selected == OTHER and agent.candidate is None and agent.confirmed
    assert agent.consent_expires_at == 32.1
    # And back again takes the same proof: a check from the old address is only a candidate.
    lite_handle(agent, request(), CLIENT, now=3.0)
    assert agent.selected == OTHER and agent.candidate == CLIENT


def test_the_candidate_takes_over_once_the_selected_pair_is_silent() -> None:
    """A peer that moved but sends nothing authenticated yet (an idle data channel) still
    moves: the old pair is silent for ``path_silence`` seconds."""
    agent = confirmed_lite()
    assert agent.path_silence == 8.0  # min(PATH_SILENCE, consent timeout / 2)
    agent.heard(4.0)
    lite_handle(agent, request(), OTHER, now=5.0)
    assert agent.path_deadline == 12.0
    assert not agent.handle_timer(11.9) and agent.selected == CLIENT
    lite_handle(agent, request(), OTHER, now=10.0)  # the candidate keeps checking
    assert agent.handle_timer(12.0)
    assert agent.selected == OTHER and agent.candidate is None
    # Consent on the new pair runs from its last check, not from the move.
    assert agent.consent_expires_at == 40.0


def test_live_selected_pair_keeps_the_path_against_a_candidate() -> None:
    agent = confirmed_lite()
    lite_handle(agent, request(), OTHER, now=2.0)
    for t in range(3, 60):
        agent.heard(float(t))  # the real peer keeps streaming from CLIENT
        assert not agent.handle_timer(float(t))
    assert agent.selected == CLIENT


def test_a_nominating_check_after_silence_moves_at_once() -> None:
    agent = confirmed_lite()
    lite_handle(agent, request(), OTHER, now=9.5)  # 8.5 s after the last input on CLIENT
    assert agent.selected == OTHER


def test_a_nominated_tcp_path_takes_over_a_silent_pair_at_once() -> None:
    """UDP failed: the client nominates its ICE-TCP pair (a connection a valid check bound,
    which cannot be spoofed). Once the selected pair has been silent for
    TCP_TAKEOVER_SILENCE the path moves at once, not at the client's next RTCP report; while
    the selected pair is heard (a check replayed over an attacker's own connection) it only
    becomes the candidate, and needs media over it."""
    agent = confirmed_lite()  # last heard at 1.0
    lite_handle(agent, request(), OTHER, now=1.0 + TCP_TAKEOVER_SILENCE - 0.1)
    agent.trusted_candidate(OTHER, 1.0 + TCP_TAKEOVER_SILENCE - 0.1)
    assert agent.selected == CLIENT and agent.candidate == OTHER
    lite_handle(agent, request(), OTHER, now=1.0 + TCP_TAKEOVER_SILENCE)
    agent.trusted_candidate(OTHER, 1.0 + TCP_TAKEOVER_SILENCE)
    assert agent.selected == OTHER and agent.candidate is None and agent.confirmed


def test_a_heard_pair_keeps_the_path_against_a_trusted_candidate() -> None:
    agent = confirmed_lite()
    for t in (2.0, 3.5, 5.0):
        agent.heard(t - 0.05)  # the real peer streams on CLIENT
        lite_handle(agent, request(), OTHER, now=t)
        agent.trusted_candidate(OTHER, t)
        assert agent.selected == CLIENT and agent.candidate == OTHER
    assert agent.authenticated(OTHER, 5.1)  # its media over the connection is the proof
    assert agent.selected == OTHER


def test_a_stale_candidate_is_forgotten_rather_than_selected() -> None:
    agent = IceLiteAgent(SERVER_UFRAG, SERVER_PWD, consent_timeout=30.0, path_silence=20.0, now=0)
    agent.set_remote_credentials(CLIENT_UFRAG, CLIENT_PWD)
    lite_handle(agent, request(), CLIENT, now=1.0)
    agent.authenticated(CLIENT, 1.0)
    lite_handle(agent, request(), OTHER, now=2.0)
    agent.heard(40.0)
    # The selected pair went silent at 40; by then the candidate's one check is 58 s old.
    assert not agent.handle_timer(60.0)
    assert agent.selected == CLIENT and agent.candidate is None


def test_before_any_authenticated_traffic_the_newest_nomination_wins() -> None:
    """Nothing flows yet that could be stolen: a browser nominating another pair during
    connectivity checks (aggressive nomination) gets it at once, as RFC 8445 §8.1.1 lets
    the controlling agent decide."""
    agent = new_lite()
    lite_handle(agent, request(attrs={"PRIORITY": 1, "ICE-CONTROLLING": 1}), OTHER, now=1.0)
    assert agent.selected == OTHER  # first valid check: somewhere to send
    lite_handle(agent, request(), CLIENT, now=1.1)
    assert agent.selected == CLIENT and agent.candidate is None
