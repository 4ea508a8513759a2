"""STUN/ICE fuzzing: whatever arrives, only StunError escapes the parser and the agents
never raise (they return a rejection or ignore the datagram)."""

from __future__ import annotations

import binascii
import contextlib
import hmac
import random
import struct

from hypothesis import given
from hypothesis import strategies as st

from trio_sfu.proto import stun
from trio_sfu.proto.errors import StunError
from trio_sfu.proto.ice import IceControllingAgent, IceLiteAgent, IceReply

SERVER = ("192.0.2.1", 3478)
CLIENT = ("198.51.100.7", 50000)
S_UFRAG, S_PWD = "srvF", "server-password-0123456789"
C_UFRAG, C_PWD = "cliF", "client-password-0123456789"

KNOWN_TYPES = [
    0x0001, 0x0006, 0x0008, 0x0009, 0x000C, 0x0014, 0x0015, 0x0020, 0x0024, 0x0025,
    0x8022, 0x8028, 0x8029, 0x802A, 0x802B, 0x802C,
]
METHOD_CLASS = [0x0001, 0x0011, 0x0101, 0x0111, 0x0002, 0x0003, 0x0ABC]


def valid_request(use_candidate: bool = True) -> bytes:
    return stun.binding_request(
        username=f"{S_UFRAG}:{C_UFRAG}", password=S_PWD, priority=stun.ice_priority(),
        tie_breaker=12345, transaction_id=bytes(12), use_candidate=use_candidate,
    )


SEEDS = [
    valid_request(),
    valid_request(False),
    stun.binding_success(stun.parse(valid_request()), CLIENT, S_PWD),
    stun.binding_success(stun.parse(valid_request()), ("2001:db8::1", 9), S_PWD),
    stun.error_response(stun.parse(valid_request()), 487, password=S_PWD),
    stun.error_response(stun.parse(valid_request()), 401),
]


def assemble(head: int, tid: bytes, attrs: list[tuple[int, bytes]], *, integrity: str | None,
             fingerprint: bool) -> bytes:
    """Build a message by hand (not through aioice) so any attribute value is possible,
    optionally closed by a *correct* MESSAGE-INTEGRITY and FINGERPRINT so fuzzed values
    reach aioice's attribute decoders and the agents' logic."""
    body = b"".join(
        struct.pack("!HH", t, len(v)) + v + b"\x00" * (-len(v) & 3) for t, v in attrs
    )
    data = struct.pack("!HHI12s", head, len(body), 0x2112A442, tid) + body
    if integrity is not None:
        covered = data[:2] + struct.pack("!H", len(body) + 24) + data[4:]
        mac = hmac.new(integrity.encode(), covered, "sha1").digest()
        body += struct.pack("!HH", 0x0008, 20) + mac
        data = struct.pack("!HHI12s", head, len(body), 0x2112A442, tid) + body
    if fingerprint:
        covered = data[:2] + struct.pack("!H", len(body) + 8) + data[4:]
        crc = binascii.crc32(covered) ^ 0x5354554E
        body += struct.pack("!HHI", 0x8028, 4, crc)
        data = struct.pack("!HHI12s", head, len(body), 0x2112A442, tid) + body
    return data


attribute = st.tuples(
    st.one_of(st.sampled_from(KNOWN_TYPES), st.integers(0, 0xFFFF)),
    st.one_of(
        st.binary(max_size=40),
        st.sampled_from([f"{S_UFRAG}:{C_UFRAG}".encode(), b"\x00\x01\x12\x34abcd",
                         b"\x00\x02" + bytes(18), struct.pack("!Q", 7), struct.pack("!I", 9),
                         b"\x00\x00\x04\x57Role Conflict", b"\xff\xfe"]),
    ),
)
crafted = st.builds(
    assemble,
    st.sampled_from(METHOD_CLASS),
    st.one_of(st.just(bytes(12)), st.binary(min_size=12, max_size=12)),
    st.lists(attribute, max_size=8),
    integrity=st.sampled_from([None, S_PWD, C_PWD, "wrong"]),
    fingerprint=st.booleans(),
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.integers(0, 3))
        if op == 0 and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        elif op == 1:
            del data[draw(st.integers(0, len(data))) :]
        elif op == 2:
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif len(data) >= 4:
            struct.pack_into("!H", data, 2, draw(st.integers(0, 0xFFFF)))
    return bytes(data)


