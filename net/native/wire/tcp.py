"""TCP header and options: pure parse/build over memoryview (RFC 9293 section 3.1).

`parse` turns untrusted bytes into a validated `TcpSegment` or raises `WireError`
with a stable reason (the drop-counter key); `build_into` writes a `TcpSegment`
into a caller's buffer (e.g. the headroom of a frame) and fills in the checksum;
`header_len` tells how many bytes the header with its options takes.

Options understood (RFC 9293 3.2, MUST-4/MUST-5/MUST-14): End of List, No-Op, MSS;
window scale and timestamps (RFC 7323); SACK-permitted and SACK (RFC 2018).
Unknown options are skipped using their length (MUST-6); options are parsed at any
byte alignment (MUST-64); an option whose length is impossible (< 2, past the end
of the header, or wrong for its kind) is an error, never an exception (MUST-7).

The checksum goes through `segment_checksum`, a module-level function that tests
or a faster implementation can swap; by default it is the C Internet checksum of
`shoal.net.native.wire.checksum` over the IPv4 pseudo-header (RFC 9293 3.1).
Addresses are IPv4 addresses as ints, as in that module.

Sequence and acknowledgment numbers stay plain 32-bit ints here: wraparound
arithmetic belongs to `shoal.net.native.tcp.seq.Seq`, one layer up.
"""
import struct

from . import WireError
from . import checksum as _checksum

FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40
CWR = 0x80

PROTO_TCP = 6
HEADER_LEN = 20

OPT_EOL = 0
OPT_NOP = 1
OPT_MSS = 2
OPT_WSCALE = 3
OPT_SACK_PERM = 4
OPT_SACK = 5
OPT_TIMESTAMP = 8

#: Largest window-scale shift a receiver may use; larger values are clamped (RFC 7323 2.3).
MAX_WSCALE = 14

_HDR = struct.Struct("!HHIIBBHHH")
_HDR_TS = struct.Struct("!HHIIBBHHHBBBBII")
"""The header of every segment of a connection with timestamps (RFC 7323 appendix A
layout: NOP, NOP, TSopt), written in one call."""
_TS_LAYOUT = bytes((OPT_NOP, OPT_NOP, OPT_TIMESTAMP, 10))
_CSUM = struct.Struct("!H")
_MASK = 0xFFFFFFFF
_FLAG_NAMES = ((SYN, "S"), (FIN, "F"), (RST, "R"), (PSH, "P"), (ACK, "."), (URG, "U"),
               (ECE, "E"), (CWR, "C"))


def segment_checksum(src, dst, chunks):
    """Checksum of a TCP segment (header with a zero checksum field, then data) over IPv4.

    Swappable: assign another function with the same contract to
    ``shoal.net.native.wire.tcp.segment_checksum``.
    """
    return _checksum.transport_checksum(src, dst, PROTO_TCP, chunks)


_default_segment_checksum = segment_checksum


