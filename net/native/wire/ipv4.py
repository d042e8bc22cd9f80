"""IPv4 headers (RFC 791). Options are checked for well-formed lengths and reported by kind only:
no option is acted on here (RFC 1122 3.2.1.8 lets a host ignore those it does not implement)."""
import ipaddress
import struct
from typing import NamedTuple

from . import WireError
from .checksum import sum16

HEADER_LEN = 20
MAX_DATAGRAM = 65535

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17

OPT_EOL = 0
OPT_NOP = 1
OPT_LSRR = 131
"""Loose source and record route (RFC 791 3.1)."""
OPT_SSRR = 137
"""Strict source and record route (RFC 791 3.1)."""

FLAG_DF = 0x4000
FLAG_MF = 0x2000
_OFFSET_MASK = 0x1FFF

_HDR = struct.Struct("!BBHHHBBHII")
_CSUM = struct.Struct("!H")
_tuple_new = tuple.__new__  # builds an `Ipv4Header` without the Python-level __new__ (hot path)


class Ipv4Header(NamedTuple):
    src: int
    dst: int
    proto: int
    ttl: int
    ident: int
    df: bool
    mf: bool
    frag_offset: int  # in bytes
    header_len: int
    total_len: int
    tos: int
    options: tuple = ()  # the option kinds present, in order (EOL and NOP left out)

    @property
    def is_fragment(self):
        return self.mf or self.frag_offset != 0


def parse(data, verify_checksum=True):
    """Parse an IPv4 datagram; returns ``(Ipv4Header, payload)``.

    Link-layer padding past the total length is cut off. Rejects what RFC 791 makes
    impossible, and fragments that would end past 65535 bytes (the "ping of death").
    """
    n = len(data)
    if n < HEADER_LEN:
        raise WireError("truncated", "ipv4 header")
    vihl, tos, total, ident, frag, ttl, proto, csum, src, dst = _HDR.unpack_from(data)
    if vihl >> 4 != 4:
        raise WireError("bad-version", str(vihl >> 4))
    hlen = (vihl & 0x0F) * 4
    if hlen < HEADER_LEN:
        raise WireError("bad-header-length", str(hlen))
    if n < hlen:
        raise WireError("truncated", "ipv4 options")
    if total < hlen:
        raise WireError("bad-total-length", f"{total} < header {hlen}")
    if n < total:
        raise WireError("truncated", f"ipv4 payload {n} < {total}")
    if verify_checksum:
        # RFC 1071: the header's words, checksum included, sum to all ones when intact
        if hlen == HEADER_LEN:  # no options: sum the fields just unpacked (no pass over the buffer)
            s = ((vihl << 8) | tos) + total + ident + frag + ((ttl << 8) | proto) + csum \
                + (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF)
            s = (s & 0xFFFF) + (s >> 16)
            s = (s & 0xFFFF) + (s >> 16)
        else:
            s = sum16(data[:hlen])
        if s != 0xFFFF:
            raise WireError("bad-checksum", "ipv4")
    offset = (frag & _OFFSET_MASK) * 8
    mf = bool(frag & FLAG_MF)
    if offset + total - hlen > MAX_DATAGRAM - HEADER_LEN:
        # The reassembled datagram, with at least a minimal header, would exceed 65535 bytes.
        raise WireError("oversized-fragment", f"data ends at {offset + total - hlen}")
    if mf and (total - hlen) % 8:
        # RFC 791 section 3.2: every fragment but the last carries a multiple of 8 octets.
        raise WireError("bad-fragment-length", str(total - hlen))
    kinds = option_kinds(data[HEADER_LEN:hlen]) if hlen > HEADER_LEN else ()
    hdr = _tuple_new(Ipv4Header, (src, dst, proto, ttl, ident, bool(frag & FLAG_DF), mf, offset, hlen, total, tos,
                                  kinds))
    return hdr, data[hlen:total]


def option_kinds(area):
    """The kinds of the options in `area` (the header past its first 20 octets), in order.

    RFC 791 3.1: EOL ends the list, NOP is one octet, every other option is kind,
    length (counting both), data. A length under 2 or past the header is malformed.
    """
    kinds = []
    i, n = 0, len(area)
    while i < n:
        kind = area[i]
        if kind == OPT_EOL:
            break
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= n or area[i + 1] < 2 or i + area[i + 1] > n:
            raise WireError("bad-option-length", f"ipv4 option {kind}")
        kinds.append(kind)
        i += area[i + 1]
    return tuple(kinds)


def parse_quoted(data):
    """Parse the IPv4 header quoted inside an ICMP error (RFC 792): ``(Ipv4Header, rest)``.

    The quote is cut short by design, so the total length is not checked against the
    data and the checksum is not verified (routers may quote a header they changed).
    """
    n = len(data)
    if n < HEADER_LEN:
        raise WireError("truncated", "quoted ipv4 header")
    vihl, tos, total, ident, frag, ttl, proto, _csum, src, dst = _HDR.unpack_from(data)
    hlen = (vihl & 0x0F) * 4
    if vihl >> 4 != 4 or hlen < HEADER_LEN or n < hlen:
        raise WireError("bad-quoted-header")
    hdr = Ipv4Header(src, dst, proto, ttl, ident, bool(frag & FLAG_DF), bool(frag & FLAG_MF),
                     (frag & _OFFSET_MASK) * 8, hlen, total, tos)
    return hdr, data[hlen:]


def emit(buf, offset, src, dst, proto, payload_len, ident=0, ttl=64, df=False, mf=False, frag_offset=0, tos=0):
    """Write a 20-byte header (no options) with its checksum at `buf[offset:]`.

    The checksum (RFC 791, RFC 1071) is summed from the field values, with no pass over the buffer."""
    total = HEADER_LEN + payload_len
    if total > MAX_DATAGRAM:
        raise ValueError(f"IPv4 datagram of {total} bytes")
    frag = (FLAG_DF if df else 0) | (FLAG_MF if mf else 0) | (frag_offset >> 3)
    s = (0x4500 | tos) + total + ident + frag + ((ttl << 8) | proto) \
        + (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    _HDR.pack_into(buf, offset, 0x45, tos, total, ident, frag, ttl, proto, ~s & 0xFFFF, src, dst)


def push(packet, src, dst, proto, ident=0, ttl=64, df=False, mf=False, frag_offset=0, tos=0):
    """Prepend a header to a `Packet` whose current contents are the IP payload."""
    n = len(packet)
    offset = packet.prepend(HEADER_LEN)
    emit(packet.buf, offset, src, dst, proto, n, ident, ttl, df, mf, frag_offset, tos)


def build(src, dst, proto, payload=b"", options=b"", **fields):
    """The datagram as bytes (tests, tools); `fields` as for `emit`. `options` (their
    octets, up to 40, a multiple of 4) follow the fixed header."""
    if len(options) % 4 or len(options) > 40:
        raise ValueError(f"IPv4 options of {len(options)} octets")
    buf = bytearray(HEADER_LEN)
    emit(buf, 0, src, dst, proto, len(options) + len(payload), **fields)
    if options:
        buf[0] = 0x40 | (HEADER_LEN + len(options)) >> 2
        buf += options
        _CSUM.pack_into(buf, 10, 0)
        _CSUM.pack_into(buf, 10, ~sum16(buf) & 0xFFFF)
    return bytes(buf) + bytes(payload)


def addr(text):
    """Dotted quad to int."""
    return int(ipaddress.IPv4Address(text))

