"""The frame of an established connection's segment: Ethernet, IPv4 and TCP headers in one struct.

Almost every frame a connection sends or receives once it is established has one of two
layouts: an untagged Ethernet II header, an IPv4 header without options, and a TCP
header whose only option is the timestamp in RFC 7323 appendix A's layout (NOP, NOP,
TSopt), 66 octets, or, with a peer that does not use timestamps (Windows does not by
default), a TCP header without options, 54 octets. The general path builds and parses
them as three headers in three layers (`ethernet`, `ipv4`, `tcp`), each with its calls,
objects and slices; for a small request that is a fifth of what a segment costs. `emit`
and `parse` do the same for these two layouts with one ``pack_into`` or ``unpack_from``
each, and give exactly what the three would (the tests compare them on every field).

They stay pure: the layers decide when a frame may take this path (`Ipv4.send_tcp`,
`NativeStack`'s receive), and `parse` gives way, by returning None, for any frame the
general path has to judge (an unexpected layout or a failed check), so that path still
counts each drop by its reason.
"""
import struct

from . import checksum as _checksum
from . import tcp as _tcp
from .ethernet import ETHERTYPE_IPV4, HEADER_LEN as ETHERNET_HEADER_LEN
from .ipv4 import FLAG_DF, PROTO_TCP

DATAGRAM_HEADER_LEN = 20 + 32
"""IPv4 without options, then TCP with the timestamp option: what the IPv4 total length
counts besides the payload."""
HEADER_LEN = ETHERNET_HEADER_LEN + DATAGRAM_HEADER_LEN
"""The frame's three headers."""
PLAIN_DATAGRAM_HEADER_LEN = 20 + 20
"""`DATAGRAM_HEADER_LEN` of the layout without TCP options (a segment without a timestamp)."""
PLAIN_HEADER_LEN = ETHERNET_HEADER_LEN + PLAIN_DATAGRAM_HEADER_LEN
"""`HEADER_LEN` of the layout without TCP options."""

_FRAME = struct.Struct("!6s6sH" "BBHHHBBHII" "HHIIBBHHH" "III")
_PLAIN = struct.Struct("!6s6sH" "BBHHHBBHII" "HHIIBBHHH")
_TCP_TS = 0x80  # data offset 8 (32 octets) in the high nibble
_TCP_PLAIN = 0x50  # data offset 5 (20 octets)
_CHECKSUM = struct.Struct("!H")
_TS_LAYOUT = _tcp.OPT_NOP << 24 | _tcp.OPT_NOP << 16 | _tcp.OPT_TIMESTAMP << 8 | 10  # NOP, NOP, kind, length
_TS_WORDS = (_TS_LAYOUT >> 16) + (_TS_LAYOUT & 0xFFFF)  # (in a sum)
_SYN = _tcp.SYN
_FIN_RST = _tcp.FIN | _tcp.RST
_TCP_OFFSET = ETHERNET_HEADER_LEN + 20  # of the TCP header in the frame
_PROTO_OFFSET = ETHERNET_HEADER_LEN + 9  # of IPv4's protocol field in the frame
_DATA_OFFSET = _TCP_OFFSET + 12  # of TCP's data offset field in the frame


