"""State cookie, INIT parameter rules and the §5.2.4 COOKIE ECHO table, on their own."""

from __future__ import annotations

import dataclasses

import pytest

from trio_sfu.proto.sctp.cookie import (
    COOKIE_SIZE,
    FLAG_FORWARD_TSN,
    FLAG_RECONFIG,
    CookieRejected,
    StateCookie,
    open_cookie,
    seal,
)
from trio_sfu.proto.sctp.handshake import (
    CookieCase,
    classify_cookie,
    local_extension_params,
    scan_params,
)

SECRET = bytes(range(32))
COOKIE = StateCookie(
    local_tag=0x11111111, local_tsn=5, peer_tag=0x22222222, peer_tsn=7, peer_rwnd=1 << 20,
    peer_outbound=65535, peer_inbound=1024, tie_local=0, tie_peer=0,
    peer_flags=FLAG_FORWARD_TSN | FLAG_RECONFIG, created=1000.0, lifetime=60.0,
)


def test_cookie_round_trip() -> None:
    sealed = seal(SECRET, COOKIE)
    assert len(sealed) == COOKIE_SIZE
    assert open_cookie(SECRET, sealed, 1059.9) == COOKIE


@pytest.mark.parametrize("index", [0, 1, 20, COOKIE_SIZE - 17, COOKIE_SIZE - 1])
def test_any_flipped_bit_is_rejected_as_forged(index: int) -> None:
    sealed = bytearray(seal(SECRET, COOKIE))
    sealed[index] ^= 0x01
    with pytest.raises(CookieRejected) as exc:
        open_cookie(SECRET, bytes(sealed), 1000.0)
    assert exc.value.cookie is None


def test_wrong_secret_and_wrong_size_are_forged() -> None:
    with pytest.raises(CookieRejected):
        open_cookie(bytes(32), seal(SECRET, COOKIE), 1000.0)
    with pytest.raises(CookieRejected):
        open_cookie(SECRET, seal(SECRET, COOKIE) + b"\x00", 1000.0)


def test_stale_cookie_reports_its_staleness_and_tags() -> None:
    with pytest.raises(CookieRejected) as exc:
        open_cookie(SECRET, seal(SECRET, COOKIE), 1062.5)
    assert exc.value.cookie == COOKIE
    assert exc.value.staleness == pytest.approx(2.5)


def _ck(**kw: int) -> StateCookie:
    return dataclasses.replace(COOKIE, **kw)


L, P = COOKIE.local_tag, COOKIE.peer_tag


@pytest.mark.parametrize(
    ("cookie", "local", "peer", "tcb", "case"),
    [
        (_ck(), 0, 0, False, CookieCase.NEW),
        # (A) both tags differ, tie-tags are our current tags: the peer restarted
        (_ck(tie_local=9, tie_peer=8), 9, 8, True, CookieCase.RESTART),
        (_ck(tie_local=9, tie_peer=7), 9, 8, True, CookieCase.DISCARD),
        # (B) our tag, another peer tag (we were in COOKIE-WAIT, or a collision)
        (_ck(), L, 0, True, CookieCase.COLLISION),
        (_ck(), L, 12345, True, CookieCase.COLLISION),
        # (C) an old cookie: our tag changed, peer's the same, no tie-tags
        (_ck(), 9, P, True, CookieCase.DISCARD),
        # (D) both tags match: a duplicate
        (_ck(), L, P, True, CookieCase.DUPLICATE),
    ],
)
def test_cookie_echo_table(
    cookie: StateCookie, local: int, peer: int, tcb: bool, case: CookieCase
) -> None:
    assert classify_cookie(cookie, local, peer, tcb) is case


def test_we_advertise_forward_tsn_and_reconfig_only() -> None:
    params = local_extension_params()
    assert params == [(0xC000, b""), (0x8008, bytes([0xC0, 0x82]))]
    assert scan_params(params, init_ack=False) == (FLAG_FORWARD_TSN | FLAG_RECONFIG, [])


def test_chromium_like_init_parameters() -> None:
    """What dcsctp offers: extensions incl. I-DATA, Forward-TSN, zero checksum (RFC 9653)."""
    params = [
        (0x8008, bytes([0x82, 0xC0, 0x40])),
        (0xC000, b""),
        (0x8001, b"\x00\x00\x00\x01"),
    ]
    flags, unrecognized = scan_params(params, init_ack=False)
    assert flags == FLAG_FORWARD_TSN | FLAG_RECONFIG and unrecognized == []


@pytest.mark.parametrize(
    ("ptype", "stops", "reports"),
    [(0x0123, True, False), (0x4123, True, True), (0x8123, False, False), (0xC123, False, True)],
)
def test_unknown_parameter_upper_bits(ptype: int, stops: bool, reports: bool) -> None:
    flags, unrecognized = scan_params([(ptype, b"?"), (0xC000, b"")], init_ack=False)
    assert (flags == 0) == stops
    assert unrecognized == ([(ptype, b"?")] if reports else [])


def test_state_cookie_parameter_is_expected_only_in_init_ack() -> None:
    assert scan_params([(7, b"c")], init_ack=True) == (0, [])
    assert scan_params([(7, b"c")], init_ack=False) == (0, [])  # 0x0007: stop, no report
