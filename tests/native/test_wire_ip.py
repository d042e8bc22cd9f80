"""IPv4, ICMP and UDP wire formats: golden bytes, round trips, truncation, impossible lengths."""
import struct

import pytest
from hypothesis import given, settings, strategies as st

from shoal.net.native.packet import Packet
from shoal.net.native.wire import WireError, icmp, ipv4, udp
from shoal.net.native.wire.checksum import reference_sum

# Built independently with scapy.
GOLDEN_UDP = bytes.fromhex("4500002112344000401114960a0000010a00000204d2162e000d8cff68656c6c6f")
GOLDEN_ICMP = bytes.fromhex("45000024000100004001f784c0a80101c0a8010208006621004200076162636465666768")

addrs = st.integers(0, 2**32 - 1)
ports = st.integers(0, 0xFFFF)


def test_golden_udp():
    h, payload = ipv4.parse(memoryview(GOLDEN_UDP))
    assert (h.src, h.dst, h.proto, h.ttl, h.ident, h.df, h.mf, h.frag_offset) == (
        ipv4.addr("10.0.0.1"), ipv4.addr("10.0.0.2"), ipv4.PROTO_UDP, 64, 0x1234, True, False, 0)
    u, data = udp.parse(payload, h.src, h.dst)
    assert (u.src_port, u.dst_port, bytes(data)) == (1234, 5678, b"hello")
    assert ipv4.build(h.src, h.dst, 17, udp.build(h.src, h.dst, 1234, 5678, b"hello"), ident=0x1234, df=True) == GOLDEN_UDP


def test_golden_icmp():
    h, payload = ipv4.parse(memoryview(GOLDEN_ICMP))
    m = icmp.parse(payload)
    assert (m.type, m.code, m.echo_id, m.echo_seq, bytes(m.payload)) == (icmp.ECHO_REQUEST, 0, 0x42, 7, b"abcdefgh")
    assert icmp.build(icmp.ECHO_REQUEST, 0, m.rest, b"abcdefgh") == bytes(payload)
    assert ipv4.build(h.src, h.dst, 1, bytes(payload), ident=1) == GOLDEN_ICMP


@settings(deadline=None)
@given(addrs, addrs, st.integers(0, 255), st.binary(max_size=100), st.integers(0, 0xFFFF), st.integers(1, 255),
       st.booleans(), st.integers(0, 255))
def test_ipv4_round_trip(src, dst, proto, payload, ident, ttl, df, tos):
    raw = ipv4.build(src, dst, proto, payload, ident=ident, ttl=ttl, df=df, tos=tos)
    assert reference_sum(raw[:20]) == 0xFFFF
    h, p = ipv4.parse(memoryview(raw + b"\x00" * 6))  # Ethernet padding is cut off
    assert (h.src, h.dst, h.proto, h.ident, h.ttl, h.df, h.tos, bytes(p)) == (src, dst, proto, ident, ttl, df, tos, payload)


def test_ipv4_options_are_skipped_and_reported_by_kind():
    # router alert (RFC 2113), NOP, a loose source route with one hop, EOL and padding
    opts = b"\x94\x04\x00\x00" + b"\x01" + b"\x83\x07\x04\x0a\x00\x00\x09" + b"\x00" * 4
    raw = ipv4.build(1, 2, 17, b"abc", options=opts, ident=9)
    assert reference_sum(raw[:36]) == 0xFFFF
    h, p = ipv4.parse(memoryview(raw))
    assert h.header_len == 36 and h.total_len == 39 and bytes(p) == b"abc"
    assert h.options == (0x94, ipv4.OPT_LSRR)
    assert ipv4.parse(memoryview(ipv4.build(1, 2, 17, b"abc")))[0].options == ()
    for bad in (b"\x94\x01\x00\x00", b"\x94\x05\x00\x00", b"\x01\x01\x01\x94"):
        _expect("bad-option-length", ipv4.build(1, 2, 17, b"abc", options=bad))
    with pytest.raises(ValueError):
        ipv4.build(1, 2, 17, b"", options=b"\x01")


@settings(deadline=None)
@given(st.binary(max_size=40).map(lambda b: b[: len(b) - len(b) % 4]))
def test_any_ipv4_option_area_parses_or_fails_cleanly(opts):
    raw = ipv4.build(1, 2, 17, b"xy", options=opts)
    try:
        h, p = ipv4.parse(memoryview(raw))
    except WireError as e:
        assert e.reason == "bad-option-length"
    else:
        assert bytes(p) == b"xy" and all(k > 1 for k in h.options)


def _expect(reason, data, parser=ipv4.parse):
    with pytest.raises(WireError) as e:
        parser(memoryview(data))
    assert e.value.reason == reason, e.value


