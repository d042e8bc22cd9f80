"""TCP send coalescing into virtio-net super-frames (`shoal.drivers.vnet`), without a device.

Frames are built here by hand with an independent checksum; each super-frame is then
finished the way the kernel does it (checksum completed from ``csum_start``) and
checked against the frames it replaces.
"""
import collections
import random
import struct

import pytest

from shoal.drivers import vnet

SRC_MAC, DST_MAC = bytes.fromhex("02aabbccdd01"), bytes.fromhex("02aabbccdd02")
SRC_IP, DST_IP = bytes([10, 0, 0, 2]), bytes([10, 0, 0, 1])
ACK, PSH, FIN, SYN = 0x10, 0x08, 0x01, 0x02


def inet_sum(data):
    """RFC 1071 folded ones' complement sum, written out independently of the module's."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def tcp_frame(seq, payload, flags=ACK, ident=1, sport=40000, ts=(7, 9), window=500):
    """A TCP/IPv4 frame with a timestamp option, as a scatter list [headers, payload]."""
    opts = struct.pack("!BBBBII", 1, 1, 8, 10, *ts)
    tcp = bytearray(struct.pack("!HHIIBBHHH", sport, 80, seq, 1234, (20 + len(opts)) // 4 << 4, flags,
                                window, 0, 0) + opts)
    pseudo = SRC_IP + DST_IP + struct.pack("!BBH", 0, 6, len(tcp) + len(payload))
    struct.pack_into("!H", tcp, 16, ~inet_sum(pseudo + bytes(tcp) + payload) & 0xFFFF)
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), ident, 0x4000, 64, 6, 0,
                               SRC_IP, DST_IP))
    struct.pack_into("!H", ip, 10, ~inet_sum(bytes(ip)) & 0xFFFF)
    header = DST_MAC + SRC_MAC + b"\x08\x00" + bytes(ip) + bytes(tcp)
    return [header, memoryview(payload)] if payload else [header]


def buffers(frame):
    return frame


def kernel_view(iovecs):
    """What the kernel makes of a write: (header fields, the frame with its checksum finished)."""
    flags, gso_type, hdr_len, gso_size, start, offset = vnet.VNET_HDR.unpack(iovecs[0])
    frame = b"".join(bytes(b) for b in iovecs[1:])
    if flags & vnet.F_NEEDS_CSUM:
        frame = vnet.complete_checksum(frame, start, offset)
    return (flags, gso_type, hdr_len, gso_size, start, offset), frame


def check_valid(frame):
    """IPv4 and TCP checksums of a whole frame verify; returns (ip_len, seq, flags, payload)."""
    ip = frame[14:34]
    assert inet_sum(ip) == 0xFFFF
    ip_len = struct.unpack_from("!H", ip, 2)[0]
    seg = frame[34:14 + ip_len]
    pseudo = SRC_IP + DST_IP + struct.pack("!BBH", 0, 6, len(seg))
    assert inet_sum(pseudo + seg) == 0xFFFF
    thl = (seg[12] >> 4) * 4
    return ip_len, struct.unpack_from("!I", seg, 4)[0], seg[13], seg[thl:]


def stream(n, size=1448, start=1000, last_flags=ACK | PSH, last_size=None):
    rng = random.Random(n)
    frames, data, seq = [], b"", start
    for i in range(n):
        m = last_size if (i == n - 1 and last_size is not None) else size
        payload = rng.randbytes(m)
        frames.append(tcp_frame(seq & 0xFFFFFFFF, payload, last_flags if i == n - 1 else ACK, ident=i + 1))
        data += payload
        seq += m
    return frames, data


def test_a_run_of_one_flow_becomes_one_super_frame_the_kernel_can_finish():
    frames, data = stream(8, last_size=300)
    writes = vnet.coalesce(frames, buffers)
    assert [n for _, n in writes] == [8]
    hdr, frame = kernel_view(writes[0][0])
    assert hdr == (vnet.F_NEEDS_CSUM, vnet.GSO_TCPV4, 14 + 20 + 32, 1448, 34, 16)
    ip_len, seq, flags, payload = check_valid(frame)
    assert (ip_len, seq, flags, payload) == (20 + 32 + len(data), 1000, ACK | PSH, data)
    assert struct.unpack_from("!H", frame, 18)[0] == 1  # IP ident of the first segment


def test_sequence_numbers_wrap_inside_a_run():
    frames, data = stream(4, start=0xFFFFFFFF - 2000)
    writes = vnet.coalesce(frames, buffers)
    assert [n for _, n in writes] == [4]
    assert check_valid(kernel_view(writes[0][0])[1])[3] == data


def test_runs_stop_at_64k_and_cover_the_burst_in_order():
    frames, data = stream(100)
    writes = vnet.coalesce(frames, buffers)
    assert sum(n for _, n in writes) == 100 and len(writes) == 3
    joined = b""
    for iovecs, n in writes:
        _hdr, frame = kernel_view(iovecs)
        ip_len, _seq, _flags, payload = check_valid(frame)
        assert ip_len <= 0xFFFF
        joined += payload
    assert joined == data


@pytest.mark.parametrize("breaker", ["pure-ack", "other-flow", "gap", "syn", "fin", "other-ts", "other-window"])
def test_frames_that_cannot_be_segments_of_the_run_end_it(breaker):
    frames, _ = stream(3, last_flags=ACK)
    seq = 1000 + 3 * 1448
    odd = {
        "pure-ack": tcp_frame(seq, b""),
        "other-flow": tcp_frame(seq, b"x" * 1448, sport=40001),
        "gap": tcp_frame(seq + 1, b"x" * 1448),
        "syn": tcp_frame(seq, b"x" * 1448, flags=SYN | ACK),
        "fin": tcp_frame(seq, b"x" * 1448, flags=FIN | ACK),
        "other-ts": tcp_frame(seq, b"x" * 1448, ts=(8, 9)),
        "other-window": tcp_frame(seq, b"x" * 1448, window=501),
    }[breaker]
    writes = vnet.coalesce(frames + [odd] + stream(2, start=seq + 1448)[0], buffers)
    assert [n for _, n in writes][:2] == [3, 1]
    assert writes[1][0][0] == vnet.PLAIN and b"".join(bytes(b) for b in writes[1][0][1:]) == b"".join(
        bytes(b) for b in odd)


class _Alone(list):
    """A frame the stack marked to go as a frame of its own (`Packet.alone`: a TCP retransmission)."""
    alone = True


def test_a_frame_marked_alone_neither_starts_nor_joins_a_run():
    frames, _ = stream(6, last_flags=ACK)
    frames[0], frames[3] = _Alone(frames[0]), _Alone(frames[3])
    writes = vnet.coalesce(frames, buffers)
    assert [n for _, n in writes] == [1, 2, 1, 2]
    assert writes[0][0][0] == vnet.PLAIN and writes[2][0][0] == vnet.PLAIN


def test_psh_or_a_short_segment_ends_a_run():
    a, _ = stream(3, last_flags=ACK | PSH)
    b, _ = stream(3, start=1000 + 3 * 1448, last_flags=ACK)
    assert [n for _, n in vnet.coalesce(a + b, buffers)] == [3, 3]
    short = tcp_frame(1000 + 1448, b"y" * 100)
    after = tcp_frame(1000 + 1548, b"z" * 1448)
    assert [n for _, n in vnet.coalesce([stream(1, last_flags=ACK)[0][0], short, after], buffers)] == [2, 1]


def test_non_tcp_frames_and_single_segments_go_out_plain():
    arp = [DST_MAC + SRC_MAC + b"\x08\x06" + bytes(28)]
    one = tcp_frame(5, b"q" * 10)
    writes = vnet.coalesce([arp, one, arp], buffers)
    assert [(iovecs[0], n) for iovecs, n in writes] == [(vnet.PLAIN, 1)] * 3


def test_ones_sum_matches_rfc1071():
    rng = random.Random(3)
    # every tail length of the C loop (16-octet blocks, then 8, then 0-7), and large frames
    for n in [*range(0, 40), 1500, 4095, 65535, *rng.sample(range(65536), 50)]:
        data = rng.randbytes(n)
        assert vnet.ones_sum(data) == inet_sum(data)
        assert vnet.ones_sum(memoryview(bytearray(data))[1:]) == inet_sum(data[1:])
        ones = b"\xff" * (n - n % 2) + b"\xfe" * (n % 2)  # a carry out of every 64-bit add
        assert vnet.ones_sum(ones) == inet_sum(ones)
    assert vnet.ones_sum(b"\xff\xff\x00\x00") == 0xFFFF
    assert vnet.ones_sum(b"\x00\x00") == 0


def test_complete_checksum_rejects_offsets_outside_the_frame():
    assert vnet.complete_checksum(bytes(40), 34, 16) is None
    assert vnet.complete_checksum(bytes(40), 40, 0) is None
    assert vnet.complete_checksum(bytes(40), 20, 18) is not None


class Frame(list):
    """A scatter-list frame carrying the ``gso_size`` a TSO-capable stack sets on its packets."""

    gso_size = 0


def tso_frame(seq, payload, gso_size, flags=ACK | PSH | FIN):
    """One TCP segment larger than the MTU, built whole as a stack doing TSO does: its
    checksum field holds the pseudo-header sum, uncomplemented (`Offloads.tso`)."""
    header, *rest = tcp_frame(seq, payload, flags)
    header = bytearray(header)
    seg_len = len(header) - 34 + len(payload)
    struct.pack_into("!H", header, 50, inet_sum(SRC_IP + DST_IP + struct.pack("!BBH", 0, 6, seg_len)))
    frame = Frame([bytes(header), *rest])
    frame.gso_size = gso_size
    return frame


def test_a_tso_segment_goes_alone_with_its_checksum_left_to_the_kernel():
    data = random.Random(5).randbytes(3 * 1448 + 500)
    big = tso_frame(77, data, 1448)
    before, _ = stream(2, start=77 - 2 * 1448, last_flags=ACK)
    writes = vnet.coalesce(before + [big], buffers)
    assert [n for _, n in writes] == [2, 1]
    hdr, frame = kernel_view(writes[1][0])
    assert hdr == (vnet.F_NEEDS_CSUM, vnet.GSO_TCPV4, 14 + 20 + 32, 1448, 34, 16)
    assert check_valid(frame) == (20 + 32 + len(data), 77, ACK | PSH | FIN, data)
    assert vnet.tso(big, 1448)[0][1] == writes[1][0][1]


def test_a_tso_syn_or_non_tcp_frame_is_written_plain():
    syn = tso_frame(1, b"s" * 3000, 1448, flags=SYN)
    arp = Frame([DST_MAC + SRC_MAC + b"\x08\x06" + bytes(28)])
    arp.gso_size = 1448
    for frame in (syn, arp):
        iovecs, n = vnet.tso(frame, 1448)
        assert (iovecs[0], n, iovecs[1:]) == (vnet.PLAIN, 1, list(frame))


class Partial(list):
    """A scatter-list frame whose TCP checksum the stack left to the device (`Packet.checksum_partial`)."""

    checksum_partial = True


def partial_frame(seq, payload, flags=ACK | PSH):
    """`tcp_frame` with only the pseudo-header sum in its checksum field, as the stack
    builds it for a device that finishes checksums (``offloads.tx_checksum``)."""
    header, *rest = tcp_frame(seq, payload, flags)
    header = bytearray(header)
    seg_len = len(header) - 34 + len(payload)
    struct.pack_into("!H", header, 50, inet_sum(SRC_IP + DST_IP + struct.pack("!BBH", 0, 6, seg_len)))
    return Partial([bytes(header), *rest])


def test_a_partial_frame_that_goes_alone_asks_the_kernel_to_finish_its_checksum():
    """An ACK, a lone short segment and a retransmission: each goes behind `PARTIAL_TCP4`,
    and the kernel's completion gives the checksum a whole-frame sum gives."""
    ack = partial_frame(9, b"", ACK)
    short = partial_frame(10, b"r" * 77)
    resent = partial_frame(3000, b"x" * 1448, ACK)
    resent.alone = True
    for frame in (ack, short, resent):
        (iovecs, n), = vnet.coalesce([frame], buffers)
        assert n == 1 and iovecs[0] is vnet.PARTIAL_TCP4 and iovecs[1:] == list(frame)
        hdr, finished = kernel_view(iovecs)
        assert hdr == (vnet.F_NEEDS_CSUM, vnet.GSO_NONE, 34 + 16 + 2, 0, 34, 16)
        assert finished == b"".join(bytes(b) for b in tcp_frame(*_fields(frame)))
    assert vnet.lone(short, list(short))[0] is vnet.PARTIAL_TCP4
    assert vnet.lone(tcp_frame(10, b"r"), [])[0] is vnet.PLAIN