class TcpSegment:
    """A validated TCP segment: header fields, parsed options and the payload.

    Option attributes are None (or empty) when the option is absent: `mss` (int),
    `wscale` (int shift, clamped to 14), `sack_permitted` (bool), `timestamp`
    (tuple ``(tsval, tsecr)``), `sack` (tuple of ``(left, right)`` edges).
    `payload` is a memoryview (or bytes) of the data; it is not copied by `parse`.
    `ect` is not a header field: it is the connection's hint to the IP layer that
    this segment may carry the ECT(0) codepoint (RFC 3168 section 6.1.1); it takes
    no part in comparisons. Nor is `resent`: the connection's mark on text sent
    before, for the device to send as a frame of its own (`Packet.alone`). Nor is
    `acks`: how many of the peer's ACKs this one stands for (1, or more where the TCP
    layer merged a burst's pure ACKs into the last of them).
    """

    __slots__ = ("src_port", "dst_port", "seq", "ack", "flags", "window", "urgent",
                 "mss", "wscale", "sack_permitted", "timestamp", "sack", "payload", "ect",
                 "resent", "acks")

    def __init__(self, src_port=0, dst_port=0, seq=0, ack=0, flags=0, window=0, urgent=0,
                 mss=None, wscale=None, sack_permitted=False, timestamp=None, sack=(),
                 payload=b""):
        self.src_port = src_port
        self.dst_port = dst_port
        self.seq = seq
        self.ack = ack
        self.flags = flags
        self.window = window
        self.urgent = urgent
        self.mss = mss
        self.wscale = wscale
        self.sack_permitted = sack_permitted
        self.timestamp = timestamp
        self.sack = sack
        self.payload = payload
        self.ect = False
        self.resent = False
        self.acks = 1

    @property
    def seg_len(self):
        """SEG.LEN: payload octets plus one for each of SYN and FIN (RFC 9293 3.4)."""
        return len(self.payload) + (1 if self.flags & SYN else 0) + (1 if self.flags & FIN else 0)

    def flag_string(self):
        return "".join(name for bit, name in _FLAG_NAMES if self.flags & bit) or "-"

    def __repr__(self):
        opts = []
        if self.mss is not None:
            opts.append(f"mss={self.mss}")
        if self.wscale is not None:
            opts.append(f"ws={self.wscale}")
        if self.sack_permitted:
            opts.append("sackOK")
        if self.timestamp is not None:
            opts.append(f"ts={self.timestamp[0]}/{self.timestamp[1]}")
        if self.sack:
            opts.append("sack=" + ",".join(f"{a}-{b}" for a, b in self.sack))
        return (f"<TCP {self.src_port}>{self.dst_port} [{self.flag_string()}] seq={self.seq} "
                f"ack={self.ack} win={self.window} len={len(self.payload)}"
                + (" " + " ".join(opts) if opts else "") + ">")

    def __eq__(self, other):
        if not isinstance(other, TcpSegment):
            return NotImplemented
        return all(getattr(self, a) == getattr(other, a) for a in self.__slots__
                   if a != "payload" and a != "ect" and a != "resent" and a != "acks") \
            and bytes(self.payload) == bytes(other.payload)

    __hash__ = None


def _parse_options(mv, seg):
    """Parse the option area `mv` into `seg` (RFC 9293 3.2; RFC 7323; RFC 2018)."""
    i = 0
    n = len(mv)
    while i < n:
        kind = mv[i]
        if kind == OPT_EOL:
            return
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= n:
            raise WireError("tcp-bad-option-length", f"kind {kind} has no length octet")
        length = mv[i + 1]
        if length < 2 or i + length > n:
            raise WireError("tcp-bad-option-length", f"kind {kind} length {length}")
        if kind == OPT_MSS:
            if length != 4:
                raise WireError("tcp-bad-option-length", f"MSS length {length}")
            seg.mss = (mv[i + 2] << 8) | mv[i + 3]
        elif kind == OPT_WSCALE:
            if length != 3:
                raise WireError("tcp-bad-option-length", f"window scale length {length}")
            seg.wscale = min(mv[i + 2], MAX_WSCALE)
        elif kind == OPT_SACK_PERM:
            if length != 2:
                raise WireError("tcp-bad-option-length", f"SACK-permitted length {length}")
            seg.sack_permitted = True
        elif kind == OPT_TIMESTAMP:
            if length != 10:
                raise WireError("tcp-bad-option-length", f"timestamp length {length}")
            seg.timestamp = struct.unpack_from("!II", mv, i + 2)
        elif kind == OPT_SACK:
            if (length - 2) % 8 or length == 2:
                raise WireError("tcp-bad-option-length", f"SACK length {length}")
            seg.sack = tuple(struct.unpack_from("!II", mv, j) for j in range(i + 2, i + length, 8))
        i += length


