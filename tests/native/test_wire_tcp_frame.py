"""`wire.tcp_frame`: the established connection's frame in one pack, against the three layers' own build and parse."""
import struct

import pytest
from hypothesis import given, settings, strategies as st

from shoal.net.native.wire import ethernet, ipv4, tcp, tcp_frame
from shoal.net.native.wire.checksum import reference_sum
from shoal.net.native.wire.tcp import ACK, FIN, PSH, RST, SYN, TcpSegment

MAC_US = bytes.fromhex("020000000001")
MAC_PEER = bytes.fromhex("020000000002")
US, PEER = ipv4.addr("10.9.0.2"), ipv4.addr("10.9.0.1")

u32 = st.integers(0, 2**32 - 1)
u16 = st.integers(0, 0xFFFF)
segments = st.builds(lambda sp, dp, seq, ack, flags, win, urg, ts, data: TcpSegment(
    sp, dp, seq, ack, flags, win, urg, timestamp=ts, payload=data),
    u16, u16, u32, u32, st.sampled_from([ACK, ACK | PSH, ACK | FIN, ACK | PSH | FIN, ACK | RST, RST, 0]), u16, u16,
    st.none() | st.tuples(u32, u32), st.binary(max_size=300))  # (both layouts: with a timestamp, without options)


def general_frame(seg, src=PEER, dst=US, ident=7, ttl=64, df=True, tos=0, device_checksum=False,
                  eth_dst=MAC_US, eth_src=MAC_PEER):
    """The frame as the three layers build it: `tcp.emit_header`, `ipv4.emit`, then Ethernet."""
    tcp_len = tcp.header_len(seg)
    hdr = bytearray(34 + tcp_len)
    tcp.emit_header(hdr, 34, seg, src, dst, None, device_checksum)
    ipv4.emit(hdr, 14, src, dst, ipv4.PROTO_TCP, tcp_len + len(seg.payload), ident, ttl, df, False, 0, tos)
    ethernet.HEADER.pack_into(hdr, 0, eth_dst, eth_src, ethernet.ETHERTYPE_IPV4)
    return bytes(hdr) + bytes(seg.payload)


def fields(seg):
    return (seg.src_port, seg.dst_port, seg.seq, seg.ack, seg.flags, seg.window, seg.urgent, seg.mss, seg.wscale,
            seg.sack_permitted, seg.timestamp, seg.sack, bytes(seg.payload))


@settings(deadline=None, max_examples=300)
@given(segments, u32, u32, u16, st.integers(1, 255), st.booleans(), st.integers(0, 255), st.booleans())
def test_emit_writes_what_the_three_layers_write(seg, src, dst, ident, ttl, df, tos, device_checksum):
    headers = 66 if seg.timestamp is not None else 54
    buf = bytearray(14 + headers)
    assert tcp_frame.emit(buf, 14, MAC_US, MAC_PEER, src, dst, ident, ttl, df, tos, seg, device_checksum) == headers
    assert bytes(buf[14:]) + bytes(seg.payload) == general_frame(seg, src, dst, ident, ttl, df, tos, device_checksum,
                                                                  MAC_US, MAC_PEER)
    if not device_checksum:  # both checksums are whole
        frame = bytes(buf[14:]) + bytes(seg.payload)
        assert reference_sum(frame[14:34]) == 0xFFFF
        pseudo = struct.pack("!IIBBH", src, dst, 0, 6, headers - 34 + len(seg.payload))
        assert reference_sum(pseudo + frame[34:]) == 0xFFFF


@pytest.mark.parametrize("timestamp", [(6, 7), None])
def test_emit_honours_a_swapped_segment_checksum(monkeypatch, timestamp):
    headers = []
    monkeypatch.setattr(tcp, "segment_checksum",
                        lambda src, dst, chunks: headers.append(bytes(chunks[0])) or 0x1234)
    seg = TcpSegment(1, 2, 3, 4, ACK, 5, timestamp=timestamp, payload=b"data")
    buf = bytearray(66)
    n = tcp_frame.emit(buf, 0, MAC_US, MAC_PEER, PEER, US, 0, 64, False, 0, seg, False)
    assert struct.unpack_from("!H", buf, 34 + 16)[0] == 0x1234
    assert headers == [bytes(buf[34:50]) + b"\0\0" + bytes(buf[52:n])]  # (summed with a zero checksum field)
    assert bytes(buf[:n]) == general_frame(seg, PEER, US, 0, 64, False)[:n]


@settings(deadline=None, max_examples=300)
@given(segments, st.integers(0, 0xFFFF), st.integers(1, 255), st.booleans(), st.integers(0, 255),
       st.binary(max_size=20))
