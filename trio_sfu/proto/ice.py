"""ICE for one peer, sans-IO: the server's lite agent and the client's controlling agent.

The server is ICE-lite (RFC 8445 §2.5): it never sends checks, it only answers them. What
proves the peer still wants our traffic (RFC 7675) is any authenticated input on the selected
pair: a valid check, or SRTP/SRTCP/DTLS that passed authentication (the driver reports those).
The lite agent also owns the path rule: where media goes, and what it takes to move it.
The client side (tests, bots, the load tester) is a full agent restricted to what talking to a
lite server needs: UDP host candidates of one component, the controlling role and aggressive
nomination.

Neither class touches a socket or a clock: the driver passes ``now`` (monotonic seconds) in,
sends what :meth:`IceControllingAgent.datagrams_to_send` returns and calls ``handle_timer``
at :meth:`IceControllingAgent.get_timer`.
"""

from __future__ import annotations

import enum
import random
from collections import deque
from dataclasses import dataclass

from trio_sfu.proto import stun
from trio_sfu.proto.stun import Class, Message, Method

__all__ = [
    "PATH_SILENCE",
    "Connected",
    "ConsentLost",
    "Failed",
    "IceControllingAgent",
    "IceEvent",
    "IceLiteAgent",
    "IceReply",
    "IceState",
]

Address = tuple[str, int]


@dataclass(slots=True, frozen=True)
class IceReply:
    """What the lite agent made of one request.

    ``response`` goes back to the request's source address when not None. ``valid`` means
    the request authenticated as this peer (the demux may then bind ``addr`` to the peer);
    ``nominated`` means it carried USE-CANDIDATE, so ``addr`` is now the selected pair.
    ``reason`` says why a request was refused (for counters and debug logs), "" if valid.
    """

    response: bytes | None
    valid: bool
    nominated: bool
    reason: str = ""


@dataclass(slots=True, frozen=True)
class Connected:
    """A check on ``addr`` succeeded with USE-CANDIDATE: the pair is selected."""

    addr: Address


@dataclass(slots=True, frozen=True)
class Failed:
    """Every candidate pair failed (or the peer refused us); the agent is finished."""

    reason: str


@dataclass(slots=True, frozen=True)
class ConsentLost:
    """RFC 7675 §5.1: no answered consent check for ``consent_timeout``; stop sending."""

    addr: Address | None = None


IceEvent = Connected | Failed | ConsentLost

#: How long a confirmed selected pair must go without authenticated input before a nominating
#: check from another address alone moves the path: longer than RFC 7675 §5.1's randomised
#: consent interval (5 s x 1.2), so a live peer that sends only consent checks never looks silent.
PATH_SILENCE = 8.0
#: How long the selected pair must have been silent before a nominating check over an
#: ICE-TCP connection moves the path at once. A client nominates another pair only after its
#: own went quiet (Chromium: 2.5 s without input), and a live pair carrying video is heard
#: every few tens of milliseconds (media or transport-cc feedback). Without this a receive-only
#: client's move waited for its next RTCP report over the new connection (up to 1 s).
TCP_TAKEOVER_SILENCE = 2.0
#: The same for a check without USE-CANDIDATE: Chromium checks its TCP backup every 250 ms
#: from the moment its UDP pair goes weak, and nominates it only seconds later (measured: 4 s
#: after UDP failed), while a working Chromium pair is checked at least every 2.5 s, so a
#: silence this long is not a pause between consent checks. (Chromium takes media on any
#: pair of its transport, selected or not.)
TCP_CHECK_TAKEOVER_SILENCE = 3.0


def _drop(reason: str) -> IceReply:
    return IceReply(None, False, False, reason)


def _refuse(msg: Message, code: int, reason: str, pwd: str | None = None) -> IceReply:
    return IceReply(stun.error_response(msg, code, password=pwd), False, False, reason)


