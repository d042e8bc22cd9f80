"""UDP headers (RFC 768) with the IPv4 pseudo-header checksum."""
import struct
from typing import NamedTuple

from . import WireError
from .checksum import pseudo_header_sum, sum16, sum_chunks
from ..packet import Packet
from .ipv4 import PROTO_UDP

HEADER_LEN = 8

_HDR = struct.Struct("!HHHH")
_CSUM = struct.Struct("!H")


class UdpHeader(NamedTuple):
    src_port: int
    dst_port: int
    length: int
    checksum: int


def parse(data, src, dst, verify_checksum=True):
    """Parse a UDP datagram carried from `src` to `dst` (ints); returns ``(UdpHeader, payload)``.

    A zero checksum means the sender computed none (RFC 768), which IPv4 allows.
    """
    n = len(data)
    if n < HEADER_LEN:
        raise WireError("truncated", "udp header")
    sport, dport, length, csum = _HDR.unpack_from(data)
    if length < HEADER_LEN:
        raise WireError("bad-length", f"udp length {length}")
    if length > n:
        raise WireError("truncated", f"udp length {length} > {n}")
    if length < n:
        data = data[:length]
    if verify_checksum and csum and sum16(data, pseudo_header_sum(src, dst, PROTO_UDP, length)) != 0xFFFF:
        raise WireError("bad-checksum", "udp")
    return UdpHeader(sport, dport, length, csum), data[HEADER_LEN:]


def push(packet, src, dst, src_port, dst_port):
    """Prepend a UDP header to a `Packet` holding the payload, with the checksum filled in."""
    length = len(packet) + HEADER_LEN
    if length > 0xFFFF:
        raise ValueError(f"UDP datagram of {length} bytes")
    off = packet.prepend(HEADER_LEN)
    buf = packet.buf
    _HDR.pack_into(buf, off, src_port, dst_port, length, 0)
    csum = ~sum_chunks(packet.views(), pseudo_header_sum(src, dst, PROTO_UDP, length)) & 0xFFFF
    # RFC 768: a computed zero is sent as all ones (zero means "no checksum").
    _CSUM.pack_into(buf, off + 6, csum or 0xFFFF)


def build(src, dst, src_port, dst_port, payload=b""):
    """The datagram as bytes (tests, tools)."""
    p = Packet(payload)
    push(p, src, dst, src_port, dst_port)
    return bytes(p.linearize())
