"""ICMP messages for IPv4 (RFC 792)."""
import struct
from typing import NamedTuple

from . import WireError
from .checksum import checksum, finish, sum_chunks, verify

HEADER_LEN = 8

ECHO_REPLY = 0
DEST_UNREACHABLE = 3
ECHO_REQUEST = 8
TIME_EXCEEDED = 11
PARAMETER_PROBLEM = 12

# Destination unreachable codes (RFC 792; RFC 1812 section 5.2.7.1)
NET_UNREACHABLE = 0
HOST_UNREACHABLE = 1
PROTOCOL_UNREACHABLE = 2
PORT_UNREACHABLE = 3
FRAGMENTATION_NEEDED = 4
# Time exceeded codes
TTL_EXCEEDED = 0
REASSEMBLY_TIME_EXCEEDED = 1

_HDR = struct.Struct("!BBHI")
_CSUM = struct.Struct("!H")


class IcmpMessage(NamedTuple):
    type: int
    code: int
    rest: int  # the 32-bit "rest of header": id/sequence, next-hop MTU, pointer...
    payload: memoryview

    @property
    def echo_id(self):
        return self.rest >> 16

    @property
    def echo_seq(self):
        return self.rest & 0xFFFF


def parse(data):
    """Parse an ICMP message and verify its checksum (over the whole message)."""
    if len(data) < HEADER_LEN:
        raise WireError("truncated", "icmp")
    if not verify(data):
        raise WireError("bad-checksum", "icmp")
    typ, code, _csum, rest = _HDR.unpack_from(data)
    return IcmpMessage(typ, code, rest, data[HEADER_LEN:])


def push(packet, typ, code, rest):
    """Prepend an ICMP header to a `Packet` holding the message body; computes the checksum."""
    off = packet.prepend(HEADER_LEN)
    _HDR.pack_into(packet.buf, off, typ, code, 0, rest)
    _CSUM.pack_into(packet.buf, off + 2, finish(sum_chunks(packet.views())))


def build(typ, code, rest, payload=b""):
    buf = bytearray(_HDR.pack(typ, code, 0, rest)) + payload
    _CSUM.pack_into(buf, 2, checksum(buf))
    return bytes(buf)
