"""Ethernet II (with 802.1Q/802.1ad tags) and ARP: golden bytes, round trips, malformed input."""
import pytest
from hypothesis import given, settings, strategies as st

from shoal.net.native.packet import Packet
from shoal.net.native.wire import WireError, arp, ethernet

MAC_A = bytes.fromhex("020000000001")
IP_A, IP_B = 0x0A000001, 0x0A000002
# Built independently with scapy: Ether(dst=broadcast, src=MAC_A)/ARP(who-has 10.0.0.2 from 10.0.0.1)
GOLDEN_ARP_FRAME = bytes.fromhex(
    "ffffffffffff020000000001080600010800060400010200000000010a0000010000000000000a000002"
)

macs = st.binary(min_size=6, max_size=6)


def test_golden_arp_request():
    f = ethernet.parse(memoryview(GOLDEN_ARP_FRAME))
    assert (f.dst, f.src, f.ethertype, f.vlans) == (ethernet.BROADCAST, MAC_A, ethernet.ETHERTYPE_ARP, ())
    a = arp.parse(f.payload)
    assert a == arp.ArpPacket(arp.OP_REQUEST, MAC_A, IP_A, bytes(6), IP_B)
    built = ethernet.build(ethernet.BROADCAST, MAC_A, ethernet.ETHERTYPE_ARP, arp.build(*a))
    assert built == GOLDEN_ARP_FRAME


@settings(deadline=None)
@given(macs, macs, st.integers(0x0600, 0xFFFF).filter(lambda t: t not in (0x8100, 0x88A8)), st.binary(max_size=64),
       st.lists(st.integers(0, 0xFFFF), max_size=2))
def test_ethernet_round_trip(dst, src, ethertype, payload, vlans):
    frame = ethernet.build(dst, src, ethertype, payload, tuple(vlans))
    f = ethernet.parse(memoryview(frame))
    assert (f.dst, f.src, f.ethertype, bytes(f.payload), f.vlans) == (dst, src, ethertype, payload, tuple(vlans))


def test_push_with_and_without_vlan():
    p = Packet(b"data")
    ethernet.push(p, MAC_A, MAC_A, ethernet.ETHERTYPE_IPV4, vlan=0x2005)
    f = ethernet.parse(p.linearize())
    assert f.vlans == (0x2005,) and f.ethertype == ethernet.ETHERTYPE_IPV4 and bytes(f.payload) == b"data"
    p = Packet(b"data")
    ethernet.push(p, MAC_A, MAC_A, ethernet.ETHERTYPE_ARP)
    assert len(p) == 18 and ethernet.parse(p.linearize()).vlans == ()


def test_ethernet_rejects():
    for n in range(ethernet.HEADER_LEN):
        with pytest.raises(WireError) as e:
            ethernet.parse(memoryview(GOLDEN_ARP_FRAME[:n]))
        assert e.value.reason == "truncated"
    with pytest.raises(WireError, match="not-ethernet-ii"):
        ethernet.parse(memoryview(ethernet.build(MAC_A, MAC_A, 1500, b"x")))
    tagged = ethernet.build(MAC_A, MAC_A, ethernet.ETHERTYPE_IPV4, b"", (1,))
    with pytest.raises(WireError, match="truncated"):
        ethernet.parse(memoryview(tagged[:15]))
    three = MAC_A * 2 + bytes.fromhex("8100 0001 8100 0002 8100 0003 0800")
    with pytest.raises(WireError, match="too-many-vlan-tags"):
        ethernet.parse(memoryview(three))


def test_mac_strings():
    assert ethernet.mac_to_str(MAC_A) == "02:00:00:00:00:01"
    assert ethernet.mac_from_str("02-00-00-00-00-01") == MAC_A
    for bad in ("02:00:00:00:00", "02:00:00:00:00:001", "zz:00:00:00:00:00"):
        with pytest.raises(ValueError):
            ethernet.mac_from_str(bad)


@settings(deadline=None)
@given(st.sampled_from([1, 2]), macs, st.integers(0, 2**32 - 1), macs, st.integers(0, 2**32 - 1), st.binary(max_size=18))
def test_arp_round_trip_ignores_padding(op, sha, spa, tha, tpa, padding):
    assert arp.parse(memoryview(arp.build(op, sha, spa, tha, tpa) + padding)) == (op, sha, spa, tha, tpa)


def test_arp_rejects():
    good = arp.build(1, MAC_A, IP_A, bytes(6), IP_B)
    for n in range(arp.LEN):
        with pytest.raises(WireError, match="truncated"):
            arp.parse(memoryview(good[:n]))
    cases = {
        "arp-unsupported": [(0, b"\x00\x06")],  # htype 6 (IEEE 802)
        "arp-bad-address-length": [(4, b"\x08")],
        "arp-bad-op": [(6, b"\x00\x03")],
    }
    for reason, patches in cases.items():
        bad = bytearray(good)
        for off, b in patches:
            bad[off : off + len(b)] = b
        with pytest.raises(WireError) as e:
            arp.parse(memoryview(bad))
        assert e.value.reason == reason
