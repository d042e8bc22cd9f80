"""TCP header/options parse and build: golden bytes, truncation, bad lengths, properties."""
import struct

import pytest
from hypothesis import given, settings, strategies as st

from shoal.net.native.wire import WireError
from shoal.net.native.wire import checksum
from shoal.net.native.wire import tcp
from shoal.net.native.wire.tcp import ACK, FIN, PSH, RST, SYN, TcpSegment

SRC = 0xC0A80001  # 192.168.0.1
DST = 0xC0A80002

def golden_syn():
    """A SYN laid out as Linux sends it: MSS 1460, SACK-permitted, timestamps, NOP, wscale 7."""
    hdr = struct.pack("!HHIIBBHHH", 50000, 80, 10, 0, 10 << 4, SYN, 64240, 0, 0)
    opts = bytes([2, 4, 0x05, 0xB4, 4, 2, 8, 10]) + struct.pack("!II", 1000, 0) + bytes([1, 3, 3, 7])
    raw = bytearray(hdr + opts)
    struct.pack_into("!H", raw, 16, checksum.transport_checksum(SRC, DST, 6, [bytes(raw)]))
    return bytes(raw)


def test_parse_golden_linux_style_syn():
    s = tcp.parse(golden_syn(), SRC, DST)
    assert (s.src_port, s.dst_port, s.seq, s.ack, s.flags, s.window) == (50000, 80, 10, 0, SYN, 64240)
    assert s.mss == 1460 and s.sack_permitted and s.timestamp == (1000, 0) and s.wscale == 7
    assert s.seg_len == 1 and len(s.payload) == 0


def test_build_golden_matches_parse_and_checksum():
    s = TcpSegment(50000, 80, seq=10, flags=SYN, window=64240, mss=1460, sack_permitted=True,
                   timestamp=(1000, 0), wscale=7)
    raw = tcp.build(s, SRC, DST)
    assert len(raw) == 40 and raw[12] >> 4 == 10
    assert checksum.verify(raw, checksum.pseudo_header_sum(SRC, DST, 6, len(raw)))  # MUST-2
    assert tcp.parse(raw, SRC, DST) == s


def test_build_into_headroom():
    s = TcpSegment(1, 2, seq=3, ack=4, flags=ACK | PSH, window=5, payload=b"data")
    buf = bytearray(100)
    n = tcp.build_into(buf, 34, s, SRC, DST)
    assert n == 24 and tcp.parse(buf[34:34 + n], SRC, DST) == s


def test_sack_blocks_roundtrip_and_alignment():
    s = TcpSegment(1, 2, seq=3, ack=4, flags=ACK, timestamp=(5, 6), sack=((100, 200), (300, 400), (500, 600)))
    raw = tcp.build(s, SRC, DST)
    assert (len(raw) - 20) % 4 == 0
    assert tcp.parse(raw, SRC, DST).sack == ((100, 200), (300, 400), (500, 600))


def test_bad_checksum():
    raw = bytearray(tcp.build(TcpSegment(1, 2, flags=ACK, payload=b"x"), SRC, DST))
    raw[-1] ^= 1
    with pytest.raises(WireError) as e:
        tcp.parse(raw, SRC, DST)
    assert e.value.reason == "tcp-bad-checksum"  # MUST-3
    assert tcp.parse(raw).payload.tobytes() == bytes([ord("x") ^ 1])  # without addresses: no check


@pytest.mark.parametrize("n", range(0, 20))
def test_truncated_header(n):
    raw = tcp.build(TcpSegment(1, 2, flags=ACK), SRC, DST)
    with pytest.raises(WireError) as e:
        tcp.parse(raw[:n])
    assert e.value.reason == "tcp-truncated"


def test_data_offset_too_small_or_too_large():
    raw = bytearray(tcp.build(TcpSegment(1, 2, flags=ACK), SRC, DST))
    raw[12] = 4 << 4
    with pytest.raises(WireError, match="tcp-bad-offset"):
        tcp.parse(raw)
    raw[12] = 15 << 4
    with pytest.raises(WireError, match="tcp-truncated"):
        tcp.parse(raw)