def test_parse_reads_what_the_three_layers_read(seg, ident, ttl, df, tos, padding):
    raw = general_frame(seg, PEER, US, ident, ttl, df, tos) + padding  # link padding is cut off
    for verify in (True, False):
        src, got_tos, got = tcp_frame.parse(memoryview(raw), MAC_US, US, verify)
        eth = ethernet.parse(memoryview(raw))
        hdr, datagram = ipv4.parse(eth.payload)
        expect = tcp.parse(datagram, hdr.src, hdr.dst)
        assert (src, got_tos) == (hdr.src, hdr.tos) == (PEER, tos)
        assert fields(got) == fields(expect)
        assert got.payload.obj is raw  # a view of the frame, not a copy


def frame_with(**change):
    """A valid frame to us, with some of its fields changed (checksums recomputed unless
    the change is a checksum)."""
    seg = TcpSegment(4000, 80, 1000, 2000, change.pop("flags", ACK | PSH), 512,
                     timestamp=change.pop("ts", (11, 22)), payload=b"GET / HTTP/1.1\r\n\r\n",
                     sack=change.pop("sack", ()))
    raw = bytearray(general_frame(seg, change.pop("src", PEER), change.pop("dst", US),
                                  eth_dst=change.pop("eth_dst", MAC_US), eth_src=change.pop("eth_src", MAC_PEER)))
    for offset, value in change.pop("octets", {}).items():
        raw[offset] = value
    if change.pop("ip_recompute", False):
        raw[24:26] = b"\0\0"
        raw[24:26] = struct.pack("!H", ~reference_sum(bytes(raw[14:34])) & 0xFFFF)
    assert not change
    return raw


@pytest.mark.parametrize("case, raw", [
    ("broadcast MAC", frame_with(eth_dst=ethernet.BROADCAST)),
    ("another MAC", frame_with(eth_dst=bytes(6))),
    ("our own source MAC", frame_with(eth_src=MAC_US)),
    ("VLAN tagged", frame_with(octets={12: 0x81, 13: 0x00})),
    ("ARP", frame_with(octets={13: 0x06})),
    ("IPv4 options", frame_with(octets={14: 0x46}, ip_recompute=True)),
    ("IPv6 version", frame_with(octets={14: 0x65}, ip_recompute=True)),
    ("UDP", frame_with(octets={23: 17}, ip_recompute=True)),
    ("more fragments", frame_with(octets={20: 0x20}, ip_recompute=True)),
    ("a fragment offset", frame_with(octets={21: 0x01}, ip_recompute=True)),
    ("total length past the frame", frame_with(octets={16: 0x01}, ip_recompute=True)),
    ("total length below both headers", frame_with(octets={16: 0, 17: 40}, ip_recompute=True)),
    ("another address", frame_with(dst=US + 1)),
    ("a broadcast source", frame_with(src=0xFFFFFFFF)),
    ("a multicast source", frame_with(src=ipv4.addr("224.0.0.1"))),
    ("our own source address", frame_with(src=US)),
    ("a bad IPv4 checksum", frame_with(octets={24: 0})),
    ("a bad TCP checksum", frame_with(octets={34 + 16: 0, 34 + 17: 0})),
    ("options other than the timestamp", frame_with(ts=None, sack=((5, 6),))),
    ("the timestamp and SACK", frame_with(sack=((5, 6),))),
    ("SACK-permitted before the timestamp", frame_with(octets={54: tcp.OPT_SACK_PERM, 55: 2})),
    ("a bad TCP checksum, no options", frame_with(ts=None, octets={34 + 16: 0, 34 + 17: 0})),
    ("a data offset under the header", frame_with(ts=None, octets={34 + 12: 0x40})),
    ("SYN with FIN", frame_with(flags=SYN | FIN)),
    ("SYN with RST", frame_with(flags=SYN | RST | ACK)),
])
def test_parse_leaves_every_other_frame_to_the_general_path(case, raw):
    assert tcp_frame.parse(memoryview(raw), MAC_US, US, True) is None, case


def test_parse_without_verify_skips_only_the_tcp_checksum():
    bad_tcp = frame_with(octets={34 + 16: 0, 34 + 17: 0})
    assert tcp_frame.parse(memoryview(bad_tcp), MAC_US, US, False) is not None
    assert tcp_frame.parse(memoryview(frame_with(octets={24: 0})), MAC_US, US, False) is None


@pytest.mark.parametrize("ts", [(11, 22), None])
def test_parse_of_short_frames(ts):
    raw = frame_with(ts=ts)
    assert tcp_frame.parse(memoryview(raw), MAC_US, US, True) is not None  # (the frame the cases above change)
    for n in range(len(raw)):
        got = tcp_frame.parse(memoryview(raw[:n]), MAC_US, US, True)
        assert got is None  # under the headers, or short of the total length


@settings(deadline=None)
@given(st.binary(max_size=120), st.sampled_from([(11, 22), None]))
def test_arbitrary_bytes_never_raise(data, ts):
    raw = bytearray(frame_with(ts=ts))
    raw[: len(data)] = data
    got = tcp_frame.parse(memoryview(raw), MAC_US, US, True)
    assert got is None or isinstance(got[2], TcpSegment)
