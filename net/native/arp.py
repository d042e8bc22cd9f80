"""ARP (RFC 826) for one Ethernet interface, and the link-layer output of IPv4.

Theory of operation
-------------------
`Arp` is sans-I/O: it is driven by `receive(payload, now)`, `output(packet, next_hop,
now)` and `poll(now)`, and it never reads a clock. Frames to transmit are appended to
`tx` (a deque of `Packet`s holding complete Ethernet frames) for the driver poller to
pull; `poll_at()` says when `poll` must run next.

* The cache maps an IPv4 address to a MAC and an expiry time (`reachable_time`
  seconds after the entry was last confirmed by an ARP packet from that host). An
  entry in its last `refresh_window` seconds is still used, but the first use there
  sends a unicast request to the cached MAC (RFC 1122 section 2.3.2.1 "unicast poll")
  so that an active peer's entry is renewed without a gap.
* An IPv4 packet for an unresolved next hop is queued on a *pending* record (at most
  `queue_limit` per address: the oldest is dropped, as in Linux) and a broadcast
  request goes out; it is repeated every `retry_interval` up to `max_requests` times.
  When the last one goes unanswered, every queued packet is released and its sender's
  `on_error` is called with `EHOSTUNREACH` (RFC 1122 section 2.3.2.2 allows dropping).
* On `set_address`, an ARP announcement (a request with sender = target = our
  address, RFC 5227 section 3) is sent `announce_count` times, `announce_interval`
  apart, so that peers replace stale entries for the address ("gratuitous ARP").
* `receive` follows RFC 826's packet-reception algorithm: refresh the sender's entry
  if we have one ("merge"), add it if the packet is for us, and answer requests for our
  address. Bad input is counted in `drops` by reason; nothing raises.
"""
import errno
from collections import Counter, deque

from .packet import Packet
from .wire import WireError
from .wire import arp as wire_arp
from .wire import ethernet

BROADCAST_IP = 0xFFFFFFFF
_ZERO_MAC = bytes(6)
_ETH_HEADER = ethernet.HEADER
_HEADROOM = ethernet.HEADER_LEN + ethernet.TAG_LEN


