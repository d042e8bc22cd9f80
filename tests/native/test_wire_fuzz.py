"""Random garbage and mutated valid messages: every parser raises only `WireError`."""
from hypothesis import HealthCheck, given, settings, strategies as st

from shoal.net.native.wire import WireError, arp, dhcp, ethernet, icmp, ipv4, udp

SEEDS = [
    ethernet.build(b"\xff" * 6, b"\x02" * 6, 0x0806, arp.build(1, b"\x02" * 6, 1, bytes(6), 2)),
    ipv4.build(1, 2, 17, udp.build(1, 2, 68, 67, dhcp.build(1, 9, b"\x02" * 6, [(53, b"\x01")]))),
    ipv4.build(1, 2, 1, icmp.build(8, 0, 5, b"ping")),
]


def _parse_all(data):
    """Run the data through every parser the receive path would, as the stack does."""
    view = memoryview(data)
    for parser in (ethernet.parse, arp.parse, icmp.parse, dhcp.parse):
        try:
            parser(view)
        except WireError:
            pass
    try:
        h, payload = ipv4.parse(view)
        u, body = udp.parse(payload, h.src, h.dst)
        dhcp.parse(body)
    except WireError:
        pass


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=300)
@given(st.binary(max_size=400))
def test_garbage(data):
    _parse_all(data)


@settings(deadline=None, max_examples=300)
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6),
       st.integers(0, 400))
def test_mutations(seed, flips, cut):
    b = bytearray(seed[: max(cut, 0) or len(seed)])
    for pos, val in flips:
        if b:
            b[pos % len(b)] = val
    _parse_all(bytes(b))
    for n in range(0, len(b), 7):  # truncation at many lengths of the mutated message
        _parse_all(bytes(b[:n]))
