"""The frame of a unicast UDP datagram to us: Ethernet, IPv4 and UDP headers in one struct.

`tcp_frame`'s sibling for UDP. Nearly every UDP frame a shard takes in (a memcached
request, an iperf3 datagram, a DNS answer) has one layout: an untagged Ethernet II header,
an IPv4 header without options, unfragmented, and the UDP header: 42 octets. The general
path reads that as three headers in three layers (`ethernet`, `Ipv4.receive` with
`ipv4.parse`, `Udp.receive` with `udp.parse`), each with its calls, objects and slices.
`parse` does it with one ``unpack_from`` and the same checks, and gives exactly what they
would give (the tests compare them).

It stays pure and gives way, by returning None, for any frame the general path has to
judge (another layout, a fragment, a broadcast, a failed check), so that path still
counts each drop by its reason; the stack decides where the datagram goes
(`NativeStack._demultiplex`).
"""
import struct

from . import checksum as _checksum
from .ethernet import ETHERTYPE_IPV4, HEADER_LEN as ETHERNET_HEADER_LEN
from .ipv4 import PROTO_UDP

HEADER_LEN = ETHERNET_HEADER_LEN + 20 + 8
"""The frame's three headers."""

_FRAME = struct.Struct("!6s6sH" "BBHHHBBHII" "HHHH")
_PROTO_OFFSET = ETHERNET_HEADER_LEN + 9  # of IPv4's protocol field in the frame
_UDP_OFFSET = ETHERNET_HEADER_LEN + 20  # of the UDP header in the frame


def parse(frame, mac, address, verify):
    """``(src, src_port, dst_port, payload)`` of a frame with this layout to `mac` and IPv4
    `address`, or None.

    None means "not decided here": anything but an untagged IPv4 frame to `mac` from
    another MAC, an unfragmented datagram without options to `address` from a unicast
    source, with a correct header checksum, carrying UDP whose length fits the datagram,
    with a correct checksum (checked only when `verify`, and only if the sender computed
    one: zero means none, RFC 768). Octets past the UDP length (link padding, or a UDP
    length short of IPv4's) are cut off, as `udp.parse` does; `payload` is a view of
    `frame`.
    """
    n = len(frame)
    if n < HEADER_LEN or frame[_PROTO_OFFSET] != PROTO_UDP:
        return None
    (eth_dst, eth_src, ethertype, vihl, tos, total, ident, frag, ttl, proto, ip_csum, src, dst,
     sport, dport, length, csum) = _FRAME.unpack_from(frame)
    if (vihl != 0x45 or dst != address or eth_dst != mac or ethertype != ETHERTYPE_IPV4 or eth_src == mac
            or frag & 0x3FFF or total > n - ETHERNET_HEADER_LEN or length < 8 or length > total - 20):
        return None
    if src == 0xFFFFFFFF or src >> 28 == 0xE or src == address:
        return None
    # the IPv4 header's words, checksum included, sum to all ones when intact (RFC 1071)
    addresses = (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF)  # (in both sums)
    s = (0x4500 | tos) + total + ident + frag + ((ttl << 8) | proto) + ip_csum + addresses
    s = (s & 0xFFFF) + (s >> 16)
    if (s & 0xFFFF) + (s >> 16) != 0xFFFF:
        return None
    end = _UDP_OFFSET + length
    if verify and csum and _checksum.sum16(frame[_UDP_OFFSET:end], addresses + PROTO_UDP + length) != 0xFFFF:
        return None
    return src, sport, dport, frame[HEADER_LEN:end]
