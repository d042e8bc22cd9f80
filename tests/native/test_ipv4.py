"""IPv4 protocol logic with a fake clock: routing, delivery, fragmentation, reassembly safety."""
import errno
import random

import pytest
from hypothesis import given, settings, strategies as st

from shoal.net.native.arp import BROADCAST_IP
from shoal.net.native.icmp import Icmp
from shoal.net.native.ipv4 import Ipv4
from shoal.net.native.packet import Packet
from shoal.net.native.wire import icmp as wire_icmp
from shoal.net.native.wire import WireError
from shoal.net.native.wire import ipv4 as wire_ipv4
from shoal.net.native.wire import tcp as wire_tcp

US, PEER, GW, FAR = 0x0A000001, 0x0A000002, 0x0A0000FE, 0x08080808
MASK = 0xFFFFFF00


class FakeL2:
    """Records what IPv4 hands to the link layer and releases it, as a driver would."""

    def __init__(self):
        self.out = []
        self.address = None

    def set_address(self, ip, now):
        self.address = ip

    def output(self, packet, next_hop, now, on_error=None):
        self.out.append((bytes(packet.linearize()), next_hop))
        packet.release()
        return True


def _ip(mtu=1500, address=US, **kw):
    ip = Ipv4(FakeL2(), mtu=mtu, **kw)
    ip.configure(address, MASK, GW, 0.0)
    got = []
    ip.handlers[17] = lambda hdr, dgram, pkt, now: got.append((hdr, bytes(dgram[hdr.header_len :])))
    return ip, got


def _rx(ip, raw, now=0.0):
    p = Packet.wrap(memoryview(raw))
    ip.receive(p.frags[0], p, now)
    p.release()


def _frag(data, offset, mf, ident=7, src=PEER, dst=US, proto=17):
    return wire_ipv4.build(src, dst, proto, data, ident=ident, mf=mf, frag_offset=offset)


def test_configure_and_routes():
    ip, _ = _ip()
    assert ip.l2.address == US
    assert ip.route(PEER) == PEER
    assert ip.route(FAR) == GW
    assert ip.route(BROADCAST_IP) == BROADCAST_IP and ip.route(0x0A0000FF) == BROADCAST_IP
    assert ip.route(0xE0000001) is None  # multicast is not supported
    ip.configure(US, MASK, 0, 0.0)
    assert ip.route(FAR) is None
    ip.configure(US, 0xFFFFFFFF, 0, 0.0)
    assert not ip.is_broadcast(US)
    with pytest.raises(ValueError):
        ip.configure(US, MASK, FAR, 0.0)
    with pytest.raises(ValueError):
        Ipv4(FakeL2(), mtu=60)
    with pytest.raises(ValueError):
        Ipv4(FakeL2(), ttl=0)
    with pytest.raises(ValueError):
        ip.send(Packet(b"x"), PEER, 17, 0.0, ttl=256)


def test_send_builds_header_and_increments_ident():
    ip, _ = _ip(ident=0xFFFF)
    assert ip.send(Packet(b"abc"), FAR, 17, 0.0, ttl=5, tos=0x10)
    assert ip.send(Packet(b"abc"), PEER, 17, 0.0)
    (raw1, hop1), (raw2, hop2) = ip.l2.out
    h1, p1 = wire_ipv4.parse(memoryview(raw1))
    h2, _ = wire_ipv4.parse(memoryview(raw2))
    assert (hop1, hop2) == (GW, PEER)
    assert (h1.src, h1.dst, h1.ttl, h1.tos, h1.ident, bytes(p1)) == (US, FAR, 5, 0x10, 0xFFFF, b"abc")
    assert (h2.ttl, h2.ident) == (64, 0)


def test_send_without_route_fails_with_enetunreach():
    ip = Ipv4(FakeL2())
    errors, released = [], []
    assert not ip.send(Packet(b"x", release=lambda: released.append(1)), PEER, 17, 0.0, on_error=errors.append)
    assert [e.errno for e in errors] == [errno.ENETUNREACH] and released == [1]
    assert ip.tx_drops["no-route"] == 1
    assert ip.send(Packet(b"x"), BROADCAST_IP, 17, 0.0)  # unconfigured broadcast works (DHCP)
    h, _ = wire_ipv4.parse(memoryview(ip.l2.out[0][0]))
    assert h.src == 0 and h.dst == BROADCAST_IP


