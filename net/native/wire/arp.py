"""ARP packets for IPv4 over Ethernet (RFC 826)."""
import struct
from typing import NamedTuple

from . import WireError

LEN = 28
HTYPE_ETHERNET = 1
PTYPE_IPV4 = 0x0800
OP_REQUEST = 1
OP_REPLY = 2

_ARP = struct.Struct("!HHBBH6sI6sI")


class ArpPacket(NamedTuple):
    op: int
    sha: bytes  # sender hardware address
    spa: int  # sender protocol address (IPv4 as int)
    tha: bytes
    tpa: int


def parse(data):
    """Parse an Ethernet/IPv4 ARP packet; trailing padding is ignored."""
    if len(data) < LEN:
        raise WireError("truncated", "arp")
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(data)
    if htype != HTYPE_ETHERNET or ptype != PTYPE_IPV4:
        raise WireError("arp-unsupported", f"htype {htype} ptype {ptype:#x}")
    if hlen != 6 or plen != 4:
        raise WireError("arp-bad-address-length", f"hlen {hlen} plen {plen}")
    if op not in (OP_REQUEST, OP_REPLY):
        raise WireError("arp-bad-op", str(op))
    return ArpPacket(op, sha, spa, tha, tpa)


def emit(buf, offset, op, sha, spa, tha, tpa):
    _ARP.pack_into(buf, offset, HTYPE_ETHERNET, PTYPE_IPV4, 6, 4, op, sha, spa, tha, tpa)


def build(op, sha, spa, tha, tpa):
    return _ARP.pack(HTYPE_ETHERNET, PTYPE_IPV4, 6, 4, op, sha, spa, tha, tpa)