def _patched(raw, off, fmt, value, fix_checksum=True):
    b = bytearray(raw)
    struct.pack_into(fmt, b, off, value)
    if fix_checksum:
        struct.pack_into("!H", b, 10, 0)
        struct.pack_into("!H", b, 10, ~reference_sum(b[: (b[0] & 15) * 4]) & 0xFFFF)
    return bytes(b)


def test_ipv4_rejects():
    for n in range(len(GOLDEN_UDP)):
        _expect("truncated", GOLDEN_UDP[:n])
    _expect("bad-version", _patched(GOLDEN_UDP, 0, "!B", 0x65))
    _expect("bad-header-length", _patched(GOLDEN_UDP, 0, "!B", 0x44))
    _expect("truncated", _patched(GOLDEN_UDP[:24], 0, "!B", 0x47))
    _expect("bad-total-length", _patched(GOLDEN_UDP, 2, "!H", 19))
    _expect("bad-checksum", _patched(GOLDEN_UDP, 8, "!B", 63, fix_checksum=False))
    # 8184 * 8 + 13 payload bytes ends past 65535: the "ping of death" fragment.
    _expect("oversized-fragment", _patched(GOLDEN_UDP, 6, "!H", 8190))
    _expect("bad-fragment-length", _patched(GOLDEN_UDP, 6, "!H", ipv4.FLAG_MF))
    h, _ = ipv4.parse(memoryview(_patched(GOLDEN_UDP, 6, "!H", 8180)))
    assert h.frag_offset == 8180 * 8 and h.is_fragment


def test_ipv4_emit_refuses_oversize():
    with pytest.raises(ValueError):
        ipv4.build(1, 2, 17, bytes(65516))


@settings(deadline=None)
@given(addrs, addrs, ports, ports, st.binary(max_size=200), st.integers(0, 3))
def test_udp_round_trip_with_fragments(src, dst, sport, dport, payload, cut):
    p = Packet(payload[: len(payload) // 2])
    p.append(payload[len(payload) // 2 :])
    udp.push(p, src, dst, sport, dport)
    raw = bytes(p.linearize())
    assert len(raw) == 8 + len(payload)
    assert struct.unpack_from("!H", raw, 6)[0] != 0  # a computed zero is sent as 0xffff
    h, data = udp.parse(memoryview(raw + bytes(cut)), src, dst)
    assert (h.src_port, h.dst_port, h.length, bytes(data)) == (sport, dport, 8 + len(payload), payload)


def test_udp_rejects():
    _, seg = ipv4.parse(memoryview(GOLDEN_UDP))
    seg = bytes(seg)
    a, b = ipv4.addr("10.0.0.1"), ipv4.addr("10.0.0.2")
    for n in range(len(seg)):
        with pytest.raises(WireError):
            udp.parse(memoryview(seg[:n]), a, b)
    _expect("bad-length", seg[:4] + b"\x00\x07" + seg[6:], lambda d: udp.parse(d, a, b))
    _expect("truncated", seg[:4] + b"\x00\x20" + seg[6:], lambda d: udp.parse(d, a, b))
    _expect("bad-checksum", seg[:-1] + b"O", lambda d: udp.parse(d, a, b))
    _expect("bad-checksum", seg, lambda d: udp.parse(d, a, b + 1))  # the pseudo-header counts
    no_csum = seg[:6] + b"\x00\x00" + seg[8:-1] + b"O"
    assert bytes(udp.parse(memoryview(no_csum), a, b)[1]) == b"hellO"  # RFC 768: zero = none
    assert udp.parse(memoryview(seg[:-1] + b"O"), a, b, verify_checksum=False)[0].dst_port == 5678


def test_udp_push_refuses_oversize():
    with pytest.raises(ValueError):
        udp.push(Packet(bytes(65530)), 1, 2, 3, 4)


@settings(deadline=None)
@given(st.integers(0, 255), st.integers(0, 255), st.integers(0, 2**32 - 1), st.binary(max_size=100))
def test_icmp_round_trip(typ, code, rest, payload):
    p = Packet(payload)
    icmp.push(p, typ, code, rest)
    raw = bytes(p.linearize())
    assert raw == icmp.build(typ, code, rest, payload)
    m = icmp.parse(memoryview(raw))
    assert (m.type, m.code, m.rest, bytes(m.payload)) == (typ, code, rest, payload)


def test_icmp_rejects():
    raw = icmp.build(8, 0, 1, b"abc")
    for n in range(icmp.HEADER_LEN):
        _expect("truncated", raw[:n], icmp.parse)
    _expect("bad-checksum", raw[:-1] + b"x", icmp.parse)
