"""The TCP layer merges a burst's pure ACKs (`TcpLayer.receive_segment`, `end_burst`).

A pure ACK is held back; the next pure ACK of the same connection that acknowledges
more replaces it and carries the count (`TcpSegment.acks`). Anything else delivers the
held one first, so a connection sees its segments in order, and no duplicate ACK, SACK
block or ECN signal is lost, and no ACK beyond SND.MAX stands for the ones before it.
The rules are checked on the layer with its delivery replaced by a recorder and its
connections by stand-ins that know only their SND.UNA and SND.MAX. (Between two shoal
stacks nothing merges: shoal answers a burst with one ACK. The Linux kernel
acknowledges each super-frame, and `test_stack_tap_gso` shows the merge with it as the
receiver.)
"""
import ipaddress
import random
from types import SimpleNamespace

from shoal.drivers.virtual import VirtualWire
from shoal.net.native.stack import NativeStack
from shoal.net.native.wire import ethernet, ipv4 as wire_ipv4, tcp as wire_tcp, tcp_frame
from shoal.net.native.wire.tcp import ACK, ECE, PSH, TcpSegment
from test_native_tcp_virtual import A_IP, B_IP, MASK, ManualClock, static

A, B = int(ipaddress.IPv4Address(A_IP)), int(ipaddress.IPv4Address(B_IP))
SND_UNA, SND_MAX = 500, 20_000


def recording_layer():
    """B's TCP layer, its `_segment` (connection lookup and delivery) replaced by a log, with
    connections from A's ports 5000 and 5001 that have sent up to SND_MAX."""
    wire = VirtualWire()
    stack = NativeStack(wire.b, static(B_IP), rng=random.Random(1), clock=ManualClock())
    stack.ipv4.configure(B, MASK, 0, 1000.0)
    log = []
    stack.tcp._segment = lambda seg, src, tos, now: log.append((seg.src_port, seg.ack, seg.acks, len(seg.payload)))
    for port in (5000, 5001):
        stack.tcp.conns[(80, A, port)] = SimpleNamespace(
            tcp=SimpleNamespace(acknowledges_new=lambda ack: SND_UNA < ack <= SND_MAX))
    return stack, log


def ack(ack, port=5000, seq=100, ts=1000, flags=ACK, payload=b"", sack=(), window=1000):
    """A segment from A's `port`; ``ts=None``: without a timestamp (a peer that does not use them)."""
    timestamp = None if ts is None else (ts, 7)
    return TcpSegment(port, 80, seq, ack, flags, window, 0, None, None, False, timestamp, sack, payload)


def feed(stack, *segs, tos=0):
    for seg in segs:
        stack.tcp.receive_segment(A, tos, seg, 1000.0)


def test_pure_acks_that_acknowledge_more_merge_into_the_last():
    stack, log = recording_layer()
    feed(stack, ack(1000), ack(2000, window=500), ack(3000, ts=1001, window=4000))
    assert log == []  # held until the burst ends
    stack.tcp.end_burst(1000.0)
    assert log == [(5000, 3000, 3, 0)]
    assert stack.tcp.stats["acks-merged"] == 2
    stack.tcp.end_burst(1000.0)
    assert log == [(5000, 3000, 3, 0)]  # nothing held any more