def raw_with_options(opts, flags=ACK):
    opts = bytes(opts)
    opts += bytes(-len(opts) % 4)
    return struct.pack("!HHIIBBHHH", 1, 2, 3, 4, (5 + len(opts) // 4) << 4, flags, 100, 0, 0) + opts


@pytest.mark.parametrize("opts", [
    [2, 0, 0, 0],              # zero length (the classic infinite loop)
    [2, 1, 0, 0],              # length 1
    [2, 3, 5, 0],              # MSS must be 4
    [3, 4, 7, 0],              # window scale must be 3
    [4, 3, 0, 0],              # SACK-permitted must be 2
    [8, 9] + [0] * 10,         # timestamps must be 10
    [5, 10] + [0] * 6,         # SACK length not 2 + 8n
    [5, 2, 0, 0],              # SACK without blocks
    [99, 40, 0, 0],            # unknown option running past the header
    [1, 1, 1, 2],              # kind with no length octet at the very end
])
def test_bad_option_lengths(opts):
    with pytest.raises(WireError) as e:
        tcp.parse(raw_with_options(opts))
    assert e.value.reason == "tcp-bad-option-length"  # MUST-7


def test_unknown_options_skipped_and_unaligned_parsed():
    # MUST-6 (unknown kind 99 skipped by its length) and MUST-64 (MSS at an odd offset)
    s = tcp.parse(raw_with_options([1, 99, 3, 0xAA, 2, 4, 0x02, 0x18, 0, 0, 0, 0]))
    assert s.mss == 536


def test_eol_stops_parsing():
    s = tcp.parse(raw_with_options([0, 2, 0, 0]))  # junk after EOL is padding
    assert s.mss is None


def test_window_scale_clamped_to_14():
    s = tcp.parse(raw_with_options([3, 3, 15, 1]))
    assert s.wscale == 14  # RFC 7323 2.3


@pytest.mark.parametrize("flags", [SYN | FIN, SYN | RST, SYN | FIN | RST | ACK])
def test_impossible_flag_combinations(flags):
    with pytest.raises(WireError) as e:
        tcp.parse(raw_with_options([], flags))
    assert e.value.reason == "tcp-bad-flags"


def test_parse_does_not_copy_payload():
    raw = bytearray(tcp.build(TcpSegment(1, 2, flags=ACK, payload=b"abcdef"), SRC, DST))
    s = tcp.parse(raw)
    assert isinstance(s.payload, memoryview) and s.payload.obj is raw


def test_checksum_function_is_swappable(monkeypatch):
    calls = []

    def fake(src, dst, chunks):
        calls.append((src, dst))
        return 0x1234

    monkeypatch.setattr(tcp, "segment_checksum", fake)
    raw = tcp.build(TcpSegment(1, 2, flags=ACK), SRC, DST)
    assert calls == [(SRC, DST)] and raw[16:18] == b"\x12\x34"
    raw = tcp.build(TcpSegment(1, 2, flags=ACK, timestamp=(5, 6), payload=b"data"), SRC, DST)
    assert calls == [(SRC, DST)] * 2 and raw[16:18] == b"\x12\x34"


seqs = st.integers(0, 2**32 - 1)
segments = st.builds(
    TcpSegment, st.integers(0, 65535), st.integers(0, 65535), seqs, seqs,
    st.integers(0, 255).filter(lambda f: not (f & SYN and f & (FIN | RST))), st.integers(0, 65535),
    st.integers(0, 65535), st.none() | st.integers(0, 65535), st.none() | st.integers(0, 14),
    st.booleans(), st.none() | st.tuples(seqs, seqs),
    st.lists(st.tuples(seqs, seqs), max_size=2).map(tuple), st.binary(max_size=64))


@settings(max_examples=300, deadline=None)
@given(segments)
def test_roundtrip_property(s):
    raw = tcp.build(s, SRC, DST)
    assert tcp.parse(raw, SRC, DST) == s


established_segments = st.builds(
    TcpSegment, st.integers(0, 65535), st.integers(0, 65535), seqs, seqs,
    st.integers(0, 255).filter(lambda f: not (f & SYN and f & (FIN | RST))), st.integers(0, 65535),
    st.integers(0, 65535), timestamp=st.tuples(seqs, seqs), payload=st.binary(max_size=200))
addresses = st.integers(0, 2**32 - 1)


@settings(max_examples=500, deadline=None)
@given(established_segments, addresses, addresses)
def test_timestamp_only_header_checksum_is_summed_from_its_fields(s, src, dst):
    """The established segment's checksum, summed from the field values, is RFC 1071's over the bytes."""
    raw = tcp.build(s, src, dst)
    assert len(raw) == 32 + len(s.payload) and tcp.parse(raw, src, dst) == s
    zeroed = raw[:16] + b"\0\0" + raw[18:]
    assert raw[16:18] == struct.pack("!H", checksum.transport_checksum(src, dst, 6, [bytes(zeroed)]))


@settings(max_examples=200, deadline=None)
@given(st.one_of(established_segments, segments), addresses, addresses)
def test_device_checksum_leaves_the_pseudo_header_sum(s, src, dst):
    """For a TSO segment the field holds the uncomplemented pseudo-header sum the device starts from."""
    buf = bytearray(60)
    hlen = tcp.emit_header(buf, 0, s, src, dst, device_checksum=True)
    pseudo = checksum.pseudo_header_sum(src, dst, 6, hlen + len(s.payload))
    assert buf[16:18] == struct.pack("!H", pseudo)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=80))
def test_arbitrary_bytes_never_raise_anything_but_wireerror(data):
    try:
        tcp.parse(data)
    except WireError:
        pass


@settings(max_examples=300, deadline=None)
@given(segments, st.data())
def test_every_truncation_is_a_wireerror_or_shorter_payload(s, data):
    raw = bytes(tcp.build(s, SRC, DST))
    n = data.draw(st.integers(0, len(raw)))
    try:
        p = tcp.parse(raw[:n])
    except WireError:
        return
    assert n >= tcp.header_len(s) and bytes(p.payload) == bytes(s.payload)[:n - tcp.header_len(s)]