class IceLiteAgent:
    """The server side of one peer's ICE session (RFC 8445 §2.5, lite implementation).

    Lookup happens outside: the UDP demux parses the datagram once with
    :func:`trio_sfu.proto.stun.parse`, reads the local ufrag with
    :func:`~trio_sfu.proto.stun.username_parts`, finds the agent and calls
    :meth:`handle_request`. Unknown ufrags never reach an agent (the demux drops them).

    On a wrong MESSAGE-INTEGRITY the agent answers 401 rather than dropping: RFC 8489 §9.1.3
    (short-term credentials, the ICE case; §9.2.4 is the long-term twin) says the server MUST
    reject with 401, and the 401 carries no MESSAGE-INTEGRITY, so a client discards it
    (§9.1.4) and keeps retransmitting — the same outcome as a drop, but standard. It is no
    amplifier: the answer is smaller than the request and goes to the request's source.
    Missing FINGERPRINT, on the other hand, is a silent drop: ICE requires it (RFC 8445
    §7.2.2) precisely to tell STUN from other traffic multiplexed on the port, so without it
    we cannot even be sure the datagram is STUN.
    """

    def __init__(
        self,
        local_ufrag: str,
        local_pwd: str,
        *,
        consent_timeout: float = 30.0,
        path_silence: float | None = None,
        now: float,
    ) -> None:
        self.local_ufrag = local_ufrag
        self.local_pwd = local_pwd
        self.remote_ufrag: str | None = None
        self.remote_pwd: str | None = None
        self.consent_timeout = consent_timeout
        self.path_silence = (
            path_silence if path_silence is not None else min(PATH_SILENCE, consent_timeout / 2)
        )
        #: Last authenticated input on the selected pair: a valid check, or (written by the
        #: driver) SRTP/SRTCP that passed authentication or a DTLS record that decrypted.
        #: Consent starts granted for one timeout: the peer needs time to send its first check.
        self.heard_at = now
        #: Where media goes: the first valid check's address, then the path rule below.
        self.selected: Address | None = None
        #: Whether the selected pair has carried authenticated DTLS/SRTP; until then a
        #: nominating check alone may move it (nothing is flowing that could be stolen).
        self.confirmed = False
        #: A nominated address waiting for proof (see :meth:`authenticated`) and when its
        #: last valid check came.
        self.candidate: Address | None = None
        self._candidate_at = now
        # During an ICE restart the old credentials stay valid until the peer uses the new
        # ones (RFC 8445 §9: media keeps flowing on the previous pair meanwhile).
        self._previous: tuple[str, str, str | None] | None = None

    # -- credentials ----------------------------------------------------------------------

    def set_remote_credentials(self, ufrag: str, pwd: str) -> None:
        """Once known, the remote ufrag must be the second half of every USERNAME."""
        self.remote_ufrag = ufrag
        self.remote_pwd = pwd

    def restart(self, local_ufrag: str, local_pwd: str) -> None:
        """ICE restart (RFC 8445 §9): new local credentials; the remote ones come with the
        new offer through :meth:`set_remote_credentials`. Consent and the selected address
        are kept, and checks with the old credentials stay valid until one with the new
        credentials arrives, so the demux should map every ufrag in :attr:`local_ufrags`."""
        self._previous = (self.local_ufrag, self.local_pwd, self.remote_ufrag)
        self.local_ufrag = local_ufrag
        self.local_pwd = local_pwd
        self.remote_ufrag = None
        self.remote_pwd = None

    @property
    def local_ufrags(self) -> tuple[str, ...]:
        """Every local ufrag this agent currently accepts (two during a restart)."""
        if self._previous is None:
            return (self.local_ufrag,)
        return (self.local_ufrag, self._previous[0])

    # -- consent --------------------------------------------------------------------------

    @property
    def consent_expires_at(self) -> float:
        return self.heard_at + self.consent_timeout

    def consent_expired(self, now: float) -> bool:
        return now >= self.heard_at + self.consent_timeout

    # -- the path (where media goes) ---------------------------------------------------------

    def heard(self, at: float) -> None:
        """Authenticated media on the selected pair at ``at`` (the driver records the time on
        its hot path and hands it over lazily, before any decision that depends on it)."""
        if at > self.heard_at:
            self.heard_at = at

    def authenticated(self, addr: Address, now: float) -> bool:
        """SRTP/SRTCP that passed authentication and the replay check, or a DTLS record that
        decrypted, came from ``addr`` (a validated address of this peer). Returns whether the
        selected pair moved there.

        RFC 7675 §5.1 puts the duty of consent on the *sender* of media; a lite server sends
        no checks, so authenticated traffic on the selected pair is what keeps it alive here
        (a peer that streams but sends no consent checks, like libnice after nomination, is
        not cut off). On the candidate address it is the second, unforgeable proof that the
        peer really moved (see docs/security.md, "Path changes")."""
        if addr == self.selected:
            self.heard(now)
            self.confirmed = True
            return False
        if addr == self.candidate:
            self._move(addr, now)
            self.confirmed = True
            return True
        return False

    def trusted_candidate(self, addr: Address, now: float, *, nominated: bool = True) -> None:
        """A path that cannot be spoofed (an ICE-TCP connection a valid check bound) carried a
        valid check, or the peer's traffic (``nominated``: a client sends media only on its
        selected pair, RFC 8445 §12.1). Move there at once if the selected pair has been silent
        for :data:`TCP_TAKEOVER_SILENCE` (:data:`TCP_CHECK_TAKEOVER_SILENCE` for a check
        without USE-CANDIDATE): the client left it. Otherwise a nominated path becomes the
        candidate, which its first authenticated packet moves to. A check replayed over an
        attacker's own connection cannot take a pair that is being heard."""
        if addr == self.selected:
            return
        silence = TCP_TAKEOVER_SILENCE if nominated else TCP_CHECK_TAKEOVER_SILENCE
        if now - self.heard_at >= silence:
            self._move(addr, now)
        elif nominated:
            self.candidate = addr
            self._candidate_at = now

    def selected_lost(self) -> None:
        """The selected pair can carry nothing more (its TCP connection closed): the next
        valid check selects its address at once, as before any traffic."""
        self.selected = None
        self.candidate = None
        self.confirmed = False

    def _nominate(self, addr: Address, now: float) -> None:
        """A valid check with USE-CANDIDATE from ``addr`` (RFC 8445 §7.3.1.5)."""
        if addr == self.selected:
            self.heard(now)
            self.candidate = None  # the peer confirms the pair it has
        elif self.selected is None or not self.confirmed:
            self._move(addr, now)
        elif now - self.heard_at >= self.path_silence:
            self._move(addr, now)  # the old pair went silent: the peer left it
        else:
            # One check is not enough to take a confirmed path away: a replayed or spoofed
            # check costs nothing. Wait for authenticated media from there, or silence here.
            self.candidate = addr
            self._candidate_at = now

    def _move(self, addr: Address, now: float) -> None:
        self.selected = addr
        self.candidate = None
        self.heard_at = now

    @property
    def path_deadline(self) -> float | None:
        """When the selected pair counts as silent and a waiting candidate takes over."""
        if self.candidate is None:
            return None
        return self.heard_at + self.path_silence

    def handle_timer(self, now: float) -> bool:
        """Move to the candidate once the selected pair has been silent long enough; returns
        whether the path moved. Consent then runs from the candidate's last check."""
        deadline = self.path_deadline
        if self.candidate is None or deadline is None or now < deadline:
            return False
        if now - self._candidate_at >= self.consent_timeout:
            self.candidate = None  # it went quiet too: nothing to move to
            return False
        self._move(self.candidate, self._candidate_at)
        return True

    # -- checks ---------------------------------------------------------------------------

    def handle_request(self, msg: Message, data: bytes, addr: Address, now: float) -> IceReply:
        """Validate one check and build the answer (RFC 8445 §7.3, RFC 8489 §9.1.3)."""
        if msg.message_method != Method.BINDING or msg.message_class != Class.REQUEST:
            return _drop("not a Binding request")
        if not stun.check_fingerprint(data):
            return _drop("missing or bad FINGERPRINT")
        attrs = msg.attributes
        username = attrs.get("USERNAME")
        if not isinstance(username, str) or "MESSAGE-INTEGRITY" not in attrs:
            # RFC 8489 §9.1.3: no credentials at all -> 400, unsigned.
            return _refuse(msg, 400, "no credentials")
        creds = self._password_for(username)
        if creds is None:
            return _refuse(msg, 401, "wrong USERNAME")
        pwd, current = creds
        if not msg.check_message_integrity(pwd.encode("utf-8")):
            return _refuse(msg, 401, "bad MESSAGE-INTEGRITY")
        # Authenticated from here on, so error responses are signed.
        if "ICE-CONTROLLED" in attrs:
            if "ICE-CONTROLLING" in attrs:
                return _refuse(msg, 400, "both ICE-CONTROLLING and ICE-CONTROLLED", pwd)
            # RFC 8445 §7.3.1.1: both sides controlled. A lite agent is always controlled
            # (§6.1.1), so whatever the tie-breakers it answers 487 and keeps its role.
            return _refuse(msg, 487, "role conflict", pwd)
        if "ICE-CONTROLLING" not in attrs or "PRIORITY" not in attrs:
            # RFC 8445 §7.1.1: a check MUST carry PRIORITY and the sender's role.
            return _refuse(msg, 400, "missing PRIORITY or ICE-CONTROLLING", pwd)

        if current:
            self._previous = None  # the peer uses the restarted credentials: forget the old
        nominated = "USE-CANDIDATE" in attrs
        if nominated:
            self._nominate(addr, now)
        elif self.selected is None:
            self._move(addr, now)  # nowhere else to send yet
        elif addr == self.selected:
            # RFC 7675: consent is per pair; checks on other pairs do not keep this one alive.
            self.heard(now)
        elif addr == self.candidate:
            self._candidate_at = now
        return IceReply(stun.binding_success(msg, addr, pwd), True, nominated)

    def _password_for(self, username: str) -> tuple[str, bool] | None:
        """(password, is_current) for a USERNAME we accept, else None."""
        local, sep, remote = username.partition(":")
        if not sep or not remote:
            return None
        if local == self.local_ufrag and self.remote_ufrag in (None, remote):
            return self.local_pwd, True
        prev = self._previous
        if prev is not None and local == prev[0] and prev[2] in (None, remote):
            return prev[1], False
        return None


