"""Which shard owns a received frame, when several shards share one interface.

Each shard drives one queue of the device, and the device steers every TCP or UDP
flow to the queue `shoal.drivers.steering.flow_queue` names (by its two ports), so
the shard of that queue holds the flow's state. A frame can still reach another
shard: the device sends frames without ports to queue 0 (ARP, ICMP, IP fragments),
and a device without deterministic steering (the TAP's automq) picks queues by its
own hash. `frame_owner` reads, without building any header object, which shard a
frame belongs to, so the stack can keep its own and hand the rest on:

* TCP and UDP in an unfragmented IPv4 datagram: the shard of its ports, except
  UDP between ports 67 and 68 (DHCP, RFC 2131 section 4.1): shard 0, which runs the
  one DHCP client of the interface, wherever the device steered the reply;
* an ICMP error (destination unreachable, time exceeded, parameter problem:
  RFC 792) quotes the IP header and first 8 octets of the datagram that caused it
  (RFC 1122 section 3.2.2 asks the transport layer to act on it, e.g. PMTU
  discovery): the shard of the quoted TCP or UDP ports;
* anything else (``None``): whichever shard received it handles it. A fragment is
  reassembled where its pieces land (they all go to queue 0), and the whole datagram
  then goes to the shard of its ports (`transport_owner`);
* a UDP datagram for an ephemeral port that the receiving shard has not bound goes to
  the shard that binds that port (`ephemeral_udp_owner`): a UDP client's replies; and an
  ICMP error quoting a UDP datagram we sent from an ephemeral port goes to that port's
  shard, whatever the flow's.
"""
from shoal.drivers.steering import flow_queue

from .udp import EPHEMERAL_PORTS

_ETH = 14
_ICMP_ERRORS = (3, 11, 12)
_DHCP_SERVER_PORT, _DHCP_CLIENT_PORT = 67, 68
_DHCP_PORTS_SUM = _DHCP_SERVER_PORT + _DHCP_CLIENT_PORT


def _ports_owner(frame, l4, shards):
    if len(frame) < l4 + 4:
        return None
    return flow_queue((frame[l4] << 8) | frame[l4 + 1], (frame[l4 + 2] << 8) | frame[l4 + 3], shards)


def _udp_owner(frame, l4, shards):
    """`_ports_owner`, except for DHCP (ports 67 and 68, either way): shard 0's client."""
    if len(frame) < l4 + 4:
        return None
    sport, dport = (frame[l4] << 8) | frame[l4 + 1], (frame[l4 + 2] << 8) | frame[l4 + 3]
    if sport + dport == _DHCP_PORTS_SUM and (sport == _DHCP_SERVER_PORT or sport == _DHCP_CLIENT_PORT):
        return 0
    return flow_queue(sport, dport, shards)


def frame_owner(frame, shards):
    """The shard (0 .. shards-1) owning an Ethernet `frame`'s flow, or None if it has none."""
    if len(frame) < _ETH + 20 or frame[12] != 0x08 or frame[13] != 0x00:
        return None
    if frame[20] & 0x3F or frame[21]:  # MF or a fragment offset: a piece without ports
        return None
    return transport_owner(frame, _ETH + (frame[14] & 0x0F) * 4, frame[23], shards)


def transport_owner(buf, l4, protocol, shards):
    """The shard owning an unfragmented IPv4 datagram of `protocol` whose transport header
    starts at ``buf[l4]`` (see the module docstring), or None if it has none. It serves
    `frame_owner` and a datagram reassembled from fragments, whose pieces had no ports."""
    if protocol == 6:
        return _ports_owner(buf, l4, shards)
    if protocol == 17:
        return _udp_owner(buf, l4, shards)
    if protocol == 1 and len(buf) > l4 + 8 + 20 and buf[l4] in _ICMP_ERRORS:
        inner = l4 + 8
        quoted = buf[inner + 9]
        if quoted in (6, 17) and not (buf[inner + 6] & 0x1F or buf[inner + 7]):
            ql4 = inner + (buf[inner] & 0x0F) * 4
            if quoted == 17 and len(buf) >= ql4 + 2:
                sport = (buf[ql4] << 8) | buf[ql4 + 1]  # our port: the quote is of what we sent
                if EPHEMERAL_PORTS[0] <= sport <= EPHEMERAL_PORTS[1]:
                    return ephemeral_udp_owner(sport, shards)  # a UDP client's: its shard
            return (_ports_owner if quoted == 6 else _udp_owner)(buf, ql4, shards)
    return None


def ephemeral_udp_owner(port, shards):
    """The shard that binds ephemeral UDP `port` (``port % shards``).

    The device steers a UDP client's replies by the flow (both ports), and a client's
    port cannot be chosen for every peer it may send to, so replies often reach another
    shard; that shard, holding no endpoint on the port, hands the datagram to this one."""
    return port % shards


def arp_news(frame):
    """True for an ARP reply or a gratuitous ARP: an address every shard's cache should learn.

    Shard 0 receives all ARP and answers requests itself; the others only need the
    mappings, which replies (to anybody's request) and announcements carry."""
    if len(frame) < _ETH + 28 or frame[12] != 0x08 or frame[13] != 0x06:
        return False
    op = (frame[20] << 8) | frame[21]
    return op == 2 or (op == 1 and frame[28:32] == frame[38:42])