datagrams = st.one_of(st.binary(max_size=200), mutated(), crafted)

# Binding requests made of plausible ICE attributes (and some nonsense), usually signed and
# fingerprinted, so the lite agent's checks beyond authentication get exercised too.
ice_attribute = st.one_of(
    st.sampled_from([
        (0x0006, f"{S_UFRAG}:{C_UFRAG}".encode()),
        (0x0006, f"{S_UFRAG}:other".encode()),
        (0x0006, b"nocolon"),
        (0x0024, struct.pack("!I", 0x6E0001FF)),
        (0x802A, struct.pack("!Q", 1)),
        (0x8029, struct.pack("!Q", 2**64 - 1)),
        (0x0025, b""),
        (0x8022, b"fuzzer"),
    ]),
    attribute,
)
checks = st.builds(
    assemble,
    st.just(0x0001),
    st.binary(min_size=12, max_size=12),
    st.lists(ice_attribute, max_size=7),
    integrity=st.sampled_from([S_PWD, S_PWD, S_PWD, None, "wrong"]),
    fingerprint=st.booleans(),
)


def lite() -> IceLiteAgent:
    agent = IceLiteAgent(S_UFRAG, S_PWD, now=0.0)
    agent.set_remote_credentials(C_UFRAG, C_PWD)
    return agent


def controlling() -> IceControllingAgent:
    agent = IceControllingAgent(C_UFRAG, C_PWD, rng=random.Random(3))
    agent.set_remote(S_UFRAG, S_PWD, [SERVER])
    agent.start(0.0)
    return agent


@given(datagrams)
def test_parse_raises_only_stun_error(data: bytes) -> None:
    try:
        msg = stun.parse(data)
    except StunError:
        return
    assert stun.is_stun(data)
    # Whatever parses must survive the helpers too.
    stun.has_fingerprint(msg)
    stun.check_integrity(msg, S_PWD)
    stun.check_fingerprint(data)
    with contextlib.suppress(StunError):
        stun.username_parts(msg)


@given(datagrams)
def test_is_stun_and_raw_helpers_never_raise(data: bytes) -> None:
    stun.is_stun(data)
    stun.check_fingerprint(data)
    assert isinstance(stun.check_integrity(data, S_PWD), bool)


@given(st.one_of(datagrams, checks), st.sampled_from([CLIENT, ("2001:db8::5", 1)]))
def test_lite_agent_only_rejects(data: bytes, addr: tuple[str, int]) -> None:
    try:
        msg = stun.parse(data)
    except StunError:
        return
    agent = lite()
    reply = agent.handle_request(msg, data, addr, 1.0)
    assert isinstance(reply, IceReply)
    if reply.valid:
        assert reply.response is not None and reply.reason == ""
        assert "ICE-CONTROLLING" in msg.attributes and stun.check_integrity(msg, S_PWD)
        assert stun.check_fingerprint(data)
    else:
        assert reply.reason and not reply.nominated
        assert agent.selected is None and agent.consent_expires_at == 30.0
    if reply.response is not None:
        stun.parse(reply.response)  # whatever we answer is well-formed


@given(datagrams, st.booleans())
def test_controlling_agent_never_raises(data: bytes, match_transaction: bool) -> None:
    agent = controlling()
    [(request, _)] = agent.datagrams_to_send(0.0)
    if match_transaction and len(data) >= 20:
        data = data[:8] + request[8:20] + data[20:]  # aim at the pending transaction
    try:
        msg = stun.parse(data)
    except StunError:
        return
    agent.receive(msg, data, SERVER, 0.1)
    for out, _ in agent.datagrams_to_send(0.2):
        stun.parse(out)
    agent.handle_timer(0.6)
    while agent.next_event() is not None:
        pass


@given(st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=30)), max_size=6),
       st.sampled_from([0x0101, 0x0111]))
def test_signed_responses_with_fuzzed_attributes(
    attrs: list[tuple[int, bytes]], head: int
) -> None:
    """Authentic (correctly signed) responses whose attributes are nonsense."""
    agent = controlling()
    [(request, _)] = agent.datagrams_to_send(0.0)
    data = assemble(head, request[8:20], attrs, integrity=S_PWD, fingerprint=True)
    try:
        msg = stun.parse(data)
    except StunError:
        return
    agent.receive(msg, data, SERVER, 0.1)
    while agent.next_event() is not None:
        pass
