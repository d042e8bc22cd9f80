"""A listener under a SYN flood: CPU per SYN, sans I/O.

    python bench/syn_flood.py [--syns 20000] [--half-open 256] [--rounds 5]

A `Listener` with ``--half-open`` places (the TCP layer's `MAX_HALF_OPEN`) takes
``--syns`` SYNs from distinct spoofed sources, each followed by what the TCP layer asks
after every segment (`poll_at`, `wants_transmit`) and the transmit pull that sends its
answer. The first SYNs fill the half-open table (a `Connection` each, answered with a
SYN,ACK); the rest are answered with SYN cookies, statelessly. Segments are parsed
once before the clock starts: what is timed is the listener's work, not the wire's.
Prints the microseconds per SYN of each phase, the best of ``--rounds``.
"""
from __future__ import annotations

import argparse
import datetime
import random
import time

from shoal.net.native.tcp.connection import TcpConfig
from shoal.net.native.tcp.isn import IsnGenerator
from shoal.net.native.tcp.listener import Listener
from shoal.net.native.wire import tcp as wire
from shoal.net.native.wire.tcp import SYN, TcpSegment

LOCAL = (0x0A000002, 80)


def syns(n, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        remote = (0x0A000000 | rng.getrandbits(16) << 8 | 1, rng.randrange(1024, 65536))
        seg = TcpSegment(remote[1], 80, seq=rng.getrandbits(32), flags=SYN, window=65535, mss=1460,
                         sack_permitted=True, timestamp=(rng.getrandbits(32), 0), wscale=7)
        out.append((remote, wire.parse(bytes(wire.build(seg, remote[0], LOCAL[0])), remote[0], LOCAL[0])))
    return out


def flood(segments, half_open):
    """(seconds for the SYNs that fill the table, seconds for the rest), answered."""
    listener = Listener(TcpConfig(), LOCAL, IsnGenerator(b"bench-syn-flood!"), max_half_open=half_open)
    now = 100.0
    times = []
    for part in (segments[:half_open], segments[half_open:]):
        start = time.perf_counter()
        for remote, seg in part:
            listener.segment_arrived(seg, remote, now)
            listener.poll_at()
            if listener.wants_transmit():
                listener.transmit(now)
        times.append(time.perf_counter() - start)
    assert len(listener.half_open) == half_open
    assert listener.counters["syncookie-sent"] == len(segments) - half_open
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--syns", type=int, default=20000)
    parser.add_argument("--half-open", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    if args.syns <= args.half_open:
        parser.error("--syns must be more than --half-open (the cookies are the flood)")
    segments = syns(args.syns, 1)
    best = [min(t) for t in zip(*(flood(segments, args.half_open) for _ in range(args.rounds)))]
    cookies = args.syns - args.half_open
    print(f"# SYN flood on a listener ({datetime.datetime.now().isoformat(timespec='seconds')}, "
          f"{args.syns} SYNs, {args.half_open} half-open places, best of {args.rounds})\n")
    print("| phase | SYNs | us per SYN |")
    print("|---|---|---|")
    print(f"| filling the half-open table (a connection each) | {args.half_open} | "
          f"{1e6 * best[0] / args.half_open:.1f} |")
    print(f"| table full: SYN cookies | {cookies} | {1e6 * best[1] / cookies:.1f} |")


if __name__ == "__main__":
    main()
