"""Stream reset (RFC 6525) as data channels use it (RFC 8831 §6.7).

Closing a channel resets the *outgoing* stream of the closing side; the other side, seeing its
incoming stream reset, resets its own outgoing stream of the same id. A stream is free for reuse
once both directions are reset, and that is the moment we report it. One outgoing request is in
flight at a time (§5.1.1); streams asked for meanwhile wait, as do streams whose queued messages
have not all been given TSNs yet (the request names our last assigned TSN, §4.1).
"""

from __future__ import annotations

from .chunks import (
    RESULT_DENIED,
    RESULT_ERROR_BAD_SEQUENCE,
    RESULT_IN_PROGRESS,
    RESULT_SUCCESS_NOTHING,
    RESULT_SUCCESS_PERFORMED,
    OutgoingResetRequest,
    ReconfigChunk,
    ReconfigParam,
    ReconfigResponse,
)
from .receiver import Receiver
from .sender import U32, Sender

_MAX_PER_REQUEST = 256  # keeps one request well inside a 1200-byte packet


class StreamResets:
    def __init__(self, *, local_initial_tsn: int, peer_initial_tsn: int) -> None:
        self._next_seq = local_initial_tsn & U32  # §4.1: starts at our initial TSN
        self._peer_last_seq = (peer_initial_tsn - 1) & U32
        self._peer_last_result = RESULT_SUCCESS_PERFORMED
        self._queued: dict[int, None] = {}  # streams we want reset, in request order
        self._request: OutgoingResetRequest | None = None
        self._requested: frozenset[int] = frozenset()
        self._resend = False
        self.deadline: float | None = None
        self._responses: list[ReconfigParam] = []
        self._out_done: set[int] = set()
        self._in_done: set[int] = set()
        self.completed: list[list[int]] = []  # streams reset both ways, for StreamsReset events

    def resetting(self, stream_id: int) -> bool:
        """True while our outgoing side of the stream is closing or closed awaiting the peer."""
        return (
            stream_id in self._queued
            or stream_id in self._out_done
            or stream_id in self._requested
        )

    def has_work(self) -> bool:
        return bool(self._responses or self._queued or (self._request and self._resend))

    def request(self, streams: list[int]) -> None:
        for sid in streams:
            if not self.resetting(sid):
                self._queued[sid] = None

    # --- incoming chunk --------------------------------------------------------------------

    def on_chunk(
        self, chunk: ReconfigChunk, sender: Sender, receiver: Receiver, now: float
    ) -> None:
        for p in chunk.params:
            if isinstance(p, ReconfigResponse):
                self._on_response(p, sender, now)
                continue
            seq = p.request_seq
            result = self._cached_result(seq)
            if result is None:
                if isinstance(p, OutgoingResetRequest):
                    result = self._peer_outgoing(p, receiver)
                else:
                    # We only reset streams we close ourselves; everything else is declined.
                    result = RESULT_DENIED
                self._peer_last_seq = seq
                self._peer_last_result = result
            self._responses.append(ReconfigResponse(seq, result))

    def _cached_result(self, seq: int) -> int | None:
        """§5.2.1 sequence checks: None means "evaluate this request"."""
        if seq == (self._peer_last_seq + 1) & U32:
            return None
        if seq == self._peer_last_seq:
            if self._peer_last_result == RESULT_IN_PROGRESS:
                return None  # re-evaluate a deferred reset
            return self._peer_last_result  # a retransmission gets the same answer
        return RESULT_ERROR_BAD_SEQUENCE

    def _peer_outgoing(self, req: OutgoingResetRequest, receiver: Receiver) -> int:
        """§5.2.2: reset our incoming streams now, or once every TSN up to the peer's last."""
        if receiver.reset_incoming(req.last_tsn, req.streams):
            return RESULT_SUCCESS_PERFORMED
        return RESULT_IN_PROGRESS

    def _on_response(self, resp: ReconfigResponse, sender: Sender, now: float) -> None:
        req = self._request
        if req is None or resp.response_seq != req.request_seq:
            return
        self._next_seq = (self._next_seq + 1) & U32
        if resp.result == RESULT_IN_PROGRESS:
            # §5.2.7: ask again later, with a new request sequence number (as dcsctp does).
            self._request = OutgoingResetRequest(
                self._next_seq, self._peer_last_seq, req.last_tsn, req.streams
            )
            self._resend = False
            self.deadline = now + sender.rto
            return
        self._request = None
        self._requested = frozenset()
        self.deadline = None
        if resp.result in (RESULT_SUCCESS_PERFORMED, RESULT_SUCCESS_NOTHING):
            for sid in req.streams:
                sender.reset_stream(sid)
        # On refusal the channel is closed anyway: the application asked for it.
        self._out_done.update(req.streams)
        self._match(req.streams)

    # --- receiver callbacks ----------------------------------------------------------------

    def incoming_reset(self, streams: list[int]) -> None:
        """The peer reset its outgoing side: reset ours too (RFC 8831 §6.7)."""
        self._in_done.update(streams)
        self.request(streams)
        self._match(streams)

    def _match(self, streams: list[int]) -> None:
        done = [s for s in streams if s in self._in_done and s in self._out_done]
        if done:
            self._in_done.difference_update(done)
            self._out_done.difference_update(done)
            self.completed.append(sorted(done))

    # --- transmission ----------------------------------------------------------------------

    def on_timeout(self, now: float, rto: float) -> None:
        """No response within RTO: send the same request again (§5.1.1)."""
        self.deadline = now + rto if self._request is not None else None
        self._resend = self._request is not None

    def poll(self, now: float, sender: Sender) -> ReconfigChunk | None:
        params: list[ReconfigParam] = self._responses[:2]
        del self._responses[:2]
        req = self._request
        if req is None and self._queued:
            ready = [s for s in self._queued if sender.drained(s)][:_MAX_PER_REQUEST]
            if ready:
                for s in ready:
                    del self._queued[s]
                self._requested = frozenset(ready)
                req = self._request = OutgoingResetRequest(
                    self._next_seq, self._peer_last_seq, (sender.next_tsn - 1) & U32, ready
                )
                self._resend = True
                self.deadline = now + sender.rto
        if req is not None and self._resend and len(params) < 2:
            self._resend = False
            params.append(req)
        return ReconfigChunk(params) if params else None