class Arp:
    """ARP resolver and cache for one interface (see the module docstring)."""

    def __init__(self, mac, *, reachable_time=300.0, refresh_window=5.0, retry_interval=1.0, max_requests=3,
                 queue_limit=8, max_pending=256, max_entries=4096, announce_count=2, announce_interval=2.0):
        self.mac = bytes(mac)
        self.ip = 0
        self.reachable_time = reachable_time
        self.refresh_window = refresh_window
        self.retry_interval = retry_interval
        self.max_requests = max_requests
        self.queue_limit = queue_limit
        self.max_pending = max_pending
        self.max_entries = max_entries
        self.announce_count = announce_count
        self.announce_interval = announce_interval
        self.cache = {}  # ip -> [mac, expires, refresh_sent]
        self.pending = {}  # ip -> [deadline, requests_sent, deque of (packet, ethertype, on_error)]
        self.tx = deque()
        self.drops = Counter()
        self.stats = Counter()
        self._announces_left = 0
        self._announce_at = None

    # -- configuration ---------------------------------------------------------------

    def set_address(self, ip, now):
        """Take `ip` as our address (0: none) and announce it (RFC 5227 section 3)."""
        self.ip = ip
        self._announces_left = self.announce_count if ip else 0
        self._announce_at = now if self._announces_left else None
        self.poll(now)

    # -- cache -----------------------------------------------------------------------

    def fresh(self, ip, now):
        """The MAC for `ip` while its entry is confirmed and outside its refresh window,
        else None: what `lookup` would return, without its refresh work (hot path)."""
        entry = self.cache.get(ip)
        if entry is not None and not entry[2] and now < entry[1] - self.refresh_window:
            return entry[0]
        return None

    def lookup(self, ip, now):
        """The MAC for `ip`, or None when unknown or expired; may queue a refresh request."""
        entry = self.cache.get(ip)
        if entry is None:
            return None
        mac, expires, refresh_sent = entry
        if now >= expires:
            del self.cache[ip]
            return None
        if not refresh_sent and now >= expires - self.refresh_window:
            entry[2] = True
            self._send(wire_arp.OP_REQUEST, mac, ip, _ZERO_MAC)
            self.stats["refresh-requests"] += 1
        return mac

    def learn(self, ip, mac, now):
        """Record `ip` -> `mac` as confirmed now (also how other shards' entries are replicated)."""
        entry = self.cache.get(ip)
        if entry is None and len(self.cache) >= self.max_entries:
            victim = min(self.cache, key=lambda k: self.cache[k][1])
            del self.cache[victim]
            self.stats["evictions"] += 1
        self.cache[ip] = [mac, now + self.reachable_time, False]
        pend = self.pending.pop(ip, None)
        if pend is not None:
            for packet, ethertype, _on_error in pend[2]:
                ethernet.push(packet, mac, self.mac, ethertype)
                self.tx.append(packet)

    # -- output ----------------------------------------------------------------------

    def output(self, packet, next_hop, now, ethertype=ethernet.ETHERTYPE_IPV4, on_error=None):
        """Send `packet` (an L3 packet) to `next_hop` (an IPv4 int, or `BROADCAST_IP`).

        Takes ownership of `packet`. Returns True if the frame is on `tx` now, False if
        it waits for resolution (or was dropped: then `on_error` has been called).
        """
        if next_hop == BROADCAST_IP:
            ethernet.push(packet, ethernet.BROADCAST, self.mac, ethertype)
            self.tx.append(packet)
            return True
        mac = self.fresh(next_hop, now)
        if mac is None:
            mac = self.lookup(next_hop, now)
        if mac is not None:
            _ETH_HEADER.pack_into(packet.buf, packet.prepend(ethernet.HEADER_LEN), mac, self.mac, ethertype)
            self.tx.append(packet)  # (`ethernet.push` without a tag, inline)
            return True
        pend = self.pending.get(next_hop)
        if pend is None:
            if len(self.pending) >= self.max_pending:
                self.drops["pending-table-full"] += 1
                packet.release()
                if on_error is not None:
                    on_error(OSError(errno.ENOBUFS, "too many unresolved ARP addresses"))
                return False
            pend = self.pending[next_hop] = [now + self.retry_interval, 1, deque()]
            self._send(wire_arp.OP_REQUEST, ethernet.BROADCAST, next_hop, _ZERO_MAC)
        queue = pend[2]
        if len(queue) >= self.queue_limit:
            old = queue.popleft()
            old[0].release()
            self.drops["resolution-queue-full"] += 1
        queue.append((packet, ethertype, on_error))
        return False

    # -- input -----------------------------------------------------------------------

    def receive(self, payload, now):
        """Handle the payload of an ARP frame (RFC 826 "Packet Reception"). Never raises on bad input."""
        try:
            a = wire_arp.parse(payload)
        except WireError as e:
            self.drops[e.reason] += 1
            return
        sha, spa = a.sha, a.spa
        if sha[0] & 1:
            self.drops["multicast-sender"] += 1
            return
        if sha == self.mac:
            self.drops["own-frame"] += 1
            return
        if self.ip and spa == self.ip:
            # Someone else claims our address (RFC 5227 section 2.4): count it, keep ours.
            self.drops["address-conflict"] += 1
            return
        merged = False
        if spa and spa in self.cache:
            self.learn(spa, sha, now)
            merged = True
        if not self.ip or a.tpa != self.ip:
            if spa in self.pending and not merged:
                self.learn(spa, sha, now)  # a gratuitous ARP from the host we wait for
            else:
                self.stats["not-for-us"] += 1
            return
        if spa and not merged:
            self.learn(spa, sha, now)
        if a.op == wire_arp.OP_REQUEST:
            self._send(wire_arp.OP_REPLY, sha, spa, sha)
            self.stats["replies-sent"] += 1

    # -- timers ----------------------------------------------------------------------

    def poll(self, now):
        """Run due timers: announcements, request retries, give-ups."""
        if self._announce_at is not None and now >= self._announce_at:
            self._send(wire_arp.OP_REQUEST, ethernet.BROADCAST, self.ip, _ZERO_MAC)
            self._announces_left -= 1
            self._announce_at = now + self.announce_interval if self._announces_left else None
        expired = None
        for ip, pend in self.pending.items():
            if now < pend[0]:
                continue
            if pend[1] < self.max_requests:
                pend[0] = now + self.retry_interval
                pend[1] += 1
                self._send(wire_arp.OP_REQUEST, ethernet.BROADCAST, ip, _ZERO_MAC)
            else:
                expired = expired or []
                expired.append(ip)
        for ip in expired or ():
            self.stats["resolution-failures"] += 1
            for packet, _ethertype, on_error in self.pending.pop(ip)[2]:
                packet.release()
                self.drops["unresolved"] += 1
                if on_error is not None:
                    on_error(OSError(errno.EHOSTUNREACH, "no ARP reply from the next hop"))

    def poll_at(self):
        """The earliest time `poll` has work to do, or None."""
        t = self._announce_at
        for pend in self.pending.values():
            if t is None or pend[0] < t:
                t = pend[0]
        return t

    def _send(self, op, dst_mac, target_ip, target_mac):
        """Queue an ARP packet from us about `target_ip` to `dst_mac`."""
        p = Packet(None, _HEADROOM + wire_arp.LEN)
        wire_arp.emit(p.buf, p.prepend(wire_arp.LEN), op, self.mac, self.ip, target_mac, target_ip)
        ethernet.push(p, dst_mac, self.mac, ethernet.ETHERTYPE_ARP)
        self.tx.append(p)
        self.stats["sent"] += 1
