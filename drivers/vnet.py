"""virtio-net headers, and TCP send coalescing for devices that segment (TSO/GSO) for us.

Theory of operation
-------------------
A TAP opened with ``IFF_VNET_HDR`` puts a `struct virtio_net_hdr` (10 octets, host byte
order; Linux include/uapi/linux/virtio_net.h) in front of every frame, both ways. On the
way to the kernel it can describe a *super-frame*: one TCP/IPv4 header followed by up
to 64 KB of payload, with ``gso_type`` TCPV4 and ``gso_size`` the payload of each
segment it stands for. The kernel delivers such a frame to its local TCP as one buffer
(the way GRO would have merged the segments) or cuts it into ``gso_size`` segments
when it forwards it. Every frame that crosses a TAP costs the kernel one trip through
its receive path, and often one wake-up of the reader on the other CPU (tens of
microseconds on a VM), so a burst of N segments of one flow sent as one super-frame
pays that cost once instead of N times.

`coalesce` finds such runs in a transmit burst without the stack knowing: consecutive
frames of one TCP/IPv4 flow whose headers agree in everything but the IP
identification, total length and checksums, and whose sequence numbers follow each
other, where every segment but the last carries exactly ``gso_size`` octets and only
the last may have PSH (the kernel's segmentation puts PSH and FIN on the last segment
only, so ACK-only and ACK+PSH-at-the-end are the flag patterns it can reproduce). The
super-frame's header is a copy of the first frame's with the total length, the last
frame's flags, the IPv4 header checksum recomputed, and in the TCP checksum field the
pseudo-header sum of the whole segment: the kernel finishes the checksum from
``csum_start`` (``NEEDS_CSUM``), as for a segment a NIC checksums (RFC 9293 3.1 defines
the sum; the split between driver and device is Linux's). The IP identifications of
the segments the kernel cuts count up from the first one's, as the stack's would.

Frames that are not TCP/IPv4 data (ARP, ICMP, UDP, pure ACKs, fragments, SYN, FIN, RST)
go out alone, behind an all-zero header ("nothing to do"), and so does a frame whose
``alone`` attribute is true (`Packet.alone`: TCP's retransmissions, which must not share
one fate). A TCP frame that goes alone with its checksum left partial
(``checksum_partial``, the stack's segments when the device offers ``tx_checksum``) goes
behind `PARTIAL_TCP4` instead: ``NEEDS_CSUM`` from the TCP header on, and the kernel,
which delivers it to its own TCP as already checked (CHECKSUM_PARTIAL), never sums it.

On receive, the kernel's header says how far the frame is finished: ``NEEDS_CSUM``
means the transport checksum holds only the pseudo-header sum, to be completed from
``csum_start`` (`complete_checksum` does it) before the frame is an ordinary one that
a pcap or another receiver checks; ``DATA_VALID`` means the kernel verified the
checksum already.
"""
import struct

from ._vnet import ffi as _ffi, lib as _lib

VNET_HDR = struct.Struct("<BBHHHH")
"""flags, gso_type, hdr_len, gso_size, csum_start, csum_offset (virtio 1.x legacy layout)."""
VNET_HDR_LEN = VNET_HDR.size

F_NEEDS_CSUM = 1
F_DATA_VALID = 2
GSO_NONE = 0
GSO_TCPV4 = 1

PLAIN = bytes(VNET_HDR_LEN)
"""The header of a frame that needs nothing from the kernel."""

TCP_CSUM_OFFSET = 16
"""``csum_offset`` of a TCP segment: its checksum field's place in the TCP header (UDP's is 6)."""

PARTIAL_TCP4 = VNET_HDR.pack(F_NEEDS_CSUM, GSO_NONE, 34 + TCP_CSUM_OFFSET + 2, 0, 34, TCP_CSUM_OFFSET)
"""The header of one TCP/IPv4 frame (untagged, no IP options: TCP from offset 34) whose
checksum field holds the pseudo-header sum, for the kernel to finish."""

MAX_IP_LEN = 0xFFFF
_ACK = 0x10
_PSH = 0x08
_IPV4 = b"\x08\x00"
_H = struct.Struct("!H")
_I = struct.Struct("!I")


def _fold(s):
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def ones_sum(data):
    """Folded ones' complement sum of `data` (any buffer; RFC 1071), not complemented (C)."""
    if type(data) is bytes:
        return _lib.shoal_vnet_sum(data, len(data))
    return _lib.shoal_vnet_sum(_ffi.from_buffer("uint8_t[]", data), len(data))


def complete_checksum(frame, csum_start, csum_offset, into=bytearray):
    """`frame` (bytes-like) with the partial transport checksum finished, as ``NEEDS_CSUM`` asks.

    The field at ``csum_start + csum_offset`` holds the pseudo-header sum; the
    checksum is the complement of the sum of everything from ``csum_start`` on.
    Returns a new ``into`` (``bytearray`` or a subclass: one copy, finished in C),
    or None when the offsets do not fit the frame.
    """
    out = into(frame)
    if _lib.shoal_vnet_finish(_ffi.from_buffer(out), len(out), csum_start, csum_offset):
        return None
    return out


def _tcp_info(hdr):
    """(tcp_header_len, payload_len, seq, flags) of a mergeable frame, or None.

    `hdr` is the frame's first fragment; it must hold the Ethernet, IPv4 and TCP
    headers whole. Mergeable: untagged IPv4 without options (what the stack sends),
    not a fragment, TCP with ACK and nothing but PSH besides, and some payload.
    """
    if len(hdr) < 54 or hdr[12:14] != _IPV4 or hdr[14] != 0x45 or hdr[23] != 6 \
            or _H.unpack_from(hdr, 20)[0] & 0x3FFF:
        return None
    thl = (hdr[46] >> 4) * 4
    flags = hdr[47]
    if len(hdr) < 34 + thl or thl < 20 or flags & ~_PSH != _ACK:
        return None
    plen = _H.unpack_from(hdr, 16)[0] - 20 - thl
    if plen <= 0:
        return None
    return thl, plen, _I.unpack_from(hdr, 38)[0], flags


