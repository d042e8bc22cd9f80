"""ICMP for a host (RFC 792, RFC 1122 section 3.2.2): echo, error generation, error delivery.

`Icmp` registers itself with an `Ipv4` layer. It answers echo requests (the reply's
payload is the request's memory, held until the driver sent it), generates
destination-unreachable and time-exceeded errors for the layers that need them (UDP's
closed ports, IPv4's unknown protocols and reassembly timeouts), and turns incoming
errors about datagrams we sent into an `IcmpError` handed to the transport that sent
them (`error_handlers[protocol](exc, quoted_header, quoted_transport_bytes, now)`).

Error generation obeys RFC 1122 section 3.2.2: never about an ICMP error, a broadcast
or multicast destination, a non-initial fragment, or a source that is not a unicast
host; and it is rate-limited by a token bucket (RFC 1812 section 4.3.2.8) driven by the
injected time, so a flood of datagrams to closed ports cannot turn into a flood of
replies.
"""
import errno
from collections import Counter

from .packet import Packet
from .wire import WireError
from .wire import icmp as wire_icmp
from .wire import ipv4 as wire_ipv4

_ERROR_TYPES = frozenset((wire_icmp.DEST_UNREACHABLE, 4, 5, wire_icmp.TIME_EXCEEDED, wire_icmp.PARAMETER_PROBLEM))

# Destination-unreachable codes to errno, as Linux reports them to sockets (icmp_err_convert).
_UNREACH_ERRNO = {
    0: errno.ENETUNREACH,
    1: errno.EHOSTUNREACH,
    2: errno.ENOPROTOOPT,
    3: errno.ECONNREFUSED,
    4: errno.EMSGSIZE,
    5: errno.EOPNOTSUPP,
    6: errno.ENETUNREACH,
    7: errno.EHOSTDOWN,
    9: errno.ENETUNREACH,
    10: errno.EHOSTUNREACH,
    11: errno.ENETUNREACH,
    12: errno.EHOSTUNREACH,
    13: errno.EHOSTUNREACH,
}


class IcmpError(OSError):
    """An ICMP error about a datagram we sent; `icmp_type`, `icmp_code`, `next_hop_mtu` (type 3 code 4)."""

    def __init__(self, icmp_type, icmp_code, rest):
        if icmp_type == wire_icmp.DEST_UNREACHABLE:
            code = _UNREACH_ERRNO.get(icmp_code, errno.EHOSTUNREACH)
        elif icmp_type == wire_icmp.PARAMETER_PROBLEM:
            code = errno.EPROTO
        else:
            code = errno.EHOSTUNREACH
        super().__init__(code, f"ICMP type {icmp_type} code {icmp_code}")
        self.icmp_type = icmp_type
        self.icmp_code = icmp_code
        self.next_hop_mtu = rest & 0xFFFF if icmp_code == wire_icmp.FRAGMENTATION_NEEDED else None