def test_fragmentation_shares_payload_and_reassembles():
    payload = bytes(random.Random(1).randbytes(4000))
    released = []
    ip, _ = _ip(mtu=1500)
    ip.send(Packet(payload, release=lambda: released.append(1)), PEER, 17, 0.0)
    assert released == [1]  # every fragment was released by the link layer, then the original
    hdrs = [wire_ipv4.parse(memoryview(raw))[0] for raw, _ in ip.l2.out]
    assert [(h.frag_offset, h.mf, h.total_len) for h in hdrs] == [(0, True, 1500), (1480, True, 1500), (2960, False, 1060)]
    assert len({h.ident for h in hdrs}) == 1
    rx, got = _ip(address=PEER)
    for raw, _ in reversed(ip.l2.out):
        _rx(rx, raw)
    (h, data), = got
    assert data == payload and h.total_len == 4020 and not h.mf and rx.memory_used == 0 and rx.reassemblies == 0


def test_a_segment_left_to_the_device_to_checksum_is_finished_before_it_is_fragmented():
    """A TCP segment whose checksum field holds the pseudo-header sum (`Packet.checksum_partial`,
    for a device with ``tx_checksum``) cannot be finished by the device once cut into
    fragments: IPv4 finishes it first, and the reassembled segment verifies."""
    payload = bytes(random.Random(2).randbytes(3000))
    seg = wire_tcp.TcpSegment(40000, 80, 1, 2, wire_tcp.ACK, 100, timestamp=(3, 4), payload=payload)
    ip, _ = _ip(mtu=1500)
    pkt = Packet(payload)
    pkt.checksum_partial = True
    wire_tcp.emit_header(pkt.buf, pkt.prepend(32), seg, US, PEER, None, True)
    assert not _tcp_ok(bytes(pkt.linearize()), US, PEER)  # partial: no receiver would take it
    ip.send(pkt, PEER, 6, 0.0)
    assert len(ip.l2.out) == 3
    rx, got = _ip(address=PEER)
    rx.handlers[6] = rx.handlers[17]
    for raw, _ in ip.l2.out:
        _rx(rx, raw)
    (h, data), = got
    assert h.proto == 6 and _tcp_ok(bytes(data), US, PEER)
    assert bytes(wire_tcp.parse(bytes(data), US, PEER).payload) == payload


def _tcp_ok(segment, src, dst):
    try:
        wire_tcp.parse(segment, src, dst)
    except WireError:
        return False
    return True


def test_tso_super_segment_goes_whole_and_reserves_one_ident_per_segment():
    ip, _ = _ip(mtu=1500, ident=10)
    big = Packet(bytes(4000))
    big.gso_size = 1460  # the device cuts it into 3 segments, identified 10, 11, 12
    assert ip.send(big, PEER, 6, 0.0)
    assert ip.send(Packet(b"after"), PEER, 6, 0.0)
    (raw1, _), (raw2, _) = ip.l2.out
    h1, p1 = wire_ipv4.parse(memoryview(raw1))
    h2, _ = wire_ipv4.parse(memoryview(raw2))
    assert (h1.total_len, h1.mf, h1.frag_offset, len(p1), h1.ident) == (4020, False, 0, 4000, 10)
    assert h2.ident == 13 and ip.stats["fragmented"] == 0
    too_big = Packet(bytes(65516))
    too_big.gso_size = 1460
    assert not ip.send(too_big, PEER, 6, 0.0)
    assert ip.tx_drops["too-big"] == 1


def test_df_above_mtu_fails_with_emsgsize():
    ip, _ = _ip(mtu=576)
    errors = []
    assert not ip.send(Packet(bytes(600)), PEER, 17, 0.0, df=True, on_error=errors.append)
    assert [e.errno for e in errors] == [errno.EMSGSIZE] and ip.tx_drops["needs-fragmentation"] == 1
    assert not ip.send(Packet(bytes(65516)), PEER, 17, 0.0, on_error=errors.append)
    assert ip.tx_drops["too-big"] == 1