def parse(buf, src=None, dst=None):
    """Parse a TCP segment from `buf` (the IP payload, exactly the segment's bytes).

    With `src` and `dst` (IPv4 addresses as ints) the checksum is verified (MUST-3).
    Raises `WireError` with reason ``tcp-truncated``, ``tcp-bad-offset``,
    ``tcp-bad-checksum``, ``tcp-bad-option-length`` or ``tcp-bad-flags``
    (SYN together with FIN or RST, which no valid sender emits).
    """
    mv = buf if type(buf) is memoryview else memoryview(buf)
    n = len(mv)
    if n < HEADER_LEN:
        raise WireError("tcp-truncated", f"{n} bytes")
    if n >= 32 and mv[12] == 0x80 and mv[20:24] == _TS_LAYOUT:
        # the segment of an established connection with timestamps: one unpack (hot path)
        sport, dport, seq, ack, _off, flags, window, _csum, urgent, _n1, _n2, _k, _l, tsval, tsecr = \
            _HDR_TS.unpack_from(mv)
        hlen = 32
        timestamp = (tsval, tsecr)
    else:
        sport, dport, seq, ack, off, flags, window, _csum, urgent = _HDR.unpack_from(mv)
        hlen = (off >> 4) * 4
        if hlen < HEADER_LEN:
            raise WireError("tcp-bad-offset", f"data offset {off >> 4}")
        if hlen > n:
            raise WireError("tcp-truncated", f"header {hlen} > {n} bytes")
        timestamp = None
    if src is not None and dst is not None:
        # pseudo-header (RFC 9293 3.1) as the initial sum, then one C pass
        if _checksum.sum16(mv, (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + PROTO_TCP + n) \
                != 0xFFFF:
            raise WireError("tcp-bad-checksum")
    if flags & SYN and flags & (FIN | RST):
        raise WireError("tcp-bad-flags", "SYN with FIN or RST")
    seg = TcpSegment(sport, dport, seq, ack, flags, window, urgent, None, None, False, timestamp, (), mv[hlen:])
    if hlen > HEADER_LEN and timestamp is None:
        _parse_options(mv[HEADER_LEN:hlen], seg)
    return seg


def options_len(seg):
    """Octets the options of `seg` take once padded to a 32-bit boundary."""
    n = 0
    if seg.mss is not None:
        n += 4
    if seg.timestamp is not None:
        n += 12  # (SACK-permitted or NOP NOP) + timestamp
    elif seg.sack_permitted:
        n += 4
    if seg.wscale is not None:
        n += 4
    if seg.sack:
        n += 4 + 8 * len(seg.sack)  # NOP NOP kind len + blocks, already aligned
    return n


def header_len(seg):
    """Header length in octets (20 + padded options) that `build_into` will write."""
    if seg.mss is None and seg.wscale is None and not seg.sack and not seg.sack_permitted:
        return HEADER_LEN if seg.timestamp is None else HEADER_LEN + 12  # the common cases, quickly
    return HEADER_LEN + options_len(seg)


def _write_options(buf, i, seg):
    if seg.mss is not None:
        struct.pack_into("!BBH", buf, i, OPT_MSS, 4, seg.mss)
        i += 4
    if seg.timestamp is not None:
        if seg.sack_permitted:
            struct.pack_into("!BBBBII", buf, i, OPT_SACK_PERM, 2, OPT_TIMESTAMP, 10, *seg.timestamp)
        else:
            struct.pack_into("!BBBBII", buf, i, OPT_NOP, OPT_NOP, OPT_TIMESTAMP, 10, *seg.timestamp)
        i += 12
    elif seg.sack_permitted:
        struct.pack_into("!BBBB", buf, i, OPT_NOP, OPT_NOP, OPT_SACK_PERM, 2)
        i += 4
    if seg.wscale is not None:
        struct.pack_into("!BBBB", buf, i, OPT_NOP, OPT_WSCALE, 3, seg.wscale)
        i += 4
    if seg.sack:
        struct.pack_into("!BBBB", buf, i, OPT_NOP, OPT_NOP, OPT_SACK, 2 + 8 * len(seg.sack))
        i += 4
        for left, right in seg.sack:
            struct.pack_into("!II", buf, i, left, right)
            i += 8
    return i


def emit_header(buf, offset, seg, src, dst, payload_sum=None, device_checksum=False):
    """Write the header and options of `seg` (not its payload) at `buf[offset:]`; return its length.

    The checksum over the IPv4 pseudo-header of `src` -> `dst` is computed and stored
    (MUST-2) for the segment with ``seg.payload`` after the header, so the payload can
    travel as a separate fragment, uncopied. `payload_sum` is that payload's sum
    (`checksum.sum16`) when the caller already has it. With `device_checksum` (a TSO
    segment: the device cuts it and computes each piece's checksum) nothing is summed:
    the field holds the pseudo-header sum of the whole segment, uncomplemented, which
    is where a device that finishes checksums starts (Linux's CHECKSUM_PARTIAL,
    virtio-net's NEEDS_CSUM). Options are written in a fixed, 32-bit aligned layout,
    so no padding octets are needed; MSS is written only when `seg.mss` is set (the
    connection sets it on SYNs only, MUST-65).
    """
    payload = seg.payload
    ts = seg.timestamp
    if ts is not None and seg.mss is None and seg.wscale is None and not seg.sack and not seg.sack_permitted:
        # the established connection's segment, the hot path: the header's sum from its
        # field values (no pass over the buffer), then one pack with the checksum in place
        plen = len(payload)
        sport, dport, seq, ack, flags, window, urgent = \
            seg.src_port, seg.dst_port, seg.seq & _MASK, seg.ack & _MASK, seg.flags, seg.window, seg.urgent
        tsval, tsecr = ts
        # pseudo-header (RFC 9293 3.1): addresses, protocol, TCP length
        s = (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + PROTO_TCP + 32 + plen
        if device_checksum:
            s = (s & 0xFFFF) + (s >> 16)
            csum = (s & 0xFFFF) + (s >> 16)
        elif segment_checksum is _default_segment_checksum:
            # the header's 16-bit words: ports, seq, ack, offset 8 + flags, window, urgent,
            # NOP NOP, kind 8 + length 10, TSval, TSecr (the checksum field counts as 0)
            s += (sport + dport + (seq >> 16) + (seq & 0xFFFF) + (ack >> 16) + (ack & 0xFFFF) + (0x8000 | flags)
                  + window + urgent + 0x0101 + 0x080A + (tsval >> 16) + (tsval & 0xFFFF) + (tsecr >> 16)
                  + (tsecr & 0xFFFF))
            if plen:
                s += _checksum.sum16(payload) if payload_sum is None else payload_sum
            s = (s & 0xFFFF) + (s >> 16)
            csum = ~((s & 0xFFFF) + (s >> 16)) & 0xFFFF
        else:
            _HDR_TS.pack_into(buf, offset, sport, dport, seq, ack, 0x80, flags, window, 0, urgent,
                              OPT_NOP, OPT_NOP, OPT_TIMESTAMP, 10, tsval, tsecr)
            csum = segment_checksum(src, dst, (memoryview(buf)[offset:offset + 32], payload))
        _HDR_TS.pack_into(buf, offset, sport, dport, seq, ack, 0x80, flags, window, csum, urgent,
                          OPT_NOP, OPT_NOP, OPT_TIMESTAMP, 10, tsval, tsecr)
        return 32
    hlen = header_len(seg)
    if hlen > 60:
        raise ValueError(f"TCP options too long ({hlen - HEADER_LEN} octets)")
    _HDR.pack_into(buf, offset, seg.src_port, seg.dst_port, seg.seq & _MASK,
                   seg.ack & _MASK, (hlen // 4) << 4, seg.flags, seg.window, 0, seg.urgent)
    _write_options(buf, offset + HEADER_LEN, seg)
    plen = len(payload)
    if device_checksum:
        s = (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + PROTO_TCP + hlen + plen
        s = (s & 0xFFFF) + (s >> 16)
        _CSUM.pack_into(buf, offset + 16, (s & 0xFFFF) + (s >> 16))
        return hlen
    if segment_checksum is _default_segment_checksum:
        # the default, inlined (hot path): C sums of the header and the payload, which
        # starts at an even offset (hlen is a multiple of 4), plus the pseudo-header
        acc = (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + PROTO_TCP + hlen + plen
        if plen:
            acc += _checksum.sum16(payload) if payload_sum is None else payload_sum
        csum = ~_checksum.sum16(memoryview(buf)[offset:offset + hlen], acc) & 0xFFFF
    else:
        csum = segment_checksum(src, dst, (memoryview(buf)[offset:offset + hlen], payload))
    _CSUM.pack_into(buf, offset + 16, csum)
    return hlen


def build_into(buf, offset, seg, src, dst):
    """Write `seg` (header, options, payload) into `buf` at `offset`; return octets written.

    As `emit_header`, with the payload copied in after the header.
    """
    hlen = emit_header(buf, offset, seg, src, dst)
    plen = len(seg.payload)
    buf[offset + hlen:offset + hlen + plen] = seg.payload
    return hlen + plen


def build(seg, src, dst):
    """`build_into` a fresh bytearray sized for `seg`; returns it."""
    buf = bytearray(header_len(seg) + len(seg.payload))
    build_into(buf, 0, seg, src, dst)
    return buf
