"""DHCP message format: round trips, option encoding (RFC 2132, RFC 3396), malformed input."""
import struct

import pytest
from hypothesis import given, settings, strategies as st

from shoal.net.native.wire import WireError, dhcp

MAC = bytes.fromhex("020000000001")


def test_round_trip_and_option_helpers():
    raw = dhcp.build(dhcp.OP_REPLY, 0xCAFEBABE, MAC,
                     [(dhcp.OPT_MESSAGE_TYPE, bytes([dhcp.OFFER])), (dhcp.OPT_LEASE_TIME, struct.pack("!I", 3600)),
                      (dhcp.OPT_SUBNET_MASK, bytes([255, 255, 255, 0]))],
                     yiaddr=0x0A000005, siaddr=0x0A000001, flags=dhcp.FLAG_BROADCAST)
    assert len(raw) == dhcp.BOOTP_MIN_LEN
    m = dhcp.parse(memoryview(raw))
    assert (m.op, m.xid, m.chaddr, m.yiaddr, m.siaddr, m.flags) == (2, 0xCAFEBABE, MAC, 0x0A000005, 0x0A000001, 0x8000)
    assert m.message_type == dhcp.OFFER
    assert m.option_u32(dhcp.OPT_LEASE_TIME) == 3600 and m.option_u32(dhcp.OPT_SUBNET_MASK) == 0xFFFFFF00
    assert m.option_u32(dhcp.OPT_ROUTER) is None


@settings(deadline=None)
@given(st.dictionaries(st.integers(1, 254).filter(lambda c: c != dhcp.OPT_OVERLOAD), st.binary(max_size=600), max_size=6))
def test_options_round_trip_with_long_values_split(options):
    m = dhcp.parse(memoryview(dhcp.build(1, 1, MAC, options.items())))
    assert m.options == options


def test_overload_reads_file_and_sname():
    raw = bytearray(dhcp.build(2, 7, MAC, [(dhcp.OPT_OVERLOAD, b"\x03")]))
    raw[108:112] = bytes([dhcp.OPT_MESSAGE_TYPE, 1, dhcp.ACK, 255])  # `file` starts at 108
    raw[44:50] = bytes([dhcp.OPT_ROUTER, 4, 10, 0, 0, 1])  # `sname` starts at 44
    m = dhcp.parse(memoryview(bytes(raw)))
    assert m.message_type == dhcp.ACK and m.option_u32(dhcp.OPT_ROUTER) == 0x0A000001


def test_rejects():
    good = dhcp.build(1, 1, MAC, [(53, b"\x01")])
    for n in range(dhcp.MIN_LEN):
        with pytest.raises(WireError, match="truncated"):
            dhcp.parse(memoryview(good[:n]))
    for reason, off, patch in [("dhcp-bad-op", 0, b"\x05"), ("dhcp-bad-cookie", 236, b"\x00"), ("dhcp-bad-hlen", 2, b"\x11")]:
        bad = bytearray(good)
        bad[off : off + 1] = patch
        with pytest.raises(WireError) as e:
            dhcp.parse(memoryview(bytes(bad)))
        assert e.value.reason == reason
    runs_past = good[:240] + bytes([12, 10, 65])
    with pytest.raises(WireError, match="dhcp-bad-option"):
        dhcp.parse(memoryview(runs_past))
    no_len = good[:240] + bytes([12])
    with pytest.raises(WireError, match="dhcp-bad-option"):
        dhcp.parse(memoryview(no_len))


def test_missing_end_option_is_tolerated():
    m = dhcp.parse(memoryview(dhcp.build(1, 1, MAC, [])[:240] + bytes([53, 1, 3])))
    assert m.message_type == dhcp.REQUEST