class IceState(enum.Enum):
    NEW = "new"
    CHECKING = "checking"
    CONNECTED = "connected"
    FAILED = "failed"
    CONSENT_LOST = "consent_lost"


@dataclass(slots=True)
class _Transaction:
    transaction_id: bytes
    addr: Address
    request: bytes
    sent_at: float  # first transmission: consent is granted from here (RFC 7675 §5.1)
    next_at: float  # next retransmission, or the give-up time after the last one
    rto: float
    transmissions: int
    consent: bool


class IceControllingAgent:
    """The client side: checks every remote host candidate, nominates the first that works.

    Connectivity checks are STUN transactions retransmitted per RFC 8489 §6.2.1 (RTO 500 ms
    doubling, Rc = 7 transmissions, give up Rm = 16 RTOs after the last: 39.5 s), paced by
    Ta = 50 ms (RFC 8445 §14.2) and all carrying USE-CANDIDATE (aggressive nomination, fine
    against a lite peer which never nominates itself). After :class:`Connected`, consent
    checks go out every ``consent_interval`` x U(0.8, 1.2) (RFC 7675 §5.1), each a fresh
    transaction that is not retransmitted; consent lasts ``consent_timeout`` from the sending
    of the last answered one.

    Not supported (not needed against a lite server): other components, TCP, relayed or
    reflexive local candidates, switching to the controlled role (a peer insisting on being
    controlling gets 487 and, if it answers our checks with 487, :class:`Failed`).
    """

    RTO = 0.5  # RFC 8489 §6.2.1 initial RTO; RFC 8445 §14.3 floor
    MAX_TRANSMISSIONS = 7  # Rc
    LAST_WAIT = 16  # Rm, in initial RTOs
    PACING = 0.05  # Ta

    def __init__(
        self,
        local_ufrag: str,
        local_pwd: str,
        *,
        tie_breaker: int | None = None,
        consent_interval: float = 5.0,
        consent_timeout: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        self.local_ufrag = local_ufrag
        self.local_pwd = local_pwd
        self._rng = rng if rng is not None else random.SystemRandom()
        self.tie_breaker = tie_breaker if tie_breaker is not None else self._rng.getrandbits(64)
        self.consent_interval = consent_interval
        self.consent_timeout = consent_timeout
        self.remote_ufrag: str | None = None
        self.remote_pwd: str | None = None
        self.remote_candidates: list[Address] = []
        self.state = IceState.NEW
        #: The remote address of the selected pair, once connected.
        self.selected: Address | None = None
        #: Our address as the peer saw it (XOR-MAPPED-ADDRESS of the last success).
        self.mapped_address: Address | None = None
        self._priority = stun.ice_priority()
        self._waiting: deque[Address] = deque()
        self._next_check_at: float | None = None
        self._pending: dict[bytes, _Transaction] = {}
        self._next_consent_at: float | None = None
        self._consent_expires_at: float | None = None
        self._outbox: list[tuple[bytes, Address]] = []
        self._events: deque[IceEvent] = deque()

    # -- setup ----------------------------------------------------------------------------

    def set_remote(self, ufrag: str, pwd: str, candidates: list[Address]) -> None:
        """Remote credentials and UDP host candidates, highest priority first."""
        self.remote_ufrag = ufrag
        self.remote_pwd = pwd
        self.remote_candidates = list(candidates)

    def start(self, now: float) -> None:
        if self.remote_ufrag is None:
            raise RuntimeError("set_remote() must come before start()")
        if self.state is not IceState.NEW:
            return
        self.state = IceState.CHECKING
        self._waiting = deque(dict.fromkeys(self.remote_candidates))  # dedupe, keep order
        if not self._waiting:
            self._fail("no remote candidates")
            return
        self._next_check_at = now
        self._pace_checks(now)

    # -- sans-IO face ---------------------------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> IceEvent | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        times = [t.next_at for t in self._pending.values() if not t.consent]
        if self._next_check_at is not None:
            times.append(self._next_check_at)
        if self._next_consent_at is not None:
            times.append(self._next_consent_at)
        if self._consent_expires_at is not None:
            times.append(self._consent_expires_at)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        if self.state is IceState.CHECKING:
            for tx in [t for t in self._pending.values() if t.next_at <= now]:
                self._retransmit_or_expire(tx, now)
            self._pace_checks(now)
            if self.state is IceState.CHECKING and not self._pending and not self._waiting:
                self._fail("all candidate pairs failed")
        elif self.state is IceState.CONNECTED:
            assert self._consent_expires_at is not None and self._next_consent_at is not None
            if now >= self._consent_expires_at:
                self._lose_consent()
                return
            if now >= self._next_consent_at:
                self._send_consent_check(now)

    def refresh(self, now: float) -> None:
        """Send a consent check on the selected pair at once, e.g. after our local address
        changed: the lite server sees a valid nominated check from the new address and
        moves the pair there (its answer, when it comes, also renews our consent)."""
        if self.state is IceState.CONNECTED:
            self._send_consent_check(now)

    # -- input ----------------------------------------------------------------------------

    def receive(self, msg: Message, data: bytes, addr: Address, now: float) -> None:
        """A STUN message from the peer: responses to our checks, or the peer's own checks
        (a full remote agent sends them; we answer like any controlling agent would)."""
        if msg.message_method != Method.BINDING:
            return
        if msg.message_class == Class.REQUEST:
            self._answer_request(msg, data, addr)
        elif msg.message_class in (Class.RESPONSE, Class.ERROR):
            self._handle_response(msg, data, addr, now)

    def _answer_request(self, msg: Message, data: bytes, addr: Address) -> None:
        if not stun.check_fingerprint(data):
            return
        attrs = msg.attributes
        username = attrs.get("USERNAME")
        if not isinstance(username, str) or "MESSAGE-INTEGRITY" not in attrs:
            self._outbox.append((stun.error_response(msg, 400), addr))
            return
        local, _, remote = username.partition(":")
        if local != self.local_ufrag or (
            self.remote_ufrag is not None and remote != self.remote_ufrag
        ) or not msg.check_message_integrity(self.local_pwd.encode("utf-8")):
            self._outbox.append((stun.error_response(msg, 401), addr))
            return
        if "ICE-CONTROLLING" in attrs:
            # RFC 8445 §7.3.1.1 says to switch roles if our tie-breaker is smaller; this
            # agent only knows the controlling role, so it always insists (487).
            self._outbox.append((stun.error_response(msg, 487, password=self.local_pwd), addr))
            return
        self._outbox.append((stun.binding_success(msg, addr, self.local_pwd), addr))

    def _handle_response(self, msg: Message, data: bytes, addr: Address, now: float) -> None:
        tx = self._pending.get(msg.transaction_id)
        if tx is None:
            return  # late, duplicate or not ours
        # RFC 8489 §9.1.4 / RFC 8445 §7.2.5: an unauthenticated response is discarded as if
        # never received, so retransmissions go on. FINGERPRINT is required for ICE.
        assert self.remote_pwd is not None
        if not stun.check_fingerprint(data) or not msg.check_message_integrity(
            self.remote_pwd.encode("utf-8")
        ):
            return
        del self._pending[msg.transaction_id]
        if addr != tx.addr:
            # RFC 8445 §7.2.5.2.1: a response from elsewhere fails the check (non-symmetric).
            self._pair_failed()
            return
        if msg.message_class == Class.ERROR:
            code = msg.error_code
            if code == 487:
                self._fail("role conflict: the peer will not be controlled")
            else:
                self._pair_failed()
            return
        mapped = msg.attributes.get("XOR-MAPPED-ADDRESS")
        if isinstance(mapped, tuple):
            self.mapped_address = (str(mapped[0]), int(mapped[1]))
        if self.state is IceState.CHECKING:
            self._connect(tx.addr, now)
        elif self.state is IceState.CONNECTED and tx.addr == self.selected:
            assert self._consent_expires_at is not None
            # RFC 7675 §5.1: consent runs for 30 s from the *sending* of the answered check.
            self._consent_expires_at = max(self._consent_expires_at,
                                           tx.sent_at + self.consent_timeout)

    # -- internals ------------------------------------------------------------------------

    def _new_transaction_id(self) -> bytes:
        return self._rng.getrandbits(96).to_bytes(12, "big")

    def _send_check(self, addr: Address, now: float, *, consent: bool) -> None:
        assert self.remote_ufrag is not None and self.remote_pwd is not None
        tid = self._new_transaction_id()
        request = stun.binding_request(
            username=f"{self.remote_ufrag}:{self.local_ufrag}",
            password=self.remote_pwd,
            priority=self._priority,
            tie_breaker=self.tie_breaker,
            transaction_id=tid,
            use_candidate=True,
        )
        self._pending[tid] = _Transaction(
            tid, addr, request, now, now + self.RTO, self.RTO, 1, consent
        )
        self._outbox.append((request, addr))

    def _pace_checks(self, now: float) -> None:
        # RFC 8445 §6.1.4.2: one new check per Ta.
        if self._next_check_at is None or now < self._next_check_at:
            return
        if self._waiting:
            self._send_check(self._waiting.popleft(), now, consent=False)
        self._next_check_at = now + self.PACING if self._waiting else None

    def _retransmit_or_expire(self, tx: _Transaction, now: float) -> None:
        if tx.transmissions >= self.MAX_TRANSMISSIONS:
            del self._pending[tx.transaction_id]
            self._pair_failed()
            return
        tx.transmissions += 1
        tx.rto *= 2
        # After the last transmission wait Rm initial RTOs, not another doubled RTO.
        wait = tx.rto if tx.transmissions < self.MAX_TRANSMISSIONS else self.LAST_WAIT * self.RTO
        tx.next_at = now + wait
        self._outbox.append((tx.request, tx.addr))

    def _pair_failed(self) -> None:
        if self.state is not IceState.CHECKING:
            return  # a lost consent check is judged by the consent deadline alone
        if not self._pending and not self._waiting:
            self._fail("all candidate pairs failed")

    def _connect(self, addr: Address, now: float) -> None:
        self.state = IceState.CONNECTED
        self.selected = addr
        # The other pairs' checks are moot: stop them (nothing else of theirs is pending).
        self._pending.clear()
        self._waiting.clear()
        self._next_check_at = None
        self._consent_expires_at = now + self.consent_timeout
        self._schedule_consent(now)
        self._events.append(Connected(addr))

    def _schedule_consent(self, now: float) -> None:
        # RFC 7675 §5.1: randomised in [0.8, 1.2] x the interval so peers don't synchronise.
        self._next_consent_at = now + self.consent_interval * self._rng.uniform(0.8, 1.2)

    def _send_consent_check(self, now: float) -> None:
        assert self.selected is not None
        # Forget consent checks too old to renew consent any more.
        horizon = now - self.consent_timeout
        for tid in [k for k, t in self._pending.items() if t.sent_at < horizon]:
            del self._pending[tid]
        self._send_check(self.selected, now, consent=True)
        self._schedule_consent(now)

    def _lose_consent(self) -> None:
        self.state = IceState.CONSENT_LOST
        self._stop()
        self._events.append(ConsentLost(self.selected))

    def _fail(self, reason: str) -> None:
        self.state = IceState.FAILED
        self._stop()
        self._events.append(Failed(reason))

    def _stop(self) -> None:
        self._pending.clear()
        self._waiting.clear()
        self._next_check_at = None
        self._next_consent_at = None
        self._consent_expires_at = None