def _fields(frame):
    header = bytes(frame[0])
    payload = b"".join(bytes(b) for b in frame[1:])
    return struct.unpack_from("!I", header, 38)[0], payload, header[47]


def test_partial_frames_of_one_flow_still_merge_into_a_super_frame():
    plain, data = stream(4, last_flags=ACK | PSH)
    frames = [partial_frame(*_fields(f)) for f in plain]
    (iovecs, n), = vnet.coalesce(frames, buffers)
    assert n == 4
    hdr, frame = kernel_view(iovecs)
    assert hdr[:2] == (vnet.F_NEEDS_CSUM, vnet.GSO_TCPV4)
    assert check_valid(frame) == (20 + 32 + len(data), 1000, ACK | PSH, data)


def test_a_received_burst_comes_up_as_each_header_promises():
    """`TapDevice._strip` on one burst holding every kind of header the kernel writes: a TCP
    segment left partial stays partial (`PartialFrame`, its bytes untouched, a GSO one too);
    any other partial checksum comes up finished (`VerifiedFrame`); offsets outside the frame
    come up as plain bytes, for the stack to verify and drop; DATA_VALID is vouched for, no
    flag is not. Each kind is counted, once for the burst."""
    from shoal.drivers.base import PartialFrame, VerifiedFrame
    from shoal.drivers.tap import TapDevice
    dev = TapDevice.__new__(TapDevice)  # the receive logic alone: no tap opened
    dev.stats = collections.Counter()
    frame = b"".join(bytes(b) for b in tcp_frame(1000, b"some data"))
    hdr = vnet.VNET_HDR.pack
    need = vnet.F_NEEDS_CSUM
    burst = [hdr(need, vnet.GSO_NONE, 0, 0, 34, 16) + frame,
             hdr(need, vnet.GSO_TCPV4, 66, 1448, 34, 16) + frame,
             hdr(need, vnet.GSO_NONE, 0, 0, 34, 6) + frame,
             hdr(need, vnet.GSO_NONE, 0, 0, 34, len(frame)) + frame,
             hdr(need, vnet.GSO_NONE, 0, 0, len(frame) - 17, 16) + frame,
             hdr(vnet.F_DATA_VALID, vnet.GSO_NONE, 0, 0, 0, 0) + frame,
             vnet.PLAIN + frame]
    out = TapDevice._strip(dev, burst)
    assert [type(f) for f in out] == [PartialFrame, PartialFrame, VerifiedFrame, bytes, bytes, VerifiedFrame, bytes]
    assert all(out[i] == frame for i in (0, 1, 3, 4, 5, 6))
    assert (out[0].csum_start, out[0].csum_offset) == (34, 16)
    assert out[2] == vnet.complete_checksum(frame, 34, 6) != frame
    assert dev.stats == {"rx_checksum_partial": 2, "rx_super_frames": 1, "rx_checksum_completed": 1,
                         "rx_bad_csum_offsets": 2, "rx_checksum_valid": 1}


def test_a_transmit_frame_in_each_form_gives_its_buffers():
    """`frame_buffers`, which every transmit path calls per frame: bytes-like frames (a
    subclass too) are one buffer, a packet gives its views, a list is its own buffers."""
    from shoal.drivers.base import VerifiedFrame, frame_buffers, frame_bytes
    from shoal.net.native.packet import Packet
    packet = Packet(b"payload")
    packet.buf[packet.prepend(4):packet.head + 4] = b"head"
    for frame in (b"abc", bytearray(b"abc"), memoryview(b"abc"), VerifiedFrame(b"abc")):
        assert frame_buffers(frame) == (frame,) and frame_bytes(frame) is frame
    assert [bytes(b) for b in frame_buffers(packet)] == [b"head", b"payload"]
    assert frame_buffers([b"ab", b"c"]) == [b"ab", b"c"] and frame_bytes([b"ab", b"c"]) == b"abc"
