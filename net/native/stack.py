"""The native stack of one shard: the interface, its protocol layers, and the device that feeds them.

Theory of operation
-------------------
`NativeStack` owns one device queue and the sans-I/O layers above it::

    device --rx_burst--> receive_frames: Ethernet demux --+--> Arp.receive
                                                          +--> Ipv4.receive --> Icmp | Udp | TcpLayer
    device <--tx_burst-- pull(n) <-- Arp.tx (every frame leaves through ARP, the link output)

Receive: an established connection's segment in a common layout (`wire.tcp_frame`:
Ethernet, IPv4 without options, TCP with timestamps or no options) is parsed with one
unpack, with the checks of the three layers, and goes to `TcpLayer.receive_segment` (the burst
ends with `TcpLayer.end_burst`, which delivers a pure ACK held to merge). A unicast
UDP datagram in the common layout (`wire.udp_frame`: Ethernet, IPv4 without options,
unfragmented) to a bound port goes the same way to its endpoint. Every other
frame becomes a `Packet` wrapping the driver's bytes (no copy), the
Ethernet header is parsed and filtered (our MAC or broadcast, untagged, ARP or
IPv4), and the payload goes to the layer's ``receive`` with the shard clock's
``now``. Every frame that stops here is counted in `drops` by reason; layers count
their own. Nothing raises on bad input.

Transmit is pulled: the reactor's `DevicePoller` asks `pull(n)` for at most ``n``
frames when the device can take them. Registered *transmit sources* (the TCP layer,
`tcp_layer.TcpLayer`, through `add_tx_source`) are asked first to build up to the
room left, so segments are made at the last moment; then frames leave ARP's queue
in order. Frames the device took are released (an echo reply gives the request's
buffer back that way).

Time: layers expose ``poll_at()``/``poll(now)``. While the reactor polls, every
poll services due timers; before it sleeps, a loop timer is set for the earliest
deadline that wakes the reactor. Work queued from outside a poll (an application's
send, a timer) wakes a sleeping reactor through `wake`.

Configuration: a static address is set at `start`; with DHCP, a `DhcpClient` runs
on UDP port 68 and each lease event reconfigures IPv4 (and so ARP, which announces
the address). `configured` tells when an address is set.

Several shards: with ``--smp N`` the launcher opens N queues of one multi-queue TAP
before the shards fork (`prepare`: the kernel numbers queues in the order they are
opened) and shard i drives queue i (`create`). All shards share the MAC and the
address; the device steers each TCP/UDP flow to the queue of its ports
(`shoal.drivers.steering`), so each connection lives on one shard, and a shard
opening a connection picks a local port whose flow is steered back to it
(`owns_flow`). A frame that reaches a shard which does not own it (anything without
ports lands on queue 0; `ownership.frame_owner` says who owns what) is handed to
its owner through the smp rings, and shard 0 hands every ARP reply or announcement
to the others, whose caches would otherwise never learn the neighbours (only shard
0 answers ARP requests). With ``--dhcp`` one client runs, on shard 0: DHCP replies
are steered or handed to it (`ownership.frame_owner`), and each lease event it sees
(bound, renewed, lost, released) is pushed to every other shard (`share_address`,
`receive_address`), which takes the same address, netmask and gateway, or drops
them. The others neither run a client nor announce the address: shard 0 (which, with
DHCP, probed it: RFC 5227) speaks for it on the link.

Selection: importing `shoal.net.native` registers the stack as ``--network-stack
native`` (its factory is `create` here, imported when a shard makes the stack).
"""
import asyncio
import contextlib
import errno
import ipaddress
import logging
import random
import socket
import struct
from collections import deque

from shoal.drivers.base import DevicePoller, VerifiedFrame, frame_copy
from shoal.drivers.steering import flow_queue
from shoal.net import api

from . import config as native_config
from . import ownership
from .arp import Arp
from .counts import Counts
from .dhcp import DhcpClient
from .icmp import Icmp
from .ipv4 import Ipv4
from .packet import Packet
from .tcp.connection import TcpConfig
from .tcp_layer import TcpLayer
from .udp import Udp
from .wire import WireError
from .wire import dhcp as wire_dhcp
from .wire import ethernet, tcp_frame, udp_frame

