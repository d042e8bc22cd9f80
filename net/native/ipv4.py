"""IPv4 for a host (RFC 791, RFC 1122 section 3): delivery, routing, fragmentation, reassembly.

Theory of operation
-------------------
`Ipv4` is sans-I/O. The stack hands it each IPv4 payload of an Ethernet frame with
`receive(view, packet, now)`; it validates the header (drops counted by reason in
`drops`), accepts datagrams for our address or a broadcast, reassembles fragments and
calls the handler registered for the protocol number in `handlers` as
``handler(header, datagram, packet, now)``. `datagram` is the whole datagram (header
included, link padding cut off; ICMP errors quote it), its payload is
``datagram[header.header_len:]``. The handler may keep views only after
``packet.hold()`` (and must then `release()` it).

`send(packet, dst, proto, now)` routes (on-link by address/netmask, else through the
gateway; broadcasts go to the Ethernet broadcast address), prepends the header into
the packet's headroom and passes it to the link layer (`Arp.output`). Datagrams above
the MTU are split into fragments that share the payload's memory (`Packet.slice`),
unless DF is set, which fails the send with EMSGSIZE (RFC 1191's sender side).

Reassembly (RFC 791 section 3.2, with RFC 815's insight that it suffices to track what
is still missing): fragments are keyed by (src, dst, protocol, identification) and
copied out of the driver's buffers (a slow peer must not pin receive buffers for 30 s).
Safety rules, each counted in `drops`:

* a fragment that overlaps another is not reconciled as RFC 791 allowed: like RFC 5722
  does for IPv6, the whole datagram is discarded, and the key stays "poisoned" until the
  timeout so that its remaining fragments are discarded too. An exact duplicate (same
  offset, same bytes, as a duplicating network produces) is dropped on its own;
* data past 65535 bytes is refused by the parser ("ping of death"); a second "last"
  fragment with a different end, or data past the known end, poisons the datagram;
* all pending fragments together may use at most `reassembly_memory` bytes (counting a
  per-fragment overhead so that floods of tiny fragments are bounded too): the oldest
  datagrams are evicted first; there are at most `max_reassemblies` datagrams and
  `max_fragments` fragments each;
* a datagram incomplete after `reassembly_timeout` (30 s; RFC 791 suggests 15 s, Linux
  uses 30 s) is dropped and, if its first fragment arrived, an ICMP time exceeded
  (code 1) goes back to the sender (RFC 1122 section 3.3.2).
"""
import errno
import struct
from bisect import insort

from .arp import BROADCAST_IP
from .counts import Counts
from .packet import Packet
from .wire import WireError
from .wire import ipv4 as wire_ipv4
from .wire import tcp_frame
from .wire.ethernet import HEADER_LEN as ETHERNET_HEADER_LEN
from .wire.checksum import checksum, sum_chunks

_FRAGMENT_OVERHEAD = 64  # bytes charged per stored fragment on top of its data
_NEXT_HOPS_KEPT = 4096
"""Destinations whose next hop `Ipv4.send` remembers; the memo is emptied when full."""
_U16 = struct.Struct("!H")
_TCP_CHECKSUM_FIELD = 16  # the checksum's offset in a TCP header (RFC 9293 3.1)


def _is_multicast(addr):
    return addr >> 28 == 0xE


class _Reassembly:
    __slots__ = ("deadline", "frags", "received", "total", "hdr", "head", "poisoned", "size")

    def __init__(self, deadline):
        self.deadline = deadline
        self.frags = []  # sorted (start, end, bytes)
        self.received = 0
        self.total = None  # payload length, known once the last fragment arrived
        self.hdr = None  # header of the first fragment (offset 0)
        self.head = None  # its bytes, for the reassembled datagram and ICMP quotes
        self.poisoned = False
        self.size = 0  # bytes charged against the memory cap


def _finish_tcp_checksum(packet):
    """Complete the TCP checksum of a `Packet.checksum_partial` segment (its header region is
    the TCP header): the field holds the pseudo-header sum, so the sum of the segment with
    it in place is the sum the checksum complements (RFC 9293 3.1)."""
    at = packet.head + _TCP_CHECKSUM_FIELD
    packet.buf[at:at + 2] = (~sum_chunks(packet.views()) & 0xFFFF).to_bytes(2, "big")
    packet.checksum_partial = False


