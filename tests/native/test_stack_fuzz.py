"""Untrusted frames into the stack's receive path: nothing escapes, every drop is counted."""
import ipaddress
import random

from hypothesis import given, settings, strategies as st

from shoal.drivers.virtual import VirtualWire
from shoal.net.native.config import NativeConfig
from shoal.net.native.stack import NativeStack
from shoal.net.native.wire import ethernet, ipv4 as wire_ipv4

OUR_IP = int(ipaddress.IPv4Address("10.5.0.2"))
PEER_IP = int(ipaddress.IPv4Address("10.5.0.1"))
PEER_MAC = b"\x02\x00\x00\x00\x00\x01"


def make_stack():
    wire = VirtualWire(capacity=100_000)
    clock = iter(range(10**9)).__next__
    stack = NativeStack(wire.a, NativeConfig("x", False, OUR_IP, 0xFFFFFF00, None), clock=lambda: float(clock()),
                        rng=random.Random(0))
    stack.ipv4.configure(OUR_IP, 0xFFFFFF00, 0, stack.now())
    return stack


def total_drops(stack):
    counters = stack.counters()
    return sum(sum(layer["drops"].values()) for layer in counters.values())


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=120), max_size=8))
def test_random_frames_never_raise(frames):
    stack = make_stack()
    stack.receive_frames(frames)
    assert stack.stats["rx-frames"] == len(frames)


ip_payload = st.one_of(
    st.binary(max_size=80),
    st.builds(lambda proto, body, ident, frag: wire_ipv4.build(PEER_IP, OUR_IP, proto, body, ident=ident,
                                                               mf=frag & 1 == 1, frag_offset=(frag >> 1) * 8),
              st.sampled_from([1, 6, 17, 99]), st.binary(max_size=64), st.integers(0, 3), st.integers(0, 7)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([ethernet.ETHERTYPE_IPV4, ethernet.ETHERTYPE_ARP]), ip_payload),
                min_size=1, max_size=8))
def test_well_addressed_garbage_is_dropped_or_handled(frames):
    stack = make_stack()
    raw = [ethernet.build(stack.mac, PEER_MAC, etype, payload) for etype, payload in frames]
    stack.receive_frames(raw)
    stack.service_timers()
    handled = (stack.ipv4.stats["delivered"] + stack.arp.stats["not-for-us"] + stack.arp.stats["replies-sent"]
               + stack.ipv4.reassemblies)
    assert total_drops(stack) + handled >= 1
