"""UDP logic: binding, demultiplexing, checksums, closed ports, errors to endpoints."""
import errno

import pytest

from shoal.net.native.icmp import Icmp
from shoal.net.native.ipv4 import Ipv4
from shoal.net.native.packet import Packet
from shoal.net.native.udp import MAX_PAYLOAD, Udp
from shoal.net.native.wire import ipv4 as wire_ipv4
from shoal.net.native.wire import udp as wire_udp

US, PEER, MASK = 0x0A000001, 0x0A000002, 0xFFFFFF00


class L2:
    def __init__(self):
        self.out = []

    def set_address(self, ip, now):
        pass

    def output(self, packet, next_hop, now, on_error=None):
        self.out.append(bytes(packet.linearize()))
        packet.release()
        return True


class Endpoint:
    def __init__(self):
        self.got, self.errors, self.held = [], [], []

    def datagram_received(self, data, addr, packet):
        self.held.append((data, packet.hold()))
        self.got.append((bytes(data), addr))

    def error_received(self, exc, addr):
        self.errors.append((exc.errno, addr))


def _udp(**kw):
    ip = Ipv4(L2())
    ip.configure(US, MASK, 0, 0.0)
    return ip, Udp(ip, Icmp(ip), **kw)


def _rx(ip, raw, release=None):
    p = Packet.wrap(memoryview(raw), release=release)
    ip.receive(p.frags[0], p, 0.0)
    p.release()


def test_bind_ephemeral_and_conflicts():
    _, udp = _udp(ephemeral=(50000, 50002), first_ephemeral=50001)
    assert [udp.bind(0, object()) for _ in range(3)] == [50001, 50002, 50000]
    with pytest.raises(OSError) as e:
        udp.bind(0, object())
    assert e.value.errno == errno.EADDRINUSE
    udp.unbind(50002)
    assert udp.bind(0, object()) == 50002
    udp.bind(53, object())
    with pytest.raises(OSError):
        udp.bind(53, object())
    # a shard of several takes only the ephemeral ports it owns (`allowed`)
    _, udp = _udp(ephemeral=(50000, 50009), first_ephemeral=50001)
    assert [udp.bind(0, object(), allowed=lambda p: p % 3 == 1) for _ in range(3)] == [50002, 50005, 50008]
    with pytest.raises(OSError):
        udp.bind(0, object(), allowed=lambda p: p % 3 == 1)


def test_demux_delivers_views_of_the_receive_buffer():
    ip, udp = _udp()
    ep = Endpoint()
    udp.bind(2000, ep)
    released = []
    _rx(ip, wire_ipv4.build(PEER, US, 17, wire_udp.build(PEER, US, 1000, 2000, b"data")), release=lambda: released.append(1))
    assert ep.got == [(b"data", (PEER, 1000))]
    assert udp.stats["received"] == 1 and udp.stats["bytes-received"] == 4
    assert released == []  # the endpoint holds the buffer
    data, pkt = ep.held.pop()
    assert bytes(data) == b"data"
    pkt.release()
    assert released == [1]


def test_bad_datagrams_are_counted():
    ip, udp = _udp()
    udp.bind(2000, Endpoint())
    good = wire_udp.build(PEER, US, 1000, 2000, b"data")
    _rx(ip, wire_ipv4.build(PEER, US, 17, good[:-1] + b"x"))
    _rx(ip, wire_ipv4.build(PEER, US, 17, good[:5]))
    assert dict(udp.drops) == {"bad-checksum": 1, "truncated": 1} and ip.l2.out == []


def test_closed_port_gets_icmp_unless_broadcast():
    ip, udp = _udp()
    _rx(ip, wire_ipv4.build(PEER, 0x0A0000FF, 17, wire_udp.build(PEER, 0x0A0000FF, 1, 9, b"")))
    assert ip.l2.out == []
    _rx(ip, wire_ipv4.build(PEER, US, 17, wire_udp.build(PEER, US, 1, 9, b"")))
    assert len(ip.l2.out) == 1 and udp.drops["no-listener"] == 2


def test_send_checksums_and_limits():
    ip, udp = _udp()
    udp.send(4000, PEER, 53, b"query", 0.0)
    h, body = wire_ipv4.parse(memoryview(ip.l2.out[0]))
    u, data = wire_udp.parse(body, h.src, h.dst)
    assert (h.src, h.dst, u.src_port, u.dst_port, bytes(data)) == (US, PEER, 4000, 53, b"query") and u.checksum
    with pytest.raises(OSError) as e:
        udp.send(4000, PEER, 53, bytes(MAX_PAYLOAD + 1), 0.0)
    assert e.value.errno == errno.EMSGSIZE
    assert udp.send(4000, PEER, 53, bytes(MAX_PAYLOAD), 0.0)  # fragments into 45 frames
    assert len(ip.l2.out) == 1 + 45
    assert udp.stats["sent"] == 2 and udp.stats["bytes-sent"] == len(b"query") + MAX_PAYLOAD


def test_icmp_errors_without_socket_or_short_quote():
    from shoal.net.native.icmp import IcmpError

    ip, udp = _udp()
    ep = Endpoint()
    udp.bind(4000, ep)
    inner = wire_ipv4.parse_quoted(memoryview(wire_ipv4.build(US, PEER, 17, b"")))[0]
    udp.icmp_error(IcmpError(3, 3, 0), inner, memoryview(b"\x0f\xa0\x00\x35"), 0.0)
    udp.icmp_error(IcmpError(3, 3, 0), inner, memoryview(b"\x0f\xa1\x00\x35"), 0.0)
    udp.icmp_error(IcmpError(3, 3, 0), inner, memoryview(b"\x0f"), 0.0)
    assert ep.errors == [(errno.ECONNREFUSED, (PEER, 53))]
    assert udp.drops == {"icmp-error-no-socket": 1, "short-icmp-quote": 1}