class Ipv4:
    """IPv4 layer of one interface (see the module docstring)."""

    def __init__(self, l2, *, mtu=1500, ttl=64, ident=0, reassembly_timeout=30.0, reassembly_memory=4 << 20,
                 max_reassemblies=256, max_fragments=128):
        if not 68 <= mtu <= 65535:
            raise ValueError(f"IPv4 MTU {mtu} outside 68..65535 (RFC 791)")
        if not 0 < ttl < 256:
            raise ValueError(f"TTL {ttl} outside 1..255 (RFC 1122 section 3.2.1.7: never send 0)")
        self.l2 = l2
        self.mtu = mtu
        self.ttl = ttl
        self.address = 0
        self.netmask = 0
        self.gateway = 0
        self.handlers = {}
        self.icmp = None  # set by Icmp; used for protocol unreachable and reassembly time exceeded
        # ``hand_off(hdr, datagram)``: offered each reassembled datagram before delivery; True
        # means it took it (a stack on several queues hands it to the shard owning its ports)
        self.hand_off = None
        self.reassembly_timeout = reassembly_timeout
        self.reassembly_memory = reassembly_memory
        self.max_reassemblies = max_reassemblies
        self.max_fragments = max_fragments
        self.memory_used = 0
        self.drops = Counts()
        self.tx_drops = Counts()
        self.stats = Counts()
        self._ident = ident & 0xFFFF
        self._next_hops = {}  # dst -> route(dst), while the configuration stays (see `send`)
        self._reasm = {}  # key -> _Reassembly, in creation order (= deadline order)

    # -- configuration ---------------------------------------------------------------

    def configure(self, address, netmask, gateway, now):
        """Set (or with address 0, clear) the interface address; announces it through ARP."""
        if address and gateway and (gateway ^ address) & netmask:
            raise ValueError("the gateway is not on the interface's subnet")
        self.address, self.netmask, self.gateway = address, netmask, gateway
        self._next_hops.clear()
        self.l2.set_address(address, now)

    def is_broadcast(self, addr):
        """Limited broadcast, or the directed broadcast of our subnet (none on /31 and /32)."""
        if addr == BROADCAST_IP:
            return True
        mask = self.netmask
        return bool(self.address) and mask < 0xFFFFFFFE and addr == (self.address | (~mask & 0xFFFFFFFF))

    def route(self, dst):
        """The next hop for `dst`: itself when on-link, the gateway, `BROADCAST_IP`, or None."""
        if self.is_broadcast(dst):
            return BROADCAST_IP
        if not self.address or _is_multicast(dst):
            return None
        if not (dst ^ self.address) & self.netmask:
            return dst
        return self.gateway or None

    # -- output ----------------------------------------------------------------------

    def send(self, packet, dst, proto, now, ttl=None, df=False, tos=0, on_error=None):
        """Send `packet` (the transport header and data) to `dst`; takes ownership of it.

        Failures that are known at once (no route, too big with DF) and later ones (ARP
        gives up) are reported through `on_error(OSError)`. Returns True when the frame
        (or every fragment) is already queued for the driver.
        """
        if ttl is None:
            ttl = self.ttl
        elif not 0 < ttl < 256:
            raise ValueError(f"TTL {ttl} outside 1..255 (RFC 1122 section 3.2.1.7: never send 0)")
        next_hop = self._next_hops.get(dst)
        if next_hop is None:
            # `route` depends on the configuration only, so its answers are kept until
            # `configure` changes it (a server talks to few peers; the dict is bounded)
            next_hop = self.route(dst)
            if next_hop is None:
                return self._fail(packet, "no-route", on_error, errno.ENETUNREACH, "no route to host")
            if len(self._next_hops) >= _NEXT_HOPS_KEPT:
                self._next_hops.clear()
            self._next_hops[dst] = next_hop
        ident = self._ident
        size = len(packet)
        # a TSO super-segment becomes up to size / gso_size datagrams, numbered from `ident` on
        self._ident = (ident + (-(-size // packet.gso_size) if packet.gso_size else 1)) & 0xFFFF
        if size + wire_ipv4.HEADER_LEN <= self.mtu or (packet.gso_size and size + wire_ipv4.HEADER_LEN
                                                        <= wire_ipv4.MAX_DATAGRAM):
            # (a TSO super-segment goes whole: the device cuts it into gso_size segments)
            wire_ipv4.emit(packet.buf, packet.prepend(wire_ipv4.HEADER_LEN), self.address, dst, proto, size, ident,
                           ttl, df, False, 0, tos)  # (`wire_ipv4.push`, inline: `size` is known)
            return self.l2.output(packet, next_hop, now, on_error=on_error)
        if df:
            return self._fail(packet, "needs-fragmentation", on_error, errno.EMSGSIZE, "message too long (DF)")
        if size + wire_ipv4.HEADER_LEN > wire_ipv4.MAX_DATAGRAM:
            return self._fail(packet, "too-big", on_error, errno.EMSGSIZE, "message too long")
        if on_error is not None:
            on_error = _once(on_error)
        if packet.checksum_partial:
            _finish_tcp_checksum(packet)  # no device finishes a checksum cut across fragments
        chunk = (self.mtu - wire_ipv4.HEADER_LEN) & ~7  # RFC 791: offsets count 8-octet blocks
        all_queued = True
        for off in range(0, size, chunk):
            end = min(off + chunk, size)
            frag = packet.slice(off, end)
            wire_ipv4.push(frag, self.address, dst, proto, ident, ttl, False, end < size, off, tos)
            all_queued &= self.l2.output(frag, next_hop, now, on_error=on_error)
        self.stats["fragmented"] += 1
        packet.release()
        return all_queued

    def send_tcp(self, packet, seg, dst, now, ttl, df, tos, device_checksum):
        """`send` for the segment of an established connection, with all three headers in one
        pack (`wire.tcp_frame.emit`): `packet` holds `seg`'s payload, `seg` carries the
        timestamp option alone or no option, `ttl` is valid (`TcpConfig` checks it); a TSO
        super-segment (``packet.gso_size``) may be up to an IPv4 datagram long, and its pieces
        take the idents from the one it gets on (as in `send`). True once the frame is queued for
        the driver. False, with nothing done, when it must go the long way
        (`tcp.emit_header`, then `send`): `dst` not yet routed by `send`, its next hop's MAC
        not fresh (`Arp.fresh`: unknown, or due for a refresh), or the datagram over the MTU.
        """
        next_hop = self._next_hops.get(dst)
        headers = (tcp_frame.DATAGRAM_HEADER_LEN if seg.timestamp is not None
                   else tcp_frame.PLAIN_DATAGRAM_HEADER_LEN)
        size = len(seg.payload) + headers
        gso = packet.gso_size
        if next_hop is None or (size > self.mtu and not (gso and size <= wire_ipv4.MAX_DATAGRAM)):
            return False
        l2 = self.l2
        mac = l2.fresh(next_hop, now)
        if mac is None:
            return False
        ident = self._ident
        # (`send`'s count of a super-segment's datagrams, over the TCP header and text)
        self._ident = (ident + (-(-(size - wire_ipv4.HEADER_LEN) // gso) if gso else 1)) & 0xFFFF
        tcp_frame.emit(packet.buf, packet.prepend(ETHERNET_HEADER_LEN + headers), mac, l2.mac, self.address, dst,
                       ident, ttl, df, tos, seg, device_checksum)
        l2.tx.append(packet)
        return True

    def _fail(self, packet, reason, on_error, code, text):
        self.tx_drops[reason] += 1
        packet.release()
        if on_error is not None:
            on_error(OSError(code, text))
        return False

    # -- input -----------------------------------------------------------------------

    def receive(self, view, packet, now):
        """Handle an IPv4 datagram (the Ethernet payload). Never raises on bad input."""
        try:
            hdr, payload = wire_ipv4.parse(view)
        except WireError as e:
            self.drops[e.reason] += 1
            return
        if hdr.options and (wire_ipv4.OPT_LSRR in hdr.options or wire_ipv4.OPT_SSRR in hdr.options):
            # Source routing is refused, as Linux hosts do (accept_source_route = 0) and as
            # RFC 7126 4.3-4.4 advise: a reply along a route the sender chose is a way to
            # spoof addresses. (RFC 9293 MUST-51..53 predate that; docs/tcp.md says so.)
            self.drops["source-routed"] += 1
            return
        dst = hdr.dst
        if dst != self.address and not self.is_broadcast(dst):
            # Unconfigured, accept unicast to any address: a DHCP server may send the
            # offer to the address it offers (RFC 2131 section 4.1).
            if self.address or _is_multicast(dst):
                self.drops["not-for-us"] += 1
                return
        src = hdr.src
        if src == BROADCAST_IP or src >> 28 == 0xE or (src and src == self.address):  # (multicast: 224/4)
            self.drops["bad-source"] += 1  # RFC 1122 section 3.2.1.3
            return
        datagram = view if len(view) == hdr.total_len else view[: hdr.total_len]
        if not hdr.mf and not hdr.frag_offset:
            handler = self.handlers.get(hdr.proto)
            if handler is not None:  # `_deliver`, inline for the common datagram
                self.stats["delivered"] += 1
                handler(hdr, datagram, packet, now)
                return
            self._deliver(hdr, datagram, packet, now)
            return
        done = self._reassemble(hdr, datagram, payload, now)
        if done is None:
            return
        hdr, whole = done
        if self.hand_off is not None and self.hand_off(hdr, whole):
            self.stats["reassembled-handed-off"] += 1
            return
        packet = Packet.wrap(whole)
        datagram = packet.frags[0]
        self._deliver(hdr, datagram, packet, now)
        packet.release()

    def _deliver(self, hdr, datagram, packet, now):
        handler = self.handlers.get(hdr.proto)
        if handler is None:
            self.drops["unknown-protocol"] += 1
            if self.icmp is not None:
                self.icmp.protocol_unreachable(hdr, datagram, now)
            return
        self.stats["delivered"] += 1
        handler(hdr, datagram, packet, now)

    # -- reassembly ------------------------------------------------------------------

    def _reassemble(self, hdr, datagram, payload, now):
        """Add a fragment; returns (header, datagram bytes) when the datagram is complete."""
        size = len(payload)
        if not size:
            self.drops["empty-fragment"] += 1
            return None
        key = (hdr.src, hdr.dst, hdr.proto, hdr.ident)
        r = self._reasm.get(key)
        if r is None:
            if len(self._reasm) >= self.max_reassemblies:
                self._evict_oldest()
            r = self._reasm[key] = _Reassembly(now + self.reassembly_timeout)
        if r.poisoned:
            self.drops["fragment-of-discarded-datagram"] += 1
            return None
        start = hdr.frag_offset
        end = start + size
        if not hdr.mf:
            if (r.total is not None and r.total != end) or (r.frags and r.frags[-1][1] > end):
                return self._poison(key, r, "inconsistent-fragment-end")
            r.total = end
        elif r.total is not None and end > r.total:
            return self._poison(key, r, "fragment-past-end")
        for s, e, d in r.frags:
            if s < end and start < e:
                if s == start and e == end and d == payload:
                    self.drops["duplicate-fragment"] += 1
                    return None
                return self._poison(key, r, "overlapping-fragment")
        if len(r.frags) >= self.max_fragments:
            return self._poison(key, r, "too-many-fragments")
        charge = size + _FRAGMENT_OVERHEAD
        while self.memory_used + charge > self.reassembly_memory:
            if not self._evict_oldest(keep=key):
                self.drops["reassembly-memory"] += 1
                return None
        data = bytes(payload)
        insort(r.frags, (start, end, data))
        r.received += size
        r.size += charge
        self.memory_used += charge
        if start == 0:
            r.hdr = hdr
            r.head = bytes(datagram[: hdr.header_len])
        if r.total is None or r.received != r.total:
            return None
        # Complete: no overlaps were admitted, so `received == total` means no holes.
        del self._reasm[key]
        self.memory_used -= r.size
        self.stats["reassembled"] += 1
        hlen = r.hdr.header_len
        whole = bytearray(r.head)
        whole += bytes(r.total)
        for s, e, d in r.frags:
            whole[hlen + s : hlen + e] = d
        total_len = hlen + r.total
        _U16.pack_into(whole, 2, total_len)
        _U16.pack_into(whole, 6, 0)
        _U16.pack_into(whole, 10, 0)
        _U16.pack_into(whole, 10, checksum(memoryview(whole)[:hlen]))
        return r.hdr._replace(mf=False, frag_offset=0, total_len=total_len), memoryview(whole)

    def _poison(self, key, r, reason):
        """Discard a datagram's fragments and refuse the rest of them until its deadline (RFC 5722)."""
        self.drops[reason] += 1
        self.memory_used -= r.size
        r.size = 0
        r.frags = []
        r.poisoned = True
        return None

    def _evict_oldest(self, keep=None):
        """Drop the oldest reassembly other than `keep`; False if there is none."""
        for key in self._reasm:
            if key != keep:
                r = self._reasm.pop(key)
                self.memory_used -= r.size
                self.drops["reassembly-evicted"] += 1
                return True
        return False

    # -- timers ----------------------------------------------------------------------

    def poll(self, now):
        """Expire reassemblies older than the timeout."""
        reasm = self._reasm
        while reasm:
            key = next(iter(reasm))
            r = reasm[key]
            if now < r.deadline:
                break
            del reasm[key]
            self.memory_used -= r.size
            if r.poisoned:
                continue
            self.drops["reassembly-timeout"] += 1
            if r.hdr is not None and self.icmp is not None:
                first = r.frags[0][2]
                self.icmp.reassembly_timed_out(r.hdr, memoryview(r.head + first[:8]), now)

    def poll_at(self):
        """The earliest reassembly deadline, or None (deadlines are in creation order)."""
        for r in self._reasm.values():
            return r.deadline
        return None

    @property
    def reassemblies(self):
        """Number of datagrams being reassembled (for tests and metrics)."""
        return len(self._reasm)


def _once(callback):
    """Wrap `callback` so that only its first call goes through (one error per fragmented send)."""
    fired = []

    def once(exc):
        if not fired:
            fired.append(True)
            callback(exc)

    return once