def test_receive_delivery_rules():
    ip, got = _ip()
    _rx(ip, wire_ipv4.build(PEER, US, 17, b"unicast") + b"\x00\x00")
    _rx(ip, wire_ipv4.build(PEER, BROADCAST_IP, 17, b"bcast"))
    _rx(ip, wire_ipv4.build(PEER, 0x0A0000FF, 17, b"subnet-bcast"))
    _rx(ip, wire_ipv4.build(PEER, 0x0A000063, 17, b"other host"))
    _rx(ip, wire_ipv4.build(BROADCAST_IP, US, 17, b"martian"))
    _rx(ip, wire_ipv4.build(US, US, 17, b"spoofed us"))
    _rx(ip, b"\x45\x00\x00")
    _rx(ip, wire_ipv4.build(PEER, US, 99, b"unknown proto"))
    assert [d for _, d in got] == [b"unicast", b"bcast", b"subnet-bcast"]
    assert dict(ip.drops) == {"not-for-us": 1, "bad-source": 2, "truncated": 1, "unknown-protocol": 1}


def test_options_are_ignored_but_source_routes_are_refused():
    """RFC 1122 3.2.1.8: options a host does not implement are ignored; source-routed
    datagrams are dropped and counted (RFC 7126 4.3-4.4, Linux's accept_source_route = 0)."""
    ip, got = _ip()
    record_route = b"\x07\x07\x04" + bytes(4) + b"\x00"
    _rx(ip, wire_ipv4.build(PEER, US, 17, b"alert", options=b"\x94\x04\x00\x00"))
    _rx(ip, wire_ipv4.build(PEER, US, 17, b"recorded", options=record_route))
    for kind in (wire_ipv4.OPT_LSRR, wire_ipv4.OPT_SSRR):
        route = bytes([kind, 7, 8]) + bytes(4) + b"\x00"  # pointer past the end: a completed route
        _rx(ip, wire_ipv4.build(PEER, US, 17, b"routed", options=route))
    _rx(ip, wire_ipv4.build(PEER, US, 17, b"broken", options=b"\x07\x09\x04\x00"))
    assert [d for _, d in got] == [b"alert", b"recorded"]
    assert dict(ip.drops) == {"source-routed": 2, "bad-option-length": 1}


def test_unconfigured_accepts_unicast_for_dhcp():
    ip = Ipv4(FakeL2())
    got = []
    ip.handlers[17] = lambda hdr, dgram, pkt, now: got.append(hdr.dst)
    _rx(ip, wire_ipv4.build(PEER, 0x0A000042, 17, b"offer"))
    assert got == [0x0A000042]


def test_unknown_protocol_answered_by_icmp():
    ip, _ = _ip()
    Icmp(ip)
    _rx(ip, wire_ipv4.build(PEER, US, 99, b"x" * 20))
    (raw, hop), = ip.l2.out
    h, body = wire_ipv4.parse(memoryview(raw))
    m = wire_icmp.parse(body)
    assert (hop, h.dst, m.type, m.code) == (PEER, PEER, 3, wire_icmp.PROTOCOL_UNREACHABLE)


def test_duplicate_fragments_tolerated():
    ip, got = _ip()
    a, b = _frag(b"A" * 8, 0, True), _frag(b"B" * 3, 8, False)
    for raw in (a, a, b, b):
        _rx(ip, raw)
    assert got[0][1] == b"A" * 8 + b"BBB" and len(got) == 1
    assert ip.drops["duplicate-fragment"] == 1  # the second b starts a new datagram, still incomplete
    assert ip.reassemblies == 1


