"""DHCP client (RFC 2131 section 4.4) with the address check of RFC 5227, sans-I/O.

Theory of operation
-------------------
The client is a state machine over RFC 2131's states (figure 5): INIT -> SELECTING
(DHCPDISCOVER sent) -> REQUESTING (DHCPREQUEST for the first offer) -> PROBING
(DHCPACK received; the address is checked, below) -> BOUND -> RENEWING at T1 (unicast
REQUEST to the server) -> REBINDING at T2 (broadcast REQUEST to any server) -> lease
expiry, back to INIT. A DHCPNAK in REQUESTING, RENEWING or REBINDING sends it back to
INIT as well (sections 3.1 step 5 and 4.4.5).

Address check (RFC 2131 sections 2.2 and 3.1 step 5, with RFC 5227 section 2.1.1's
probe): after the ACK the client does not use the address yet. It waits a random
0..PROBE_WAIT, sends PROBE_NUM ARP probes (requests with sender IP 0 and target the
offered address) PROBE_MIN..PROBE_MAX apart, then waits ANNOUNCE_WAIT; only then is the
lease "bound" (and the stack's ARP announces it). Any ARP packet whose sender IP is
the address, or another host's probe for it, is a conflict: the client broadcasts a
DHCPDECLINE (section 4.4.4) and goes to INIT, restarting after `decline_backoff`
(section 3.1 step 5: at least ten seconds), or after `rate_limit_interval` once
`max_conflicts` conflicts came in a row (RFC 5227 MAX_CONFLICTS, RATE_LIMIT_INTERVAL).
The stack passes every ARP payload it receives to `arp_received` while `probing`, and
broadcasts the ARP payloads the client appends to `arp_tx`. Lease renewals are not
probed: the address is already ours.

On a clean stop the stack calls `release(now)`: a held lease is given back with a
DHCPRELEASE unicast to its server (section 4.4.6) and reported as "released".

It does no I/O and reads no clock or randomness: the stack calls `start(now)`,
`receive(dhcp_payload, now)` for every datagram to UDP port 68 and `poll(now)` at
`poll_at()`. Messages to send are appended to `tx` as ``(dst_ip, payload_bytes)``
for UDP from port 68 to port 67 (`dst_ip` is 255.255.255.255 or the server); lease
changes are appended to `events` as `LeaseEvent`s: "bound" and "renewed" carry the
`Lease` to configure (address, netmask, gateway), "lost" and "released" mean the
address must be removed. `rng` (a `random.Random`) supplies transaction ids,
retransmission jitter and the probe delays.

Timing (section 4.1 and 4.4.5): DISCOVER and REQUEST are retransmitted after 4 s,
8 s, 16 s ... up to 64 s, each randomized by +-1 s; after `request_retries`
unanswered REQUESTs the client starts over. T1 and T2 default to 0.5 and 0.875 of the
lease (or the server's options 58/59) and the lease runs from the moment the REQUEST
was sent (section 4.4.1). In RENEWING and REBINDING a REQUEST is retransmitted after
half the time remaining until T2 (respectively the lease end), but not sooner than
60 s.
"""
import struct
from collections import Counter, deque
from typing import NamedTuple

from .wire import WireError
from .wire import arp as wire_arp
from .wire import dhcp as wire

BROADCAST_IP = 0xFFFFFFFF
INFINITE = 0xFFFFFFFF  # lease time meaning "forever" (RFC 2131 section 3.3)

INIT = "INIT"
SELECTING = "SELECTING"
REQUESTING = "REQUESTING"
PROBING = "PROBING"
BOUND = "BOUND"
RENEWING = "RENEWING"
REBINDING = "REBINDING"

_PARAMETERS = bytes((wire.OPT_SUBNET_MASK, wire.OPT_ROUTER, wire.OPT_DNS, wire.OPT_LEASE_TIME,
                     wire.OPT_RENEWAL_TIME, wire.OPT_REBINDING_TIME))


class Lease(NamedTuple):
    address: int
    netmask: int
    gateway: int  # 0 when the server gave no usable router
    server: int
    lease_time: float  # seconds, or inf
    t1: float  # seconds after `obtained`
    t2: float
    obtained: float  # when the REQUEST that got this lease was sent
    dns: tuple = ()

    @property
    def expires(self):
        return self.obtained + self.lease_time


class LeaseEvent(NamedTuple):
    kind: str  # "bound", "renewed", "lost" or "released"
    lease: Lease


