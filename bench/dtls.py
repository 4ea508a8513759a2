"""CPU cost per data-channel record of the DTLS transport after the handshake (issue 10).

Two :class:`~trio_sfu.proto.dtls.DtlsTransport` s connected in memory (this process); per payload
size, the bench times, in CPU microseconds (``time.process_time``) per record:

* **send**: ``send(payload)`` then ``datagrams_to_send()``: one SCTP packet out, as the peer
  core's pump does it;
* **receive**: ``receive_datagram(datagram)`` then ``next_event()`` on datagrams the other side
  wrote beforehand (outside the timed region), each read once, as the core does.

It reports which record layer ran (ours after the handshake, or OpenSSL's), so the same command
with ``PYTHONPATH`` pointing at another source tree gives the before/after figures, and the
floor of this run (``bench.floor.measure_floor``: one raw 1200-byte ``sendto`` plus one SRTP GCM
protect) for scale. Nothing is asserted; loops are bounded by a record count.

Run from the repository root: ``.venv/bin/python -m bench.dtls [records]``
"""

from __future__ import annotations

import os
import sys
import time

from bench.floor import measure_floor
from trio_sfu.proto.dtls import ApplicationData, Certificate, DtlsTransport, HandshakeComplete

SIZES = (100, 1100)  # a SACK-sized and an MTU-sized SCTP packet


def connected() -> tuple[DtlsTransport, DtlsTransport]:
    a_cert, b_cert = Certificate.generate(), Certificate.generate()
    client = DtlsTransport(a_cert, is_server=False, remote_fingerprints=b_cert.fingerprints)
    server = DtlsTransport(b_cert, is_server=True, remote_fingerprints=a_cert.fingerprints)
    server.start(0.0)
    client.start(0.0)
    moved = True
    while moved:
        moved = False
        for src, dst in ((client, server), (server, client)):
            for datagram in src.datagrams_to_send():
                moved = True
                dst.receive_datagram(datagram, 0.0)
    for t in (client, server):
        assert isinstance(t.next_event(), HandshakeComplete)
    return client, server


def measure(records: int, size: int) -> tuple[float, float]:
    """(send µs, receive µs) of CPU time per record."""
    sender, receiver = connected()
    payload = os.urandom(size)
    start = time.process_time()
    datagrams = []
    for _ in range(records):
        sender.send(payload)
        datagrams += sender.datagrams_to_send()
    send = time.process_time() - start
    assert len(datagrams) == records
    start = time.process_time()
    for datagram in datagrams:
        receiver.receive_datagram(datagram, 0.0)
        event = receiver.next_event()
    receive = time.process_time() - start
    assert isinstance(event, ApplicationData) and event.data == payload
    return send / records * 1e6, receive / records * 1e6


def main() -> None:
    records = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    client, _ = connected()
    layer = "ours" if getattr(client, "uses_own_record_layer", False) else "OpenSSL's"
    floor_cpu, _ = measure_floor()
    print(f"record layer after the handshake: {layer}; {records} records per figure")
    print(f"floor (raw sendto 1200 B + GCM protect): {floor_cpu:.2f} µs CPU per datagram")
    for size in SIZES:
        measure(records // 10, size)  # warm-up
        send, receive = measure(records, size)
        print(f"  {size:5d} B: send {send:5.2f} µs/record, receive {receive:5.2f} µs/record")


if __name__ == "__main__":
    main()
