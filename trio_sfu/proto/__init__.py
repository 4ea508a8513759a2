"""Sans-IO protocol cores: bytes and time in; datagrams, events and deadlines out.

Nothing in this package opens a socket, reads a clock or imports Trio, so every core can be
driven by tests and Hypothesis directly, and by the Trio drivers in :mod:`trio_sfu.rtc`.
"""