def test_overlap_discards_whole_datagram_and_its_later_fragments():
    ip, got = _ip()
    _rx(ip, _frag(b"A" * 16, 0, True))
    _rx(ip, _frag(b"X" * 16, 8, True))  # overlaps bytes 8..16 with different data
    _rx(ip, _frag(b"B" * 8, 16, False))  # would complete a forged datagram
    _rx(ip, _frag(b"A" * 16, 0, True))
    assert got == [] and ip.drops["overlapping-fragment"] == 1
    assert ip.drops["fragment-of-discarded-datagram"] == 2 and ip.memory_used == 0
    ip.poll(30.0)
    assert ip.reassemblies == 0 and ip.drops["reassembly-timeout"] == 0
    _rx(ip, _frag(b"A" * 8, 0, True), 31.0)
    _rx(ip, _frag(b"B" * 8, 8, False), 31.0)
    assert len(got) == 1  # after the timeout the key is usable again


def test_inconsistent_ends_poison():
    ip, got = _ip()
    _rx(ip, _frag(b"B" * 8, 16, False))
    _rx(ip, _frag(b"C" * 8, 24, False))
    ip2, _ = _ip()
    _rx(ip2, _frag(b"B" * 8, 8, False))
    _rx(ip2, _frag(b"C" * 8, 16, True))
    assert ip.drops["inconsistent-fragment-end"] == 1 and ip2.drops["fragment-past-end"] == 1


def test_timeout_sends_time_exceeded_only_with_first_fragment():
    ip, got = _ip()
    Icmp(ip)
    _rx(ip, _frag(b"A" * 8, 0, True, ident=1), 0.0)
    _rx(ip, _frag(b"C" * 8, 16, False, ident=2), 5.0)
    assert ip.poll_at() == 30.0
    ip.poll(29.9)
    assert ip.reassemblies == 2
    ip.poll(30.0)
    assert ip.reassemblies == 1 and ip.poll_at() == 35.0
    ip.poll(35.0)
    assert ip.reassemblies == 0 and ip.poll_at() is None and ip.drops["reassembly-timeout"] == 2
    assert ip.memory_used == 0
    (raw, _), = ip.l2.out
    m = wire_icmp.parse(wire_ipv4.parse(memoryview(raw))[1])
    assert (m.type, m.code) == (wire_icmp.TIME_EXCEEDED, wire_icmp.REASSEMBLY_TIME_EXCEEDED)
    quoted, rest = wire_ipv4.parse_quoted(m.payload)
    assert quoted.ident == 1 and bytes(rest) == b"A" * 8


def test_memory_cap_evicts_oldest():
    ip, got = _ip(reassembly_memory=3 * (1000 + 64))
    for ident in range(5):
        _rx(ip, _frag(b"x" * 1000, 0, True, ident=ident))
    assert ip.reassemblies == 3 and ip.memory_used <= ip.reassembly_memory
    assert ip.drops["reassembly-evicted"] == 2
    _rx(ip, _frag(b"y" * 8, 1000, False, ident=4))
    assert len(got) == 1 and got[0][1] == b"x" * 1000 + b"y" * 8
    big = Ipv4(FakeL2(), reassembly_memory=500)
    big.configure(US, MASK, 0, 0.0)
    _rx(big, _frag(b"x" * 1000, 0, True))
    assert big.drops["reassembly-memory"] == 1 and big.memory_used == 0


def test_reassembly_limits():
    ip, _ = _ip(max_reassemblies=2, max_fragments=3)
    for ident in range(3):
        _rx(ip, _frag(b"x" * 8, 0, True, ident=ident))
    assert ip.reassemblies == 2
    for i in range(1, 4):
        _rx(ip, _frag(b"x" * 8, 8 * i, True, ident=2))
    assert ip.drops["too-many-fragments"] == 1
    _rx(ip, _frag(b"", 8, True, ident=9))
    assert ip.drops["empty-fragment"] == 1


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=3000), st.integers(68, 1500), st.randoms(use_true_random=False), st.integers(0, 3))
def test_any_order_with_duplicates_reassembles_exactly(payload, mtu, rnd, dups):
    tx, _ = _ip(mtu=mtu)
    tx.send(Packet(payload), PEER, 17, 0.0)
    frames = [raw for raw, _ in tx.l2.out]
    frames += [rnd.choice(frames) for _ in range(dups)] if len(frames) > 1 else []
    rnd.shuffle(frames)
    rx, got = _ip(address=PEER)
    for raw in frames:
        _rx(rx, raw)
    assert got and got[0][1] == payload