def _natural_mask(addr):
    """The classful mask, used only when a server omits option 1 (RFC 2132 section 3.3)."""
    top = addr >> 24
    return 0xFF000000 if top < 128 else 0xFFFF0000 if top < 192 else 0xFFFFFF00


class DhcpClient:
    """A DHCP client for one interface (see the module docstring)."""

    def __init__(self, mac, rng, *, hostname=None, initial_timeout=4.0, max_timeout=64.0, request_retries=4,
                 min_renew_interval=60.0, probe_wait=1.0, probe_num=3, probe_min=1.0, probe_max=2.0,
                 announce_wait=2.0, decline_backoff=10.0, max_conflicts=10, rate_limit_interval=60.0):
        self.mac = bytes(mac)
        self.rng = rng
        self.hostname = hostname
        self.initial_timeout = initial_timeout
        self.max_timeout = max_timeout
        self.request_retries = request_retries
        self.min_renew_interval = min_renew_interval
        # RFC 5227 section 1.1 constants (probe_num 0: no check)
        self.probe_wait = probe_wait
        self.probe_num = probe_num
        self.probe_min = probe_min
        self.probe_max = probe_max
        self.announce_wait = announce_wait
        self.decline_backoff = decline_backoff
        self.max_conflicts = max_conflicts
        self.rate_limit_interval = rate_limit_interval
        self.state = INIT
        self.lease = None
        self.tx = deque()
        self.arp_tx = deque()  # ARP payloads to broadcast (probes)
        self.events = deque()
        self.drops = Counter()
        self.stats = Counter()
        self._xid = 0
        self._deadline = None
        self._tries = 0
        self._started = 0.0
        self._request_sent = 0.0
        self._offer = None  # (address, server) being requested
        self._candidate = None  # the ACKed lease being probed
        self._probes_sent = 0
        self._conflicts = 0  # in a row

    # -- driving -----------------------------------------------------------------

    def start(self, now):
        """Begin (or restart) acquiring a lease: INIT -> SELECTING."""
        self.state = SELECTING
        self._xid = self.rng.getrandbits(32)
        self._started = now
        self._tries = 0
        self._offer = None
        self._candidate = None
        self._send_discover(now)

    @property
    def probing(self):
        """True while the offered address is being checked: ARP input is wanted."""
        return self.state == PROBING

    def release(self, now):
        """Give the lease back (RFC 2131 section 4.4.6) and stop; True if a DHCPRELEASE was queued.

        The client stays in INIT with no timer until `start` is called again.
        """
        lease = self.lease
        self.state = INIT
        self._deadline = None
        self._candidate = None
        if lease is None:
            return False
        self.lease = None
        # Table 5: a new xid, ciaddr set, server identifier; no requested address,
        # parameter list or maximum message size.
        opts = [(wire.OPT_MESSAGE_TYPE, bytes((wire.RELEASE,))), (wire.OPT_CLIENT_ID, b"\x01" + self.mac),
                (wire.OPT_SERVER_ID, struct.pack("!I", lease.server))]
        msg = wire.build(wire.OP_REQUEST, self.rng.getrandbits(32), self.mac, opts, ciaddr=lease.address)
        self.tx.append((lease.server, msg))
        self.stats["releases"] += 1
        self.events.append(LeaseEvent("released", lease))
        return True

    def arp_received(self, payload, now):
        """Check an ARP packet seen while probing for a claim on the offered address.

        RFC 5227 section 2.1.1: a packet (request or reply) whose sender IP is the
        address, or another host's probe (sender IP 0) whose target is the address,
        means the address is in use. Bad packets are the ARP layer's to count.
        """
        if self.state != PROBING:
            return
        try:
            a = wire_arp.parse(payload)
        except WireError:
            return
        address = self._candidate.address
        if a.sha == self.mac:
            return  # our own probe
        if a.spa == address or (a.spa == 0 and a.op == wire_arp.OP_REQUEST and a.tpa == address):
            self._decline(a.sha, now)

    def poll_at(self):
        return self._deadline

    def poll(self, now):
        """Retransmit, move to RENEWING/REBINDING, or expire the lease when due."""
        if self._deadline is None or now < self._deadline:
            return
        state = self.state
        if state == INIT:
            self.start(now)  # the back-off after a DHCPDECLINE is over
        elif state == SELECTING:
            self._tries += 1
            self._send_discover(now)
        elif state == PROBING:
            self._probe(now)
        elif state == REQUESTING:
            self._tries += 1
            if self._tries >= self.request_retries:
                self.stats["request-timeouts"] += 1
                self.start(now)  # section 4.4.1: no ACK or NAK after retransmissions -> INIT
            else:
                self._send_request(now, BROADCAST_IP)
        elif state == BOUND:
            self.state = RENEWING
            self._xid = self.rng.getrandbits(32)
            self._started = now
            self._send_request(now, self.lease.server)
        elif state == RENEWING:
            if now >= self.lease.obtained + self.lease.t2:
                self.state = REBINDING
                self._send_request(now, BROADCAST_IP)
            else:
                self._send_request(now, self.lease.server)
        elif state == REBINDING:
            if now >= self.lease.expires:
                self._lose(now)
            else:
                self._send_request(now, BROADCAST_IP)

    def receive(self, data, now):
        """Handle a datagram that arrived on UDP port 68. Never raises on bad input."""
        try:
            m = wire.parse(data)
        except WireError as e:
            self.drops[e.reason] += 1
            return
        if m.op != wire.OP_REPLY:
            self.drops["not-a-reply"] += 1
            return
        if m.xid != self._xid or self.state in (INIT, BOUND):
            self.drops["unexpected-reply"] += 1
            return
        if m.chaddr != self.mac:
            self.drops["not-our-chaddr"] += 1
            return
        kind = m.message_type
        server = m.option_u32(wire.OPT_SERVER_ID)
        state = self.state
        if state == SELECTING and kind == wire.OFFER:
            if not m.yiaddr or server is None:
                self.drops["unusable-offer"] += 1
                return
            self._offer = (m.yiaddr, server)
            self.state = REQUESTING
            self._tries = 0
            self.stats["offers"] += 1
            self._send_request(now, BROADCAST_IP)
        elif state in (REQUESTING, RENEWING, REBINDING) and kind == wire.ACK:
            if state == REQUESTING and server != self._offer[1]:
                self.drops["ack-from-other-server"] += 1
                return
            self._bind(m, server, now)
        elif state in (REQUESTING, RENEWING, REBINDING) and kind == wire.NAK:
            if state == REQUESTING and server is not None and server != self._offer[1]:
                self.drops["nak-from-other-server"] += 1
                return
            self.stats["naks"] += 1
            if self.lease is not None:
                self._lose(now)
            else:
                self.start(now)
        else:
            self.drops[f"unexpected-type-{kind}-in-{state}"] += 1

    # -- internals -----------------------------------------------------------------

    def _bind(self, m, server, now):
        raw = m.option_u32(wire.OPT_LEASE_TIME)
        if raw is None or not m.yiaddr:
            self.drops["unusable-ack"] += 1
            return
        lease_time = float("inf") if raw == INFINITE else float(raw)
        t1 = m.option_u32(wire.OPT_RENEWAL_TIME)
        t2 = m.option_u32(wire.OPT_REBINDING_TIME)
        if t1 is None or t2 is None or not 0 < t1 < t2 < lease_time:
            t1, t2 = lease_time * 0.5, lease_time * 0.875  # section 4.4.5 defaults
        mask = m.option_u32(wire.OPT_SUBNET_MASK)
        if mask is None:
            mask = _natural_mask(m.yiaddr)
        gateway = m.option_u32(wire.OPT_ROUTER) or 0
        if (gateway ^ m.yiaddr) & mask:
            gateway = 0  # a router off the subnet is unusable
            self.stats["off-subnet-router"] += 1
        dns_raw = m.options.get(wire.OPT_DNS, b"")
        dns = struct.unpack(f"!{len(dns_raw) // 4}I", dns_raw[: len(dns_raw) // 4 * 4])
        if server is None and self.lease is not None:
            server = self.lease.server
        lease = Lease(m.yiaddr, mask, gateway, server or 0, lease_time, t1, t2, self._request_sent, dns)
        self.stats["acks"] += 1
        if self.state == REQUESTING and self.probe_num > 0:
            # Section 3.1 step 5: check the address before using it (RFC 5227 section 2.1.1).
            self._candidate = lease
            self._probes_sent = 0
            self.state = PROBING
            self._deadline = now + self.rng.uniform(0.0, self.probe_wait)
            return
        self._commit(lease)

    def _commit(self, lease):
        renewed = self.lease is not None and self.lease.address == lease.address
        self.lease = lease
        self._candidate = None
        self._conflicts = 0
        self.state = BOUND
        self._deadline = None if lease.t1 == float("inf") else lease.obtained + lease.t1
        self.events.append(LeaseEvent("renewed" if renewed else "bound", lease))

    def _probe(self, now):
        """Send the next probe, or, ANNOUNCE_WAIT after the last one, take the address."""
        if self._probes_sent == self.probe_num:
            self.stats["probes-passed"] += 1
            self._commit(self._candidate)
            return
        self.arp_tx.append(wire_arp.build(wire_arp.OP_REQUEST, self.mac, 0, bytes(6), self._candidate.address))
        self._probes_sent += 1
        self.stats["probes"] += 1
        if self._probes_sent < self.probe_num:
            self._deadline = now + self.rng.uniform(self.probe_min, self.probe_max)
        else:
            self._deadline = now + self.announce_wait

    def _decline(self, holder_mac, now):
        """Section 4.4.4: tell the server the address is in use, then wait before INIT -> SELECTING."""
        lease, self._candidate = self._candidate, None
        # Table 5: the ACK's xid, ciaddr 0, requested address and server identifier,
        # a message (option 56); no parameter list or maximum message size.
        opts = [(wire.OPT_MESSAGE_TYPE, bytes((wire.DECLINE,))), (wire.OPT_CLIENT_ID, b"\x01" + self.mac),
                (wire.OPT_REQUESTED_IP, struct.pack("!I", lease.address)),
                (wire.OPT_SERVER_ID, struct.pack("!I", lease.server)),
                (wire.OPT_MESSAGE, b"address in use by " + holder_mac.hex(":").encode())]
        self.tx.append((BROADCAST_IP, wire.build(wire.OP_REQUEST, self._xid, self.mac, opts)))
        self.stats["declines"] += 1
        self._conflicts += 1
        self.state = INIT
        wait = self.rate_limit_interval if self._conflicts >= self.max_conflicts else self.decline_backoff
        self._deadline = now + wait

    def _lose(self, now):
        lease, self.lease = self.lease, None
        self.stats["leases-lost"] += 1
        self.events.append(LeaseEvent("lost", lease))
        self.start(now)

    def _backoff(self):
        """Section 4.1: 4 s doubling to 64 s, randomized by +-1 s."""
        delay = min(self.initial_timeout * (2 ** self._tries), self.max_timeout)
        return max(delay + self.rng.uniform(-1.0, 1.0), 0.5)

    def _options(self, kind):
        opts = [(wire.OPT_MESSAGE_TYPE, bytes((kind,))), (wire.OPT_CLIENT_ID, b"\x01" + self.mac),
                (wire.OPT_PARAMETER_LIST, _PARAMETERS), (wire.OPT_MAX_MESSAGE_SIZE, struct.pack("!H", 1500))]
        if self.hostname:
            opts.append((wire.OPT_HOSTNAME, self.hostname.encode()))
        return opts

    def _secs(self, now):
        return min(int(now - self._started), 0xFFFF)

    def _send_discover(self, now):
        msg = wire.build(wire.OP_REQUEST, self._xid, self.mac, self._options(wire.DISCOVER),
                         flags=wire.FLAG_BROADCAST, secs=self._secs(now))
        self.tx.append((BROADCAST_IP, msg))
        self.stats["discovers"] += 1
        self._deadline = now + self._backoff()

    def _send_request(self, now, dst):
        """A REQUEST as table 5 of section 4.4.1 shapes it for the current state."""
        opts = self._options(wire.REQUEST)
        if self.state == REQUESTING:
            address, server = self._offer
            opts += [(wire.OPT_REQUESTED_IP, struct.pack("!I", address)), (wire.OPT_SERVER_ID, struct.pack("!I", server))]
            msg = wire.build(wire.OP_REQUEST, self._xid, self.mac, opts, flags=wire.FLAG_BROADCAST, secs=self._secs(now))
            self._deadline = now + self._backoff()
        else:
            msg = wire.build(wire.OP_REQUEST, self._xid, self.mac, opts, ciaddr=self.lease.address, secs=self._secs(now))
            lease = self.lease
            limit = lease.obtained + (lease.t2 if self.state == RENEWING else lease.lease_time)
            self._deadline = min(now + max((limit - now) / 2, self.min_renew_interval), limit)
        self._request_sent = now
        self.tx.append((dst, msg))
        self.stats["requests"] += 1
