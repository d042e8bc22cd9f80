"""ICMP logic: echo replies, error generation rules (RFC 1122 3.2.2), rate limit, error delivery."""
import errno

from shoal.net.native.icmp import Icmp, IcmpError
from shoal.net.native.ipv4 import Ipv4
from shoal.net.native.packet import Packet
from shoal.net.native.wire import icmp as wire_icmp
from shoal.net.native.wire import ipv4 as wire_ipv4
from shoal.net.native.wire import udp as wire_udp

US, PEER, MASK = 0x0A000001, 0x0A000002, 0xFFFFFF00


class HoldingL2:
    """Keeps sent packets (like a driver queue) so that tests can check buffer lifetimes."""

    def __init__(self):
        self.out = []

    def set_address(self, ip, now):
        pass

    def output(self, packet, next_hop, now, on_error=None):
        self.out.append(packet)
        return True

    def sent(self):
        msgs = []
        for p in self.out:
            h, body = wire_ipv4.parse(p.linearize())
            msgs.append((h, wire_icmp.parse(body)))
        return msgs


def _icmp(**kw):
    ip = Ipv4(HoldingL2())
    ip.configure(US, MASK, 0, 0.0)
    return ip, Icmp(ip, **kw)


def _rx(ip, raw, now=0.0, release=None):
    p = Packet.wrap(memoryview(raw), release=release)
    ip.receive(p.frags[0], p, now)
    p.release()


def test_echo_reply_reuses_request_memory_until_sent():
    ip, icmp = _icmp()
    released = []
    _rx(ip, wire_ipv4.build(PEER, US, 1, wire_icmp.build(8, 0, 0x00050001, b"payload"), tos=0x20),
        release=lambda: released.append(1))
    assert released == []  # the reply still references the request's buffer
    (h, m), = ip.l2.sent()
    assert (h.src, h.dst, h.tos, m.type, m.rest, bytes(m.payload)) == (US, PEER, 0x20, 0, 0x00050001, b"payload")
    ip.l2.out[0].release()
    assert released == [1]


def test_broadcast_echo_and_unknown_types_are_ignored():
    ip, icmp = _icmp()
    _rx(ip, wire_ipv4.build(PEER, 0xFFFFFFFF, 1, wire_icmp.build(8, 0, 1, b"")))
    _rx(ip, wire_ipv4.build(PEER, US, 1, wire_icmp.build(13, 0, 1, bytes(12))))  # timestamp
    _rx(ip, wire_ipv4.build(PEER, US, 1, wire_icmp.build(8, 0, 1, b"")[:-1] + b"\x02"))
    _rx(ip, wire_ipv4.build(PEER, US, 1, b"\x08\x00"))
    assert ip.l2.out == []
    assert dict(icmp.drops) == {"broadcast-echo": 1, "unhandled-type-13": 1, "bad-checksum": 1, "truncated": 1}


def _udp_datagram(src=PEER, dst=US, **kw):
    return wire_ipv4.build(src, dst, 17, wire_udp.build(src, dst, 1000, 2000, b"data"), **kw)


def test_port_unreachable_quotes_datagram():
    ip, icmp = _icmp()
    raw = _udp_datagram()
    h, _ = wire_ipv4.parse(memoryview(raw))
    icmp.port_unreachable(h, memoryview(raw), 0.0)
    (oh, m), = ip.l2.sent()
    assert (oh.dst, m.type, m.code, bytes(m.payload)) == (PEER, 3, 3, raw)


def test_error_generation_rules():
    ip, icmp = _icmp()
    cases = [
        _udp_datagram(dst=0xFFFFFFFF),  # to broadcast
        _udp_datagram(src=0),  # from a non-unicast source
        _udp_datagram(src=0x7F000001),
        wire_ipv4.build(PEER, US, 17, bytes(16), mf=False, frag_offset=8),  # non-initial fragment
        wire_ipv4.build(PEER, US, 1, wire_icmp.build(3, 3, 0, bytes(28))),  # an ICMP error
    ]
    for raw in cases:
        h = wire_ipv4.parse_quoted(memoryview(raw))[0]
        icmp.port_unreachable(h, memoryview(raw), 0.0)
    assert ip.l2.out == [] and icmp.stats["error-suppressed"] == len(cases)
    ping = wire_ipv4.build(PEER, US, 1, wire_icmp.build(8, 0, 0, b""))
    icmp.protocol_unreachable(wire_ipv4.parse(memoryview(ping))[0], memoryview(ping), 0.0)
    assert len(ip.l2.out) == 1  # an error about an echo request is fine


def test_rate_limit_token_bucket():
    ip, icmp = _icmp(rate=10.0, burst=3)
    raw = _udp_datagram()
    h, _ = wire_ipv4.parse(memoryview(raw))
    for _ in range(5):
        icmp.port_unreachable(h, memoryview(raw), 0.0)
    assert len(ip.l2.out) == 3 and icmp.stats["error-rate-limited"] == 2
    icmp.port_unreachable(h, memoryview(raw), 0.05)
    assert len(ip.l2.out) == 3
    icmp.port_unreachable(h, memoryview(raw), 0.1)
    assert len(ip.l2.out) == 4


def _error_about(inner_src, inner_proto, typ, code, rest=0, transport=b"\x13\x88\x00\x07\x00\x00\x00\x00"):
    quoted = wire_ipv4.build(inner_src, PEER, inner_proto, transport)
    return wire_ipv4.build(PEER, US, 1, wire_icmp.build(typ, code, rest, quoted))


def test_incoming_errors_reach_the_owning_protocol():
    ip, icmp = _icmp()
    seen = []
    icmp.error_handlers[17] = lambda exc, inner, rest, now: seen.append((exc, inner.dst, bytes(rest[:4])))
    _rx(ip, _error_about(US, 17, 3, 3))
    _rx(ip, _error_about(US, 17, 3, 4, rest=1400))
    _rx(ip, _error_about(US, 17, 11, 0))
    _rx(ip, _error_about(US, 17, 12, 0))
    _rx(ip, _error_about(0x0A000009, 17, 3, 3))  # about a datagram someone else sent
    _rx(ip, _error_about(US, 6, 3, 3))  # nobody registered for TCP
    _rx(ip, wire_ipv4.build(PEER, US, 1, wire_icmp.build(3, 1, 0, b"\x45\x00")))
    codes = [(e.errno, e.icmp_type, e.icmp_code, e.next_hop_mtu) for e, _, _ in seen]
    assert codes == [(errno.ECONNREFUSED, 3, 3, None), (errno.EMSGSIZE, 3, 4, 1400),
                     (errno.EHOSTUNREACH, 11, 0, None), (errno.EPROTO, 12, 0, None)]
    assert all(isinstance(e, IcmpError) and d == PEER and r == b"\x13\x88\x00\x07" for e, d, r in seen)
    assert icmp.drops["error-not-about-us"] == 1 and icmp.drops["error-unclaimed"] == 1
    assert icmp.drops["truncated"] == 1


def test_ping_request_and_reply_handler():
    ip, icmp = _icmp()
    icmp.echo_request(PEER, 3, 4, b"abc", 0.0)
    (h, m), = ip.l2.sent()
    assert (h.dst, m.type, m.echo_id, m.echo_seq) == (PEER, 8, 3, 4)
    got = []
    icmp.echo_reply_handler = lambda hdr, m, now: got.append(m.echo_seq)
    _rx(ip, wire_ipv4.build(PEER, US, 1, wire_icmp.build(0, 0, (3 << 16) | 4, b"abc")))
    assert got == [4]