log = logging.getLogger("shoal.net.native")
ETHERTYPE_IPV4 = ethernet.ETHERTYPE_IPV4
_ZERO_MAC = bytes(6)

TX_HIGH_WATER = 1024
"""Frames queued for the device above which senders wait (back-pressure)."""
TX_LOW_WATER = 256
SOURCE_SHARE = 4
"""The transmit sources' (TCP's) least share of a burst: 1/SOURCE_SHARE (`NativeStack.pull`)."""
UDP_RECEIVE_QUEUE = 1024
"""Datagrams a channel holds for the application before further ones are dropped."""
UDP_ERRORS_KEPT = 16
RELEASE_FLUSH_S = 2.0
"""Longest a clean stop waits for the DHCPRELEASE to reach the device."""

_ip_text_cache = {}
_ip_value_cache = {}


def ip_text(value):
    """Dotted quad of an int address (cached: a server sees few distinct peers)."""
    text = _ip_text_cache.get(value)
    if text is None:
        if len(_ip_text_cache) > 4096:
            _ip_text_cache.clear()
        text = _ip_text_cache[value] = socket.inet_ntoa(struct.pack("!I", value))
    return text


def _parse_host(host, what):
    """An IPv4 literal (or "" for any) as an int; cached like `ip_text`."""
    value = _ip_value_cache.get(host)
    if value is not None:
        return value
    if host in ("", None):
        return 0
    try:
        value = int(ipaddress.IPv4Address(host))
    except ValueError:
        raise OSError(errno.EAFNOSUPPORT, f"the native stack takes IPv4 literals only: {what} {host!r}") from None
    if len(_ip_value_cache) > 4096:
        _ip_value_cache.clear()
    _ip_value_cache[host] = value
    return value


def _immutable(data):
    """`data` if nothing can change it before it is sent, else a copy (udp.send does not copy)."""
    if type(data) is bytes:
        return data
    if type(data) is memoryview and data.readonly and data.contiguous:
        return data
    return bytes(data)


class NativeUdpChannel(api.UdpChannel):
    """A UDP port of the native stack: the `Udp` layer's endpoint and the API's channel.

    Received payloads are views of the driver's buffers (no copy); at most
    `UDP_RECEIVE_QUEUE` wait for the application, more are dropped and counted.
    ICMP errors about datagrams sent from this port (port unreachable...) and late
    send failures (ARP gave up) are kept in `errors` (the last `UDP_ERRORS_KEPT`);
    like an unconnected kernel socket, they do not fail the next receive.
    """

    def __init__(self, stack, address, port):
        self._stack = stack
        self._address = address
        self.port = port
        self._queue = deque()
        self._waiter = None
        self._closed = False
        self.errors = deque(maxlen=UDP_ERRORS_KEPT)
        self.stats = Counts()

    # -- Udp endpoint ----------------------------------------------------------------

    def datagram_received(self, data, addr, packet):
        if len(self._queue) >= UDP_RECEIVE_QUEUE:
            self.stats["dropped-queue-full"] += 1
            return
        packet.hold()
        self._queue.append((data, (ip_text(addr[0]), addr[1]), packet))
        self.stats["received"] += 1
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def error_received(self, exc, addr):
        self.stats["errors"] += 1
        # OSError(errno, ...) picks the matching subclass (ConnectionRefusedError for port unreachable).
        self.errors.append(OSError(exc.errno, f"{exc.strerror}: UDP to {ip_text(addr[0])}:{addr[1]}"))

    # -- API -------------------------------------------------------------------------

    @property
    def local_address(self):
        return (self._address or ip_text(self._stack.ipv4.address), self.port)

    def _check_open(self):
        if self._closed:
            raise ConnectionAbortedError(errno.ECONNABORTED,
                                         f"UDP channel closed: {api.format_address(self.local_address)}")

    async def receive(self):
        while not self._queue:
            self._check_open()
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data, source, packet = self._queue.popleft()
        packet.release()
        return data, source

    async def send(self, dest, data):
        self._check_open()
        host, port = dest[0], dest[1]
        dst = _parse_host(host, "UDP destination")
        if not dst or not 0 < port < 65536:
            raise OSError(errno.EINVAL, f"bad UDP destination {api.format_address(dest)}")
        await self._stack.wait_tx_room()
        stack = self._stack
        now_failed = []  # errors reported while udp.send runs are raised; later ones are kept in `errors`

        def on_error(exc):
            exc = api.with_address(exc, f"UDP send to {api.format_address(dest)}")
            (now_failed if sending else self.errors).append(exc)

        sending = True
        try:
            stack.udp.send(self.port, dst, port, _immutable(data), stack.now(), on_error=on_error)
        except OSError as exc:
            raise api.with_address(exc, f"UDP send to {api.format_address(dest)}") from None
        finally:
            sending = False
        if now_failed:
            raise now_failed[0]
        stack.wake()

    def close(self):
        if self._closed:
            return
        self._closed = True
        self._stack.udp.unbind(self.port)
        self._stack._channels.discard(self)
        while self._queue:
            self._queue.popleft()[2].release()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionAbortedError(errno.ECONNABORTED, "UDP channel closed"))


