"""UDP (RFC 768, RFC 1122 section 4.1): port demultiplexing, checksums, errors to sockets.

`Udp` registers with an `Ipv4` (and an `Icmp`, to learn about errors). Sockets are
*endpoints* bound to a local port: any object with

* ``datagram_received(data, addr, packet)``: `data` is a memoryview of the payload and
  `addr` is ``(src_ip_int, src_port)``; to keep `data` past the call, ``packet.hold()``
  and later ``packet.release()`` (the memory is the driver's receive buffer);
* ``error_received(exc, addr)``: an ICMP error (an `IcmpError`, e.g. ECONNREFUSED for
  port unreachable) about a datagram this port sent to `addr`, as Linux reports it.

A datagram to a port nobody bound is answered with ICMP port unreachable (RFC 1122
section 4.1.3.1) unless it was a broadcast. Bad datagrams are counted in `drops`.
"""
import errno
import struct

from .counts import Counts
from .packet import Packet
from .wire import WireError
from .wire import ipv4 as wire_ipv4
from .wire import udp as wire_udp

MAX_PAYLOAD = 65535 - wire_ipv4.HEADER_LEN - wire_udp.HEADER_LEN
_PORTS = struct.Struct("!HH")

EPHEMERAL_PORTS = (49152, 65535)
"""The dynamic port range (RFC 6335 section 6) that `bind(0, ...)` draws from by default."""


class Udp:
    """UDP layer bound to an `Ipv4` (see the module docstring).

    `ephemeral` is the (first, last) port range for `bind(0, ...)`; the stack passes a
    randomly chosen `first_ephemeral` so that port choice is not predictable (RFC 6056).
    """

    def __init__(self, ipv4, icmp=None, *, ephemeral=EPHEMERAL_PORTS, first_ephemeral=None):
        self.ipv4 = ipv4
        self.icmp = icmp
        ipv4.handlers[wire_ipv4.PROTO_UDP] = self.receive
        if icmp is not None:
            icmp.error_handlers[wire_ipv4.PROTO_UDP] = self.icmp_error
        self.endpoints = {}
        # ``hand_off(hdr, datagram, port)``: offered each datagram for a port no endpoint here
        # holds; True means it took it (a stack on several queues: the port's shard has it)
        self.hand_off = None
        self.ephemeral = ephemeral
        self._next_port = ephemeral[0] if first_ephemeral is None else first_ephemeral
        self.drops = Counts()
        self.stats = Counts()

    def bind(self, port, endpoint, allowed=None):
        """Bind `endpoint` to `port` (0: an ephemeral port, one `allowed(port)` accepts when
        given); returns the port. EADDRINUSE if taken."""
        if port:
            if port in self.endpoints:
                raise OSError(errno.EADDRINUSE, f"UDP port {port} is in use")
            self.endpoints[port] = endpoint
            return port
        lo, hi = self.ephemeral
        span = hi - lo + 1
        for i in range(span):
            candidate = lo + (self._next_port - lo + i) % span
            if candidate not in self.endpoints and (allowed is None or allowed(candidate)):
                self._next_port = lo + (candidate - lo + 1) % span
                self.endpoints[candidate] = endpoint
                return candidate
        raise OSError(errno.EADDRINUSE, "no free ephemeral UDP port")

    def unbind(self, port):
        self.endpoints.pop(port, None)

    def send(self, src_port, dst, dst_port, data, now, on_error=None):
        """Send `data` (any buffer, not copied: do not modify it until sent) from our address.

        Returns what `Ipv4.send` returns; later failures reach `on_error`.
        """
        if len(data) > MAX_PAYLOAD:
            raise OSError(errno.EMSGSIZE, f"UDP payload of {len(data)} bytes")
        p = Packet(data)
        src = self.ipv4.address
        wire_udp.push(p, src, dst, src_port, dst_port)
        self.stats["sent"] += 1
        self.stats["bytes-sent"] += len(data)
        return self.ipv4.send(p, dst, wire_ipv4.PROTO_UDP, now, on_error=on_error)

    def receive(self, hdr, datagram, packet, now):
        """Handle a UDP datagram (IPv4 handler signature). Never raises on bad input."""
        try:
            # the checksum is verified unless the device vouched for it (`VerifiedFrame`)
            u, data = wire_udp.parse(datagram[hdr.header_len :], hdr.src, hdr.dst,
                                     verify_checksum=not packet.checksum_verified)
        except WireError as e:
            self.drops[e.reason] += 1
            return
        endpoint = self.endpoints.get(u.dst_port)
        if endpoint is None:
            if self.hand_off is not None and self.hand_off(hdr, datagram, u.dst_port):
                self.stats["handed-off"] += 1
                return
            self.drops["no-listener"] += 1
            if self.icmp is not None:
                self.icmp.port_unreachable(hdr, datagram, now)
            return
        self.stats["received"] += 1
        self.stats["bytes-received"] += len(data)
        endpoint.datagram_received(data, (hdr.src, u.src_port), packet)

    def icmp_error(self, exc, inner, rest, now):
        """An ICMP error quoting a datagram we sent: tell the endpoint bound to its source port."""
        if len(rest) < 4:
            self.drops["short-icmp-quote"] += 1
            return
        sport, dport = _PORTS.unpack_from(rest)
        endpoint = self.endpoints.get(sport)
        if endpoint is None:
            self.drops["icmp-error-no-socket"] += 1
            return
        self.stats["icmp-errors"] += 1
        endpoint.error_received(exc, (inner.dst, dport))