def test_what_does_not_merge_goes_in_order():
    stack, log = recording_layer()
    feed(stack,
         ack(1000), ack(1000),                  # a duplicate ACK: both are seen
         ack(2000, payload=b"data"),            # text: delivered after the held ACK
         ack(3000), ack(4000, port=5001),       # another connection
         ack(5000, port=5001, seq=101),         # another sequence number
         ack(6000, port=5001, seq=101, ts=999),  # an older timestamp
         ack(7000, port=5001, seq=101, ts=999, sack=((9000, 9100),)),  # SACK blocks
         ack(8000, port=5001, seq=101, ts=999, flags=ACK | ECE),        # ECN echo
         ack(9000, port=5001, seq=101, ts=999, flags=ACK | PSH),        # a flag but ACK
         ack(500, port=5001, seq=101, ts=999), ack(400, port=5001, seq=101, ts=999))  # less
    stack.tcp.end_burst(1000.0)
    assert log == [(5000, 1000, 1, 0), (5000, 1000, 1, 0), (5000, 2000, 1, 4),
                   (5000, 3000, 1, 0), (5001, 4000, 1, 0), (5001, 5000, 1, 0), (5001, 6000, 1, 0),
                   (5001, 7000, 1, 0), (5001, 8000, 1, 0), (5001, 9000, 1, 0),
                   (5001, 500, 1, 0), (5001, 400, 1, 0)]
    assert stack.tcp.stats["acks-merged"] == 0
    # and an ACK beyond SND.MAX (dropped by the connection: it cannot stand for the valid
    # one before it), one from another address, one with another TOS
    feed(stack, ack(1000), ack(SND_MAX + 1), ack(SND_MAX + 2))
    stack.tcp.end_burst(1000.0)
    assert [entry[1:3] for entry in log[-3:]] == [(1000, 1), (SND_MAX + 1, 1), (SND_MAX + 2, 1)]
    feed(stack, ack(1000))
    stack.tcp.receive_segment(A + 1, 0, ack(2000), 1000.0)
    feed(stack, ack(3000, port=5000), tos=4)
    stack.tcp.end_burst(1000.0)
    assert [entry[1:3] for entry in log[-3:]] == [(1000, 1), (2000, 1), (3000, 1)]


def test_acks_without_timestamps_merge_and_one_with_a_timestamp_does_not_join_them():
    """A peer that does not use timestamps (Windows, by default) sends segments without
    options, which the stack also parses in one unpack. Its pure ACKs merge as others do;
    a timestamp on one of them only (a peer that should not do that, RFC 7323 3.2) keeps
    them apart."""
    stack, log = recording_layer()
    feed(stack, ack(1000, ts=None), ack(2000, ts=None), ack(3000, ts=None))
    stack.tcp.end_burst(1000.0)
    assert log == [(5000, 3000, 3, 0)]
    feed(stack, ack(4000, ts=None), ack(5000), ack(6000, ts=None))
    stack.tcp.end_burst(1000.0)
    assert log[1:] == [(5000, 4000, 1, 0), (5000, 5000, 1, 0), (5000, 6000, 1, 0)]


def one_pack_frame(stack, seg):
    frame = ethernet.build(stack.mac, b"\x02\x00\x00\x00\x00\x01", ethernet.ETHERTYPE_IPV4,
                           wire_ipv4.build(A, B, wire_ipv4.PROTO_TCP, wire_tcp.build(seg, A, B)))
    return memoryview(frame)


def test_the_stack_ends_each_burst_and_the_long_way_delivers_the_held_ack_first():
    stack, log = recording_layer()
    held = ack(1000)
    with_sack = ack(2000, sack=((3000, 3100),))
    assert tcp_frame.parse(one_pack_frame(stack, held), stack.mac, B, True) is not None
    assert tcp_frame.parse(one_pack_frame(stack, with_sack), stack.mac, B, True) is None  # the long way
    stack.receive_frames([one_pack_frame(stack, held), one_pack_frame(stack, with_sack)])
    assert [entry[1] for entry in log] == [1000, 2000]
    stack.receive_frames([one_pack_frame(stack, ack(3000)), one_pack_frame(stack, ack(4000))])
    assert log[2:] == [(5000, 4000, 2, 0)]  # merged, and delivered when the burst ended
    plain = [one_pack_frame(stack, ack(n, ts=None)) for n in (5000, 6000)]
    assert tcp_frame.parse(plain[0], stack.mac, B, True) is not None  # (no options: one unpack too)
    stack.receive_frames(plain)
    assert log[3:] == [(5000, 6000, 2, 0)]