class Icmp:
    """ICMP layer bound to an `Ipv4` (see the module docstring)."""

    def __init__(self, ipv4, *, rate=100.0, burst=50, quote_limit=548):
        self.ipv4 = ipv4
        ipv4.handlers[wire_ipv4.PROTO_ICMP] = self.receive
        ipv4.icmp = self
        self.error_handlers = {}
        self.echo_reply_handler = None  # called as (header, IcmpMessage, now) by whoever pings
        self.rate = rate
        self.burst = burst
        self.quote_limit = quote_limit  # RFC 1812 4.3.2.3: the error fits in 576 bytes
        self.drops = Counter()
        self.stats = Counter()
        self._tokens = float(burst)
        self._refilled = None

    def receive(self, hdr, datagram, packet, now):
        """Handle an ICMP message (IPv4 handler signature). Never raises on bad input."""
        try:
            m = wire_icmp.parse(datagram[hdr.header_len :])
        except WireError as e:
            self.drops[e.reason] += 1
            return
        typ = m.type
        if typ == wire_icmp.ECHO_REQUEST:
            if hdr.dst != self.ipv4.address:
                self.drops["broadcast-echo"] += 1  # RFC 1122 3.2.2.6: MAY be silently discarded
                return
            packet.hold()
            reply = Packet(m.payload, release=packet.release)
            wire_icmp.push(reply, wire_icmp.ECHO_REPLY, 0, m.rest)
            self.stats["echo-replies"] += 1
            self.ipv4.send(reply, hdr.src, wire_ipv4.PROTO_ICMP, now, tos=hdr.tos)
        elif typ in _ERROR_TYPES:
            self._error_received(m, now)
        elif typ == wire_icmp.ECHO_REPLY and self.echo_reply_handler is not None:
            self.stats["echo-replies-received"] += 1
            self.echo_reply_handler(hdr, m, now)
        else:
            self.drops[f"unhandled-type-{typ}"] += 1

    def _error_received(self, m, now):
        try:
            inner, rest = wire_ipv4.parse_quoted(m.payload)
        except WireError as e:
            self.drops[e.reason] += 1
            return
        if inner.src != self.ipv4.address:
            self.drops["error-not-about-us"] += 1
            return
        handler = self.error_handlers.get(inner.proto)
        if handler is None:
            self.drops["error-unclaimed"] += 1
            return
        self.stats["errors-received"] += 1
        handler(IcmpError(m.type, m.code, m.rest), inner, rest, now)

    # -- error generation ------------------------------------------------------------

    def echo_request(self, dst, ident, seq, data, now):
        """Send an echo request (ping); replies go to `echo_reply_handler`."""
        p = Packet(data)
        wire_icmp.push(p, wire_icmp.ECHO_REQUEST, 0, (ident << 16) | seq)
        self.stats["echo-requests"] += 1
        return self.ipv4.send(p, dst, wire_ipv4.PROTO_ICMP, now)

    def port_unreachable(self, hdr, datagram, now):
        """Report a datagram to a closed UDP port (RFC 1122 section 4.1.3.1)."""
        self._send_error(wire_icmp.DEST_UNREACHABLE, wire_icmp.PORT_UNREACHABLE, hdr, datagram, now)

    def protocol_unreachable(self, hdr, datagram, now):
        """Report a datagram for a protocol nobody handles (RFC 1122 section 3.2.2.1)."""
        self._send_error(wire_icmp.DEST_UNREACHABLE, wire_icmp.PROTOCOL_UNREACHABLE, hdr, datagram, now)

    def reassembly_timed_out(self, hdr, quote, now):
        """Report a datagram whose fragments did not all arrive (RFC 792, time exceeded code 1)."""
        self._send_error(wire_icmp.TIME_EXCEEDED, wire_icmp.REASSEMBLY_TIME_EXCEEDED, hdr, quote, now)

    def _send_error(self, typ, code, hdr, datagram, now):
        ipv4 = self.ipv4
        src = hdr.src
        if hdr.frag_offset or ipv4.is_broadcast(hdr.dst) or hdr.dst >> 28 == 0xE:
            self.stats["error-suppressed"] += 1
            return
        if not src or ipv4.is_broadcast(src) or src >> 28 >= 0xE or src >> 24 == 127:
            self.stats["error-suppressed"] += 1
            return
        hlen = hdr.header_len
        if hdr.proto == wire_ipv4.PROTO_ICMP and (len(datagram) <= hlen or datagram[hlen] in _ERROR_TYPES):
            self.stats["error-suppressed"] += 1  # never an error about an error
            return
        if not self._take_token(now):
            self.stats["error-rate-limited"] += 1
            return
        p = Packet(bytes(datagram[: hlen + self.quote_limit]))
        wire_icmp.push(p, typ, code, 0)
        self.stats["errors-sent"] += 1
        ipv4.send(p, src, wire_ipv4.PROTO_ICMP, now)

    def _take_token(self, now):
        if self._refilled is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._refilled) * self.rate)
        self._refilled = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