def emit(buf, offset, eth_dst, eth_src, src, dst, ident, ttl, df, tos, seg, device_checksum):
    """Write the three headers of `seg` at ``buf[offset:]``; the payload follows as a fragment.

    `seg` carries the timestamp option and no other, or no option at all (the caller
    checks). IPv4's checksum (RFC 791) and TCP's (RFC 9293 3.1, MUST-2) are summed from the
    field values, the payload's with one C pass; with `device_checksum` the TCP field holds
    the pseudo-header sum alone, uncomplemented, for the device to finish
    (`tcp.emit_header`). Returns the headers' length: `HEADER_LEN`, or `PLAIN_HEADER_LEN`
    for a segment without a timestamp.
    """
    payload = seg.payload
    plen = len(payload)
    timestamp = seg.timestamp
    tcp_len = (20 if timestamp is None else 32) + plen  # (the pseudo-header's TCP length)
    total = 20 + tcp_len  # IPv4 total length
    frag = FLAG_DF if df else 0
    addresses = (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF)  # (in both sums)
    s = (0x4500 | tos) + total + ident + frag + ((ttl << 8) | PROTO_TCP) + addresses
    s = (s & 0xFFFF) + (s >> 16)
    ip_csum = ~((s & 0xFFFF) + (s >> 16)) & 0xFFFF
    sport, dport, seq, ack, flags, window, urgent = \
        seg.src_port, seg.dst_port, seg.seq & 0xFFFFFFFF, seg.ack & 0xFFFFFFFF, seg.flags, seg.window, seg.urgent
    # pseudo-header (RFC 9293 3.1): addresses, protocol, TCP length
    s = addresses + PROTO_TCP + tcp_len
    swapped = False  # (`tcp.segment_checksum` replaced: summed by it over the headers as packed)
    if device_checksum:
        s = (s & 0xFFFF) + (s >> 16)
        tcp_csum = (s & 0xFFFF) + (s >> 16)
    elif _tcp.segment_checksum is not _tcp._default_segment_checksum:
        swapped = True
        tcp_csum = 0
    else:
        s += sport + dport + (seq >> 16) + (seq & 0xFFFF) + (ack >> 16) + (ack & 0xFFFF) + window + urgent
        if timestamp is None:
            s += _TCP_PLAIN << 8 | flags
        else:
            tsval, tsecr = timestamp
            s += ((_TCP_TS << 8 | flags) + _TS_WORDS + (tsval >> 16) + (tsval & 0xFFFF)
                  + (tsecr >> 16) + (tsecr & 0xFFFF))
        if plen:
            s += _checksum.sum16(payload)
        s = (s & 0xFFFF) + (s >> 16)
        tcp_csum = ~((s & 0xFFFF) + (s >> 16)) & 0xFFFF
    if timestamp is None:
        _PLAIN.pack_into(buf, offset, eth_dst, eth_src, ETHERTYPE_IPV4,
                         0x45, tos, total, ident, frag, ttl, PROTO_TCP, ip_csum, src, dst,
                         sport, dport, seq, ack, _TCP_PLAIN, flags, window, tcp_csum, urgent)
        length = PLAIN_HEADER_LEN
    else:
        _FRAME.pack_into(buf, offset, eth_dst, eth_src, ETHERTYPE_IPV4,
                         0x45, tos, total, ident, frag, ttl, PROTO_TCP, ip_csum, src, dst,
                         sport, dport, seq, ack, _TCP_TS, flags, window, tcp_csum, urgent,
                         _TS_LAYOUT, timestamp[0], timestamp[1])
        length = HEADER_LEN
    if swapped:
        header = memoryview(buf)[offset + _TCP_OFFSET:offset + length]
        _CHECKSUM.pack_into(buf, offset + _TCP_OFFSET + 16, _tcp.segment_checksum(src, dst, (header, payload)))
    return length


def parse(frame, mac, address, verify):
    """``(src, tos, seg)`` of a frame in either layout to `mac` and IPv4 `address`, or None.

    None means "not decided here": anything but an untagged IPv4 frame to `mac` from
    another MAC, an unfragmented datagram without options to `address` from a unicast
    source, with a correct header checksum, carrying TCP with the timestamp option alone
    or without options, a correct TCP checksum (checked only when `verify`) and valid
    flags. Link padding past the IPv4 total length is cut off, as `ipv4.parse` does;
    `seg.payload` is a view of `frame`.
    """
    n = len(frame)
    if n < PLAIN_HEADER_LEN or frame[_PROTO_OFFSET] != PROTO_TCP:
        return None  # (UDP, ICMP, ARP: no unpack of 25 fields to learn it)
    off = frame[_DATA_OFFSET]
    if off == _TCP_TS and n >= HEADER_LEN:
        (eth_dst, eth_src, ethertype, vihl, tos, total, ident, frag, ttl, proto, ip_csum, src, dst,
         sport, dport, seq, ack, off, flags, window, tcp_csum, urgent, layout, tsval, tsecr) = \
            _FRAME.unpack_from(frame)
        if layout != _TS_LAYOUT:
            return None
        timestamp = (tsval, tsecr)
        length = HEADER_LEN
    elif off == _TCP_PLAIN:
        (eth_dst, eth_src, ethertype, vihl, tos, total, ident, frag, ttl, proto, ip_csum, src, dst,
         sport, dport, seq, ack, off, flags, window, tcp_csum, urgent) = _PLAIN.unpack_from(frame)
        timestamp = None
        length = PLAIN_HEADER_LEN
    else:
        return None
    if (vihl != 0x45 or dst != address or eth_dst != mac or ethertype != ETHERTYPE_IPV4 or eth_src == mac
            or frag & 0x3FFF or total < length - ETHERNET_HEADER_LEN or total > n - ETHERNET_HEADER_LEN
            or (flags & _SYN and flags & _FIN_RST)):
        return None
    if src == 0xFFFFFFFF or src >> 28 == 0xE or src == address:
        return None
    # the IPv4 header's words, checksum included, sum to all ones when intact (RFC 1071)
    addresses = (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF)  # (in both sums)
    s = (0x4500 | tos) + total + ident + frag + ((ttl << 8) | PROTO_TCP) + ip_csum + addresses
    s = (s & 0xFFFF) + (s >> 16)
    if (s & 0xFFFF) + (s >> 16) != 0xFFFF:
        return None
    end = ETHERNET_HEADER_LEN + total
    if verify and _checksum.sum16(frame[_TCP_OFFSET:end], addresses + PROTO_TCP + total - 20) != 0xFFFF:
        return None
    return src, tos, _tcp.TcpSegment(sport, dport, seq, ack, flags, window, urgent, None, None, False,
                                     timestamp, (), frame[length:end])