class _DhcpEndpoint:
    """UDP port 68: hands DHCP replies to the client, which parses them during the call."""

    def __init__(self, stack):
        self.stack = stack

    def datagram_received(self, data, addr, packet):
        if addr[1] != wire_dhcp.SERVER_PORT:
            self.stack.dhcp.drops["not-from-server-port"] += 1
            return
        self.stack.dhcp.receive(data, self.stack.now())

    def error_received(self, exc, addr):
        self.stack.dhcp.stats["icmp-errors"] += 1


class _StackPoller:
    """The stack's reactor poller: services timers, then moves one burst each way."""

    def __init__(self, stack):
        self.stack = stack
        self._timer = None

    def poll(self):
        stack = self.stack
        worked = stack.service_timers()
        return stack.device_poller.poll() or worked

    def enter_interrupt_mode(self):
        stack = self.stack
        deadline = stack.next_deadline()
        if deadline is not None:
            delay = max(0.0, deadline - stack.now())
            self._timer = asyncio.get_running_loop().call_later(delay, stack.wake)
        return stack.device_poller.enter_interrupt_mode()

    def exit_interrupt_mode(self):
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.stack.device_poller.exit_interrupt_mode()


class NativeStack(api.NetworkStack):
    """shoal's TCP/IP stack on one device queue (see the module docstring).

    ``clock`` is the shard clock (default: the running loop's ``time``), ``rng`` a
    ``random.Random`` for identifiers (IP ident, ephemeral ports, DHCP xid, the TCP
    ISN secret): both are injected so that tests are reproducible. ``tcp_config`` is
    the `TcpConfig` TCP connections start from (its MTU is clamped to the device's).
    ``shard``/``shards``: which of how many queues of the interface `device` is;
    ``forward(shard, frame_bytes)`` hands a frame to the stack of another shard
    (required with more than one); ``share_address(shard, address)`` hands the
    configuration of shard 0's DHCP lease to another shard's `receive_address`
    (required on shard 0 of several with DHCP).
    """

    name = "native"

    def __init__(self, device, config, *, rng, clock=None, batch=64, tcp_config=None, shard=0, shards=1,
                 forward=None, share_address=None):
        if shards > 1 and forward is None:
            raise ValueError("a stack on one of several queues needs `forward` to reach the others")
        if shards > 1 and shard == 0 and config.dhcp and share_address is None:
            raise ValueError("shard 0 of several with DHCP needs `share_address` to configure the others")
        if not 0 <= shard < shards:
            raise ValueError(f"shard {shard} is not one of {shards}")
        self.device = device
        self.shard = shard
        self.shards = shards
        self._forward = forward
        self._share_address = share_address
        self._address_generation = 0  # of the last lease event shared (shard 0) or taken (the others)
        self.config = config
        self.mac = device.mac
        self._clock = clock
        # Shard 0 speaks for the address on the link (with DHCP it also probed it); the others stay quiet.
        self.arp = Arp(self.mac, announce_count=0) if shard else Arp(self.mac)
        self.ipv4 = Ipv4(self.arp, mtu=device.mtu, ident=rng.getrandbits(16))
        self.icmp = Icmp(self.ipv4)
        self.udp = Udp(self.ipv4, self.icmp, first_ephemeral=rng.randrange(49152, 65536))
        self.dhcp = DhcpClient(self.mac, rng) if config.dhcp and shard == 0 else None
        self.drops = Counts()
        self.stats = Counts()
        self._timer_clients = [self.arp, self.ipv4] + ([self.dhcp] if self.dhcp else [])
        self._tx_sources = []
        self._channels = set()
        self._tx_room = None
        self._configured = None
        self._reactor = None
        if shards > 1:
            self.ipv4.hand_off = self._hand_off_reassembled
            self.udp.hand_off = self._hand_off_udp
        self.device_poller = DevicePoller(device, self.receive_frames, self.pull, batch, done=self._sent)
        self.poller = _StackPoller(self)
        self.tcp = TcpLayer(self, rng, tcp_config, max_time_wait=config.tcp_max_time_wait)

    # -- lifecycle -------------------------------------------------------------------

    def now(self):
        return self._clock()

    def start(self, reactor):
        """Attach to the shard's reactor and configure the interface (static) or start DHCP
        (shard 0; the others wait for its lease in `receive_address`)."""
        if self._clock is None:
            self._clock = asyncio.get_running_loop().time
        self._configured = asyncio.Event()
        self._reactor = reactor
        reactor.add_poller(self.poller)
        now = self.now()
        c = self.config
        if self.dhcp is not None:
            self.udp.bind(wire_dhcp.CLIENT_PORT, _DhcpEndpoint(self))
            self.dhcp.start(now)
            self._dhcp_output(now)
        elif not c.dhcp:
            self.ipv4.configure(c.host_ipv4_addr, c.netmask_ipv4_addr, c.gw_ipv4_addr or 0, now)
            self._configured.set()
        self.wake()

    async def wait_configured(self, timeout=None):
        """Wait until the interface has an address (at once for a static one)."""
        await asyncio.wait_for(self._configured.wait(), timeout)

    @property
    def configured(self):
        return self._configured is not None and self._configured.is_set()

    async def stop(self):
        if self.dhcp is not None and self._reactor is not None:
            await self._release_lease()
        for channel in list(self._channels):
            channel.close()
        self.tcp.shutdown()
        if self._reactor is not None:
            self._reactor.remove_poller(self.poller)
            self._reactor = None
        self.device_poller.close()
        self.device.close()

    def wake(self):
        """Make a sleeping reactor poll again (frames or timers were queued outside a poll)."""
        reactor = self._reactor
        if reactor is not None and reactor.sleeping:
            reactor.wake()

    # -- hooks for the transport layers above IPv4 ------------------------------------

    def add_tx_source(self, source):
        """Register ``source(room, now)``: called at every pull to send up to `room` packets
        through `ipv4.send` (TCP builds its segments there, as late as possible)."""
        self._tx_sources.append(source)

    def add_timer_client(self, client):
        """Register an object with ``poll_at()``/``poll(now)`` (a transport's timers)."""
        self._timer_clients.append(client)

    # -- receive ---------------------------------------------------------------------

    def owns_flow(self, local_port, remote_port):
        """True if the device steers the TCP/UDP flow between these ports to this shard."""
        return self.shards == 1 or flow_queue(local_port, remote_port, self.shards) == self.shard

    def _owns_udp_port(self, port):
        """May `udp_channel` give ephemeral `port` to an endpoint of this shard?"""
        return ownership.ephemeral_udp_owner(port, self.shards) == self.shard

    def _keep_own(self, frames):
        """The frames of `frames` this shard handles; the others go to their owners (see the
        module docstring). Shard 0 also hands ARP news to every other shard."""
        own = []
        me, shards, owner_of = self.shard, self.shards, ownership.frame_owner
        for frame in frames:
            owner = owner_of(frame, shards)
            if owner is None or owner == me:
                own.append(frame)
                if owner is None and me == 0 and ownership.arp_news(frame):
                    data = bytes(frame)
                    for other in range(1, shards):
                        self._forward(other, data)
                    self.stats["arp-shared"] += 1
            else:
                self._forward(owner, frame_copy(frame))
                self.stats["rx-forwarded"] += 1
        return own

    def _hand_off_reassembled(self, hdr, datagram):
        """A datagram reassembled here whose ports belong to another shard goes there (the
        device steers every fragment to queue 0: pieces carry no ports)."""
        owner = ownership.transport_owner(datagram, hdr.header_len, hdr.proto, self.shards)
        if owner is None or owner == self.shard:
            return False
        self._hand_off(owner, datagram)
        return True

    def _hand_off_udp(self, hdr, datagram, port):
        """A UDP datagram for a port no endpoint here holds: if the port is an ephemeral one
        of another shard's (`ownership.ephemeral_udp_owner`), it goes there."""
        lo, hi = self.udp.ephemeral
        owner = ownership.ephemeral_udp_owner(port, self.shards)
        if not lo <= port <= hi or owner == self.shard:
            return False
        self._hand_off(owner, datagram)
        return True

    def _hand_off(self, owner, datagram):
        """Give an IPv4 datagram to shard `owner`, as a frame to our MAC from the all-zero
        MAC (which no sender has), so that it takes it in like any forwarded frame."""
        self._forward(owner, ethernet.build(self.mac, _ZERO_MAC, ETHERTYPE_IPV4, datagram))
        self.stats["rx-forwarded"] += 1

    def receive_forwarded(self, frame):
        """A frame another shard received for this one. It is this shard's by the sender's
        decision and is not judged again by `_keep_own` (a UDP datagram handed on for its
        port would otherwise go back to the shard of its flow)."""
        self.stats["rx-from-other-shards"] += 1
        self._demultiplex([frame])
        self.wake()

    def receive_frames(self, frames):
        """Take a burst of received Ethernet frames (the device poller's callback): with
        several shards, keep this shard's and hand the others on, then demultiplex."""
        self._demultiplex(self._keep_own(frames) if self.shards > 1 else frames)

    def _demultiplex(self, frames):
        """Demultiplex Ethernet frames up the stack. Never raises on bad input."""
        now = self.now()
        mac = self.mac
        drops = self.drops
        self.stats["rx-frames"] += len(frames)
        ipv4 = self.ipv4
        ipv4_receive, ipv4_stats = ipv4.receive, ipv4.stats
        parse_tcp_frame, tcp_receive_segment = tcp_frame.parse, self.tcp.receive_segment
        parse_udp_frame, udp_endpoints, udp_stats = udp_frame.parse, self.udp.endpoints, self.udp.stats
        wrap, unpack_header = Packet.wrap, ethernet.HEADER.unpack_from
        delivered = 0  # (TCP segments of the fast path, counted once for the burst)
        for frame in frames:
            verified = isinstance(frame, VerifiedFrame)
            view = frame if type(frame) is memoryview else memoryview(frame)
            got = parse_tcp_frame(view, mac, ipv4.address, not verified)  # (a DHCP reply may change it)
            if got is not None:
                # an established connection's segment, its three headers in one unpack, with
                # the checks of Ethernet, IPv4 and TCP: straight to TCP, no Packet (nothing
                # to release; what the connection keeps of the frame holds it)
                delivered += 1  # (as `Ipv4.receive` counts a datagram it hands up)
                src, tos, seg = got
                tcp_receive_segment(src, tos, seg, now)
                continue
            got = parse_udp_frame(view, mac, ipv4.address, not verified)
            if got is not None:
                src, sport, dport, payload = got
                endpoint = udp_endpoints.get(dport)
                if endpoint is not None:
                    # a datagram to a bound port, its three headers in one unpack with the
                    # checks of Ethernet, IPv4 and UDP: counted as the layers count it
                    # (`Udp.receive`); anything else (no socket: the ICMP error, another
                    # shard's port) goes the long way
                    ipv4_stats["delivered"] += 1
                    udp_stats["received"] += 1
                    udp_stats["bytes-received"] += len(payload)
                    packet = wrap(view, None, verified)
                    try:
                        endpoint.datagram_received(payload, (src, sport), packet)
                    finally:
                        packet.release()
                    continue
            packet = wrap(view, None, verified)
            try:
                if len(view) >= ethernet.HEADER_LEN:
                    # the common frame, decided from one unpack: untagged IPv4 from another
                    # host to our MAC (what `ethernet.parse` and the checks below would pass)
                    dst, src, ethertype = unpack_header(view)
                    if ethertype == ETHERTYPE_IPV4 and dst == mac and src != mac:
                        ipv4_receive(view[ethernet.HEADER_LEN:], packet, now)
                        continue
                try:
                    eth = ethernet.parse(view)
                except WireError as e:
                    drops[e.reason] += 1
                    continue
                dst = eth.dst
                if dst != mac and dst != ethernet.BROADCAST:
                    drops["multicast" if dst[0] & 1 else "not-our-mac"] += 1
                    continue
                if eth.src == mac:
                    drops["own-source-mac"] += 1
                    continue
                if eth.vlans:
                    drops["vlan-tagged"] += 1  # no VLAN is configured on this interface
                    continue
                ethertype = eth.ethertype
                if ethertype == ethernet.ETHERTYPE_IPV4:
                    self.ipv4.receive(eth.payload, packet, now)
                elif ethertype == ethernet.ETHERTYPE_ARP:
                    self.arp.receive(eth.payload, now)
                    if self.dhcp is not None and self.dhcp.probing:
                        self.dhcp.arp_received(eth.payload, now)  # RFC 5227 address check
                else:
                    drops["ipv6" if ethertype == ethernet.ETHERTYPE_IPV6 else "unknown-ethertype"] += 1
            finally:
                packet.release()
        if delivered:
            ipv4_stats["delivered"] += delivered
        self.tcp.end_burst(now)
        if self.dhcp is not None and (self.dhcp.tx or self.dhcp.events or self.dhcp.arp_tx):
            self._dhcp_output(now)

    # -- transmit --------------------------------------------------------------------

    def pull(self, n):
        """Up to `n` frames for the device (the DevicePoller's transmit source).

        The sources (TCP) are asked for what fills the burst, and at least `n` //
        `SOURCE_SHARE` frames whatever waits already: UDP datagrams queue at once, their
        senders stopping only at `TX_HIGH_WATER`, and a sender that kept the queue full
        left no room, ever, for the shard's TCP (an iperf3 UDP download's TEST_START
        never left its control connection)."""
        tx = self.arp.tx
        if self._tx_sources:
            now = self.now()
            budget = max(n - len(tx), n // SOURCE_SHARE)
            queued = len(tx)
            for source in self._tx_sources:
                room = budget - (len(tx) - queued)
                if room <= 0:
                    break
                source(room, now)
        if not tx:
            return ()
        if len(tx) <= n:
            out = list(tx)
            tx.clear()
        else:
            out = [tx.popleft() for _ in range(n)]
        self.stats["tx-frames"] += len(out)
        if self._tx_room is not None and len(tx) <= TX_LOW_WATER:
            self._tx_room.set()
            self._tx_room = None
        return out

    def _sent(self, frames):
        for packet in frames:
            packet.release()

    async def wait_tx_room(self):
        """Back-pressure for senders: wait while too many frames wait for the device."""
        while len(self.arp.tx) >= TX_HIGH_WATER:
            if self._tx_room is None:
                self._tx_room = asyncio.Event()
            self.wake()
            await self._tx_room.wait()

    # -- timers ----------------------------------------------------------------------

    def next_deadline(self):
        deadline = None
        for client in self._timer_clients:
            t = client.poll_at()
            if t is not None and (deadline is None or t < deadline):
                deadline = t
        return deadline

    def service_timers(self):
        """Run the layers' due timers; True if any ran."""
        now = self.now()
        ran = False
        for client in self._timer_clients:
            t = client.poll_at()
            if t is not None and t <= now:
                client.poll(now)
                ran = True
        if ran and self.dhcp is not None:
            self._dhcp_output(now)
        return ran

    # -- DHCP ------------------------------------------------------------------------

    def _dhcp_output(self, now):
        dhcp = self.dhcp
        while dhcp.arp_tx:  # the client's address probes (RFC 5227), broadcast
            probe = Packet(dhcp.arp_tx.popleft(), ethernet.HEADER_LEN)
            ethernet.push(probe, ethernet.BROADCAST, self.mac, ethernet.ETHERTYPE_ARP)
            self.arp.tx.append(probe)
        while dhcp.tx:
            dst, payload = dhcp.tx.popleft()
            self.udp.send(wire_dhcp.CLIENT_PORT, dst, wire_dhcp.SERVER_PORT, payload, now)
        while dhcp.events:
            event = dhcp.events.popleft()
            self.stats[f"dhcp-{event.kind}"] += 1
            if event.kind in ("lost", "released"):
                address = netmask = gateway = 0
            else:
                address, netmask, gateway = event.lease.address, event.lease.netmask, event.lease.gateway
            self._take_address(address, netmask, gateway, now)
            if self.shards > 1:
                self._address_generation += 1
                shared = (self._address_generation, address, netmask, gateway)
                for other in range(1, self.shards):
                    self._share_address(other, shared)

    def _take_address(self, address, netmask, gateway, now):
        """Configure IPv4 with a lease's address (0: none) and tell waiters."""
        self.ipv4.configure(address, netmask, gateway, now)
        if address:
            self._configured.set()
        else:
            self._configured.clear()

    def receive_address(self, shared):
        """On a shard other than 0: take the address of the lease event shard 0 shared
        (``(generation, address, netmask, gateway)``; address 0: the lease is gone).

        Shard 0 numbers its events; one that arrives after a later one (a message waiting
        for room in a full ring can be overtaken) is stale and ignored."""
        generation, address, netmask, gateway = shared
        if generation <= self._address_generation:
            self.stats["dhcp-stale-address"] += 1
            return
        self._address_generation = generation
        self.stats["dhcp-address-from-shard-0"] += 1
        self._take_address(address, netmask, gateway, self.now())
        self.wake()

    async def _release_lease(self):
        """DHCPRELEASE on a clean stop (RFC 2131 section 4.4.6): queued, then given up to
        `RELEASE_FLUSH_S` to leave (the server's MAC may need resolving) before the device closes."""
        now = self.now()
        if not self.dhcp.release(now):
            return
        self._dhcp_output(now)
        deadline = now + RELEASE_FLUSH_S
        while (self.arp.tx or self.arp.pending or self.device_poller.has_pending_tx()) and self.now() < deadline:
            self.wake()
            await asyncio.sleep(0.01)

    # -- API -------------------------------------------------------------------------

    def udp_channel(self, address):
        host, port = address[0], address[1]
        ip = _parse_host(host, "UDP bind address")
        if ip and ip != self.ipv4.address:
            raise OSError(errno.EADDRNOTAVAIL, f"{api.format_address(address)} is not this interface's address")
        channel = NativeUdpChannel(self, host if ip else "", 0)
        try:
            channel.port = self.udp.bind(port, channel, None if self.shards == 1 else self._owns_udp_port)
        except OSError as exc:
            raise api.with_address(exc, f"UDP bind {api.format_address(address)}") from None
        self._channels.add(channel)
        return channel

    def listen(self, address, *, reuse_address=True, backlog=api.DEFAULT_BACKLOG):
        return self.tcp.listen(address, backlog)

    async def connect(self, address, *, local_address=None, timeout=None):
        return await self.tcp.connect(address, local_address, timeout)

    # -- observability -----------------------------------------------------------------

    def counters(self):
        """Per-layer counters: ``{layer: {"stats": {...}, "drops": {...}}}``."""
        layers = {"ethernet": self, "arp": self.arp, "ipv4": self.ipv4, "icmp": self.icmp, "udp": self.udp}
        if self.dhcp is not None:
            layers["dhcp"] = self.dhcp
        out = {name: {"stats": dict(layer.stats), "drops": dict(layer.drops)} for name, layer in layers.items()}
        out["ipv4"]["tx_drops"] = dict(self.ipv4.tx_drops)
        out["tcp"] = self.tcp.counters()
        out["device"] = {"stats": dict(getattr(self.device, "stats", {})), "drops": {}}
        return out


def tcp_config(config):
    """The `TcpConfig` a `NativeConfig`'s TCP options ask for (RFC defaults otherwise)."""
    kw = {"congestion": config.tcp_congestion, "ecn": config.tcp_ecn, "tso": config.tcp_tso,
          "tail_loss_probe": config.tcp_tlp, "path_mtu_discovery": config.tcp_pmtud}
    if config.tcp_min_rto is not None:
        kw["min_rto"] = config.tcp_min_rto
        kw["initial_rto"] = max(TcpConfig.initial_rto, config.tcp_min_rto)
    return TcpConfig(**kw)


_prepared_queues = None
"""The TAP queues `prepare` opened in the launcher, inherited by the shards (index = shard)."""


def prepare(args, shard_count):
    """Open one queue of the TAP per shard, in shard order (runs in the launcher, before the
    shards fork: the kernel numbers a tap's queues in the order they attach). One MAC for all."""
    global _prepared_queues
    from shoal.drivers.tap import TapDevice

    config = native_config.from_args(args)
    try:
        _prepared_queues = TapDevice.open_queues(config.tap_device, shard_count, mac=config.hw_address,
                                                 mtu=config.mtu)
    except OSError as exc:
        raise native_config.ConfigError(f"--tap-device {config.tap_device}: cannot open {shard_count} "
                                        f"queue(s): {exc}") from None


def release(args):
    """The launcher's copies of the queue descriptors are closed once every shard has its own."""
    global _prepared_queues
    queues, _prepared_queues = _prepared_queues, None
    for queue in queues or ():
        queue.close()


def _tell_shard(shard, func, arg, what):
    """Run ``func(arg)`` on `shard` through the smp rings without waiting for it; a failure is logged."""
    from shoal.runtime import smp

    def done(task):
        if not task.cancelled() and task.exception() is not None:
            log.warning("%s failed: %r", what, task.exception())

    asyncio.ensure_future(smp.submit_to(shard, func, arg)).add_done_callback(done)


def _forward(shard, frame):
    """Hand a frame to the stack of `shard` (see `NativeStack._keep_own`)."""
    _tell_shard(shard, _receive_forwarded, frame, "forwarding a frame to its shard")


def _share_address(shard, shared):
    """Hand shard 0's lease event to `shard` (see `NativeStack.receive_address`)."""
    _tell_shard(shard, _receive_address, shared, "sharing the DHCP lease with a shard")


def _receive_forwarded(frame):
    stack = api.installed_stack()
    if stack is not None:  # None: this shard's stack has stopped; the frame has nobody to go to
        stack.receive_forwarded(frame)


def _receive_address(shared):
    stack = api.installed_stack()
    if stack is not None:  # None: this shard's stack has stopped (shard 0 releases its lease at the end)
        stack.receive_address(shared)


def create(args):
    """The `--network-stack native` factory: runs on each shard before `main`.

    Shard i takes the i-th queue `prepare` opened and closes its copies of the others'
    queues (their shards hold them). Without `prepare` (a stack made outside the
    launcher), it opens the single queue itself."""
    from shoal.drivers.tap import TapDevice
    from shoal.runtime import reactor, smp

    config = native_config.from_args(args)
    shards = smp.count or 1
    shard = smp.this_shard() if shards > 1 else 0
    queues = _prepared_queues
    if queues is None:
        if shards > 1:
            raise native_config.ConfigError("the native stack's queues are opened by the launcher before the "
                                            f"shards fork; this shard ({shard} of {shards}) has none")
        device = TapDevice(config.tap_device, mac=config.hw_address, mtu=config.mtu)
    else:
        device = queues[shard]
        for i, queue in enumerate(queues):
            if i != shard:
                queue.close()
    try:
        stack = NativeStack(device, config, rng=random.Random(), tcp_config=tcp_config(config), shard=shard,
                            shards=shards, forward=_forward if shards > 1 else None,
                            share_address=_share_address if shards > 1 else None)
        stack.start(reactor.current())
    except BaseException:
        device.close()
        raise
    return stack


@contextlib.asynccontextmanager
async def running(device, config, idle_poll_time=0.0005, **stack_kwargs):
    """A `NativeStack` on `device`, driven by a reactor of its own on the running loop:
    the stack without the launcher (tests, benchmarks, an embedding event loop).
    The stack owns the device from here on and closes it on the way out."""
    from shoal.runtime.reactor import Reactor

    reactor = Reactor(asyncio.get_running_loop(), idle_poll_time=idle_poll_time)
    stack = None
    try:
        stack = NativeStack(device, config, **stack_kwargs)
        stack.start(reactor)
        reactor.start()
        yield stack
    finally:
        if stack is not None:
            await stack.stop()
        else:
            device.close()
        reactor.close()
        reactor.check_fatal()
