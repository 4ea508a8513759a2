"""Decodes the VP8 RTP a codec-less peer receives (werift, node-datachannel), with PyAV.

The peer script (``tests/peers/node_peers/common.mjs``) starts this process and forwards every
VP8 RTP packet its WebRTC stack hands it (after SRTP) to the UDP port printed here. Packets are
depacketized here (RFC 3550 §5.1 header, RFC 7741 §4 payload descriptor), one stream per SSRC,
and each complete frame is decoded by libvpx through PyAV: a frame counts only if it decodes,
and after a loss nothing counts until the next keyframe.

Lines on stdout: ``{"type": "port", "port": N}`` first, then ``{"type": "decoded", "ssrc":
{"<ssrc>": frames, ...}}`` whenever a count changed (at most every 0.25 s). It exits when stdin
closes. Imports nothing from trio_sfu; run with the project's virtualenv (PyAV: the test extra).
"""

from __future__ import annotations

import json
import select
import socket
import sys
import time

REPORT_EVERY = 0.25


class Stream:
    """One SSRC: frame reassembly by RTP timestamp and marker, decoding with libvpx."""

    def __init__(self) -> None:
        import av

        self.codec = av.CodecContext.create("vp8", "r")
        self.decoded = 0
        self.parts: list[bytes] = []
        self.timestamp: int | None = None
        self.next_seq: int | None = None
        self.need_keyframe = True

    def feed(self, packet: bytes) -> None:
        parsed = rtp(packet)
        if parsed is None:
            return
        seq, timestamp, marker, payload = parsed
        if not payload:
            return
        start, body = vp8_descriptor(payload)
        if start:
            self.parts = [body]
            self.timestamp = timestamp
        elif self.parts and seq == self.next_seq and timestamp == self.timestamp:
            self.parts.append(body)
        else:
            if self.parts:
                self.need_keyframe = True  # a frame lost a packet
            self.parts = []
        self.next_seq = (seq + 1) & 0xFFFF
        if marker and self.parts:
            frame = b"".join(self.parts)
            self.parts = []
            self.decode(frame)

    def decode(self, frame: bytes) -> None:
        import av

        keyframe = bool(frame) and not frame[0] & 0x01  # RFC 6386 §9.1: P bit 0
        if self.need_keyframe and not keyframe:
            return
        try:
            pictures = self.codec.decode(av.Packet(frame))
        except av.error.FFmpegError:
            self.need_keyframe = True
            return
        self.need_keyframe = False
        self.decoded += len(pictures)


def rtp(packet: bytes) -> tuple[int, int, bool, bytes] | None:
    """(sequence number, timestamp, marker, payload), per RFC 3550 §5.1 and §5.3.1."""
    if len(packet) < 12 or packet[0] >> 6 != 2:
        return None
    pos = 12 + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10:
        if len(packet) < pos + 4:
            return None
        pos += 4 + 4 * int.from_bytes(packet[pos + 2 : pos + 4], "big")
    end = len(packet) - (packet[-1] if packet[0] & 0x20 else 0)
    if pos > end:
        return None
    return (int.from_bytes(packet[2:4], "big"), int.from_bytes(packet[4:8], "big"),
            bool(packet[1] & 0x80), packet[pos:end])


def vp8_descriptor(payload: bytes) -> tuple[bool, bytes]:
    """(starts a frame, VP8 data) from the RFC 7741 §4.2 payload descriptor."""
    first = payload[0]
    pos = 1
    if first & 0x80 and len(payload) > 1:  # X
        ext = payload[1]
        pos = 2
        if ext & 0x80:  # I: 7- or 15-bit PictureID
            pos += 2 if len(payload) > pos and payload[pos] & 0x80 else 1
        if ext & 0x40:  # L
            pos += 1
        if ext & 0x30:  # T or K
            pos += 1
    return bool(first & 0x10) and (first & 0x07) == 0, payload[pos:]


def main() -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("127.0.0.1", 0))
    out = sys.stdout
    out.write(json.dumps({"type": "port", "port": sock.getsockname()[1]}) + "\n")
    out.flush()
    streams: dict[int, Stream] = {}
    reported: dict[int, int] = {}
    last = 0.0
    stdin = sys.stdin.fileno()
    while True:
        ready, _, _ = select.select([sock, stdin], [], [], REPORT_EVERY)
        if stdin in ready:
            import os

            if not os.read(stdin, 4096):
                return 0
        if sock in ready:
            for _ in range(256):  # drain what is there, bounded
                try:
                    packet = sock.recv(65536, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                if len(packet) < 12:
                    continue
                ssrc = int.from_bytes(packet[8:12], "big")
                stream = streams.get(ssrc)
                if stream is None:
                    stream = streams[ssrc] = Stream()
                stream.feed(packet)
        now = time.monotonic()
        counts = {ssrc: s.decoded for ssrc, s in streams.items()}
        if counts != reported and now - last >= REPORT_EVERY:
            reported, last = counts, now
            line = {"type": "decoded", "ssrc": {str(k): v for k, v in counts.items()}}
            out.write(json.dumps(line) + "\n")
            out.flush()


if __name__ == "__main__":
    sys.exit(main())
