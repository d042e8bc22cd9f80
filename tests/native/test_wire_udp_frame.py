"""`wire.udp_frame`: a UDP datagram's frame in one unpack, against the three layers' own parse."""
import struct

import pytest
from hypothesis import given, settings, strategies as st

from shoal.net.native.wire import WireError, ethernet, ipv4, udp, udp_frame
from shoal.net.native.wire.checksum import reference_sum

MAC_US = bytes.fromhex("020000000001")
MAC_PEER = bytes.fromhex("020000000002")
US, PEER = ipv4.addr("10.9.0.2"), ipv4.addr("10.9.0.1")

u16 = st.integers(0, 0xFFFF)


def general_frame(sport, dport, payload, src=PEER, dst=US, ident=7, ttl=64, df=False, tos=0,
                  eth_dst=MAC_US, eth_src=MAC_PEER):
    """The frame as the layers build it: `udp.build`, `ipv4.emit`, then Ethernet."""
    datagram = udp.build(src, dst, sport, dport, payload)
    hdr = bytearray(34)
    ipv4.emit(hdr, 14, src, dst, ipv4.PROTO_UDP, len(datagram), ident, ttl, df, False, 0, tos)
    ethernet.HEADER.pack_into(hdr, 0, eth_dst, eth_src, ethernet.ETHERTYPE_IPV4)
    return bytes(hdr) + datagram


def three_layers(raw, verify):
    """What `ethernet.parse`, `ipv4.parse` and `udp.parse` give: (src, ports, payload)."""
    eth = ethernet.parse(memoryview(raw))
    hdr, _payload = ipv4.parse(eth.payload)
    u, data = udp.parse(eth.payload[hdr.header_len:hdr.total_len], hdr.src, hdr.dst, verify)
    return hdr.src, u.src_port, u.dst_port, bytes(data)


@settings(deadline=None, max_examples=300)
@given(u16, u16, st.binary(max_size=300), u16, st.integers(1, 255), st.booleans(), st.integers(0, 255),
       st.binary(max_size=20))
def test_parse_reads_what_the_three_layers_read(sport, dport, payload, ident, ttl, df, tos, padding):
    raw = general_frame(sport, dport, payload, PEER, US, ident, ttl, df, tos) + padding  # link padding is cut off
    for verify in (True, False):
        src, got_sport, got_dport, data = udp_frame.parse(memoryview(raw), MAC_US, US, verify)
        assert (src, got_sport, got_dport, bytes(data)) == three_layers(raw, verify) == (PEER, sport, dport, payload)
        assert data.obj is raw  # a view of the frame, not a copy


def frame_with(**change):
    """A valid frame to us, with some of its fields changed (the IPv4 checksum recomputed
    where asked)."""
    raw = bytearray(general_frame(5000, 11211, change.pop("payload", b"get key\r\n"), change.pop("src", PEER),
                                  change.pop("dst", US), eth_dst=change.pop("eth_dst", MAC_US),
                                  eth_src=change.pop("eth_src", MAC_PEER)))
    for offset, value in change.pop("octets", {}).items():
        raw[offset] = value
    if change.pop("ip_recompute", False):
        raw[24:26] = b"\0\0"
        raw[24:26] = struct.pack("!H", ~reference_sum(bytes(raw[14:34])) & 0xFFFF)
    assert not change
    return raw


def test_a_short_udp_length_cuts_the_payload_as_udp_parse_does():
    raw = frame_with(octets={38: 0, 39: 12}, payload=b"abcdefgh")  # UDP length 12: 4 octets of payload
    raw[40:42] = b"\0\0"  # (no checksum: the length changed)
    assert udp_frame.parse(memoryview(raw), MAC_US, US, True)[3] == b"abcd" == three_layers(raw, True)[3]


def test_a_datagram_without_checksum_is_taken():
    raw = frame_with()
    raw[40:42] = b"\0\0"  # RFC 768: zero, the sender computed none
    assert udp_frame.parse(memoryview(raw), MAC_US, US, True) is not None


@pytest.mark.parametrize("case, raw", [
    ("broadcast MAC", frame_with(eth_dst=ethernet.BROADCAST)),
    ("another MAC", frame_with(eth_dst=bytes(6))),
    ("our own source MAC", frame_with(eth_src=MAC_US)),
    ("VLAN tagged", frame_with(octets={12: 0x81, 13: 0x00})),
    ("ARP", frame_with(octets={13: 0x06})),
    ("IPv4 options", frame_with(octets={14: 0x46}, ip_recompute=True)),
    ("IPv6 version", frame_with(octets={14: 0x65}, ip_recompute=True)),
    ("TCP", frame_with(octets={23: 6}, ip_recompute=True)),
    ("more fragments", frame_with(octets={20: 0x20}, ip_recompute=True)),
    ("a fragment offset", frame_with(octets={21: 0x01}, ip_recompute=True)),
    ("total length past the frame", frame_with(octets={16: 0x01}, ip_recompute=True)),
    ("UDP length past the datagram", frame_with(octets={38: 0x01})),
    ("UDP length below its header", frame_with(octets={38: 0, 39: 7})),
    ("a broadcast destination", frame_with(dst=0xFFFFFFFF)),
    ("another address", frame_with(dst=US + 1)),
    ("a broadcast source", frame_with(src=0xFFFFFFFF)),
    ("a multicast source", frame_with(src=ipv4.addr("224.0.0.1"))),
    ("our own source address", frame_with(src=US)),
    ("a bad IPv4 checksum", frame_with(octets={24: 0})),
    ("a bad UDP checksum", frame_with(octets={40: 0x12, 41: 0x34})),
])
def test_parse_leaves_every_other_frame_to_the_general_path(case, raw):
    assert udp_frame.parse(memoryview(raw), MAC_US, US, True) is None, case


def test_parse_without_verify_skips_only_the_udp_checksum():
    bad_udp = frame_with(octets={40: 0x12, 41: 0x34})
    with pytest.raises(WireError):
        three_layers(bad_udp, True)
    assert udp_frame.parse(memoryview(bad_udp), MAC_US, US, False) is not None
    assert udp_frame.parse(memoryview(frame_with(octets={24: 0})), MAC_US, US, False) is None


def test_parse_of_short_frames():
    raw = frame_with()
    assert udp_frame.parse(memoryview(raw), MAC_US, US, True) is not None  # (the frame the cases above change)
    for n in range(len(raw)):
        assert udp_frame.parse(memoryview(raw[:n]), MAC_US, US, True) is None  # under the headers, or short


@settings(deadline=None)
@given(st.binary(max_size=80))
def test_arbitrary_bytes_never_raise(data):
    raw = bytearray(frame_with())
    raw[: len(data)] = data
    got = udp_frame.parse(memoryview(raw), MAC_US, US, True)
    assert got is None or len(got) == 4