def _same_flow(a, b, thl):
    """Headers `a` and `b` agree in all but IP ident/length/checksum, seq, flags, TCP checksum."""
    t = 34
    return (a[:16] == b[:16] and a[20:24] == b[20:24] and a[26:t + 4] == b[26:t + 4]
            and a[t + 8:t + 13] == b[t + 8:t + 13] and a[t + 14:t + 16] == b[t + 14:t + 16]
            and a[t + 18:t + thl] == b[t + 18:t + thl])


def _super_header(first, thl, total_payload, last_flags):
    """The header of a super-frame: `first`'s with length, flags and checksums redone."""
    t = 34
    hdr = bytearray(first[:t + thl])
    ip_len = 20 + thl + total_payload
    _H.pack_into(hdr, 16, ip_len)
    hdr[24:26] = b"\0\0"
    _H.pack_into(hdr, 24, ~ones_sum(hdr[14:t]) & 0xFFFF)
    hdr[t + 13] = last_flags
    # pseudo-header (RFC 9293 3.1): source, destination, zero + protocol, TCP length
    pseudo = _fold(ones_sum(hdr[26:34]) + 6 + thl + total_payload)
    _H.pack_into(hdr, t + 16, pseudo)
    return hdr


def lone(frame, bufs):
    """The iovecs that write `frame` (its buffers `bufs`) as one frame of its own."""
    return [PARTIAL_TCP4 if getattr(frame, "checksum_partial", False) else PLAIN, *bufs]


def tso(bufs, gso_size):
    """The write for one frame the stack built larger than the MTU (``gso_size`` set).

    The frame is a whole TCP/IPv4 segment whose TCP checksum field holds the
    pseudo-header sum of the whole segment, uncomplemented (`Offloads.tso`'s contract,
    what a NIC's TSO expects too); the kernel cuts it into ``gso_size`` segments (PSH
    and FIN end up on the last one) and finishes each one's checksum from that sum.
    The frame's buffers are written as they are. Returns ``(iovecs, 1)``; a frame that
    is not TCP/IPv4 (or a SYN) goes plain.
    """
    first = bufs[0]
    if (len(first) < 54 or first[12:14] != _IPV4 or first[14] != 0x45 or first[23] != 6
            or first[47] & 0x02 or len(first) < 34 + (first[46] >> 4) * 4):
        return [PLAIN, *bufs], 1
    return [VNET_HDR.pack(F_NEEDS_CSUM, GSO_TCPV4, 34 + (first[46] >> 4) * 4, gso_size, 34, 16), *bufs], 1


def coalesce(frames, buffers):
    """Group a transmit burst into writes: a list of ``(iovecs, n_frames)``.

    `frames` are the burst's frames in order; ``buffers(frame)`` gives a frame's
    fragments (the first holding its headers whole, as the stack builds them).
    Each group's `iovecs` start with a virtio-net header and write one frame to
    the device; ``n_frames`` is how many frames of the burst it stands for, so the
    groups cover the burst in order (see the module docstring for the rules). A
    frame the stack already built as a super-segment (its ``gso_size`` attribute
    set) goes alone, through `tso`.
    """
    out = []
    i, n = 0, len(frames)
    while i < n:
        frame = frames[i]
        bufs = buffers(frame)
        gso_size = getattr(frame, "gso_size", 0)
        if gso_size:
            out.append(tso(bufs, gso_size))
            i += 1
            continue
        first = bufs[0]
        # a run starts with a full segment without PSH: test its flags octet before the rest
        info = _tcp_info(first) if i + 1 < n and len(first) > 47 and first[47] == _ACK \
            and not getattr(frame, "alone", False) else None
        if info is None:
            out.append((lone(frame, bufs), 1))
            i += 1
            continue
        thl, gso_size, seq, flags = info
        hl = 34 + thl
        payload = [b[hl:] for b in bufs[:1] if len(b) > hl]
        payload.extend(bufs[1:])
        total = gso_size
        expect = (seq + gso_size) & 0xFFFFFFFF
        last_flags = flags
        j = i + 1
        while j < n and last_flags == _ACK:
            if getattr(frames[j], "gso_size", 0) or getattr(frames[j], "alone", False):
                break
            nbufs = buffers(frames[j])
            nxt = nbufs[0]
            ninfo = _tcp_info(nxt)
            if (ninfo is None or ninfo[0] != thl or ninfo[2] != expect
                    or ninfo[1] > gso_size or 20 + thl + total + ninfo[1] > MAX_IP_LEN
                    or not _same_flow(first, nxt, thl)):
                break
            plen = ninfo[1]
            payload.extend(b[hl:] for b in nbufs[:1] if len(b) > hl)
            payload.extend(nbufs[1:])
            total += plen
            expect = (expect + plen) & 0xFFFFFFFF
            last_flags = ninfo[3]
            j += 1
            if plen < gso_size:
                break
        if j == i + 1:
            out.append((lone(frame, bufs), 1))
            i += 1
            continue
        vnet = VNET_HDR.pack(F_NEEDS_CSUM, GSO_TCPV4, hl, gso_size, 34, 16)
        out.append(([vnet, _super_header(first, thl, total, last_flags), *payload], j - i))
        i = j
    return out
