"""Ethernet II frames (IEEE 802.3 with an EtherType), with 802.1Q / 802.1ad tags parsed.

The FCS is not present: drivers hand over and take frames without it.
"""
import struct
from typing import NamedTuple

from . import WireError

HEADER_LEN = 14
TAG_LEN = 4
MAX_TAGS = 2  # an 802.1ad service tag and an 802.1Q customer tag

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_ARP = 0x0806
ETHERTYPE_VLAN = 0x8100  # IEEE 802.1Q
ETHERTYPE_QINQ = 0x88A8  # IEEE 802.1ad
ETHERTYPE_IPV6 = 0x86DD
_TAGS = (ETHERTYPE_VLAN, ETHERTYPE_QINQ)

BROADCAST = b"\xff" * 6

HEADER = struct.Struct("!6s6sH")
"""Destination, source, EtherType (type/length): an untagged frame's whole header."""
_HDR = HEADER
_TAG = struct.Struct("!HH")
_tuple_new = tuple.__new__  # builds an `EthernetFrame` without the Python-level __new__ (hot path)


class EthernetFrame(NamedTuple):
    dst: bytes
    src: bytes
    ethertype: int
    payload: memoryview
    vlans: tuple = ()
    """Tag control information (PCP, DEI, VID) of each tag, outermost first."""


def parse(frame):
    """Parse an Ethernet II frame (a memoryview); raises `WireError` if it is not one."""
    if len(frame) < HEADER_LEN:
        raise WireError("truncated", "ethernet header")
    dst, src, ethertype = _HDR.unpack_from(frame)
    offset = HEADER_LEN
    vlans = ()
    while ethertype in _TAGS:
        if len(vlans) == MAX_TAGS:
            raise WireError("too-many-vlan-tags")
        if len(frame) < offset + TAG_LEN:
            raise WireError("truncated", "vlan tag")
        tci, ethertype = _TAG.unpack_from(frame, offset)
        vlans += (tci,)
        offset += TAG_LEN
    if ethertype < 0x0600:
        # 0..1500 is an IEEE 802.3 length field, 1501..1535 is undefined (IEEE 802.3 clause 3.2.6).
        raise WireError("not-ethernet-ii", f"type/length {ethertype}")
    return _tuple_new(EthernetFrame, (dst, src, ethertype, frame[offset:], vlans))


def push(packet, dst, src, ethertype, vlan=None):
    """Prepend the Ethernet header to a `Packet` (with one 802.1Q tag when `vlan` is a TCI)."""
    if vlan is None:
        _HDR.pack_into(packet.buf, packet.prepend(HEADER_LEN), dst, src, ethertype)
    else:
        off = packet.prepend(HEADER_LEN + TAG_LEN)
        _HDR.pack_into(packet.buf, off, dst, src, ETHERTYPE_VLAN)
        _TAG.pack_into(packet.buf, off + HEADER_LEN, vlan, ethertype)


def build(dst, src, ethertype, payload=b"", vlans=()):
    """The frame as bytes (tests, tools, a datagram handed to another shard); `vlans` are TCIs,
    outermost first.

    One tag is an 802.1Q tag; with two, the outer one is an 802.1ad service tag.
    """
    tpids = [ETHERTYPE_QINQ, ETHERTYPE_VLAN] if len(vlans) == 2 else [ETHERTYPE_VLAN] * len(vlans)
    out = _HDR.pack(dst, src, tpids[0] if vlans else ethertype)
    for tci, inner_type in zip(vlans, tpids[1:] + [ethertype]):
        out += _TAG.pack(tci, inner_type)
    return out + bytes(payload)


def mac_to_str(mac):
    return ":".join(f"{b:02x}" for b in mac)


def mac_from_str(text):
    """Parse ``aa:bb:cc:dd:ee:ff`` (or with dashes); raises ValueError on anything else."""
    parts = text.replace("-", ":").split(":")
    if len(parts) != 6 or not all(1 <= len(p) <= 2 for p in parts):
        raise ValueError(f"bad MAC address {text!r}")
    return bytes(int(p, 16) for p in parts)
