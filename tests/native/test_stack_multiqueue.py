"""The native stack on several shards: one TAP queue each, flows steered to their owner.

Layers: `ownership.frame_owner` on hand-built frames; a stack told it is shard 0 of
2 keeps its own frames and hands the others on (ARP news to everybody, reassembled
datagrams and UDP clients' replies to the shard of their ports); DHCP on
three stacks in one process (shard 0 runs the client against a scripted server,
the others take its lease through a hook); then a real two-shard app on a
multi-queue TAP with the Linux kernel as the peer, serving connections on both
shards and opening TCP connections and UDP channels from both.
"""
import asyncio
import collections
import random
import struct
import subprocess
import sys
import textwrap
import time

import pytest

from shoal.drivers.netns import KernelPeer, stop_process, unavailable
from shoal.drivers.steering import flow_queue
from shoal.drivers.virtual import VirtualWire
from shoal.net.native import ownership
from shoal.net.native.config import NativeConfig
from shoal.net.native.stack import NativeStack
from shoal.net.native.wire import dhcp as wire_dhcp
from shoal.net.native.wire import ethernet, ipv4 as wire_ipv4, udp as wire_udp

MAC_A = bytes.fromhex("02000000000a")
MAC_B = bytes.fromhex("02000000000b")
IP_A, IP_B = bytes([10, 1, 0, 1]), bytes([10, 1, 0, 2])


def ipv4_frame(protocol, l4, dst_mac=MAC_A, flags_frag=0x4000, src=IP_B, dst=IP_A):
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, flags_frag, 64, protocol, 0, src, dst)
    return dst_mac + MAC_B + b"\x08\x00" + header + l4


def tcp_bytes(sport, dport):
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 65535, 0, 0)


def arp_frame(op, spa, tpa):
    return (MAC_A + MAC_B + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, op)
            + MAC_B + spa + (MAC_A if op == 2 else bytes(6)) + tpa)


def owned_port(shard, shards, remote):
    return next(p for p in range(20000, 30000) if flow_queue(p, remote, shards) == shard)


def test_frame_owner_follows_the_ports_of_tcp_udp_and_quoted_datagrams():
    for sport in range(30000, 30050):
        want = flow_queue(sport, 80, 3)
        assert ownership.frame_owner(ipv4_frame(6, tcp_bytes(sport, 80)), 3) == want
        assert ownership.frame_owner(ipv4_frame(17, struct.pack("!HHHH", sport, 80, 8, 0)), 3) == want
        # An ICMP port unreachable quoting a datagram we sent (ports reversed: the same flow).
        quoted = ipv4_frame(17, struct.pack("!HHHH", 80, sport, 8, 0), src=IP_A, dst=IP_B)[14:42]
        icmp = struct.pack("!BBHI", 3, 3, 0, 0) + quoted
        assert ownership.frame_owner(ipv4_frame(1, icmp), 3) == want


def test_an_icmp_error_about_a_udp_clients_datagram_goes_to_the_shard_of_its_port():
    """A UDP client's ephemeral port belongs to `ephemeral_udp_owner`'s shard, not to the
    shard its flow hashes to; errors quoting what it sent go there too (ports below the
    ephemeral range keep the flow's shard)."""
    moved = 0
    for sport in range(50000, 50060):
        quoted = ipv4_frame(17, struct.pack("!HHHH", sport, 53, 8, 0), src=IP_A, dst=IP_B)[14:42]
        icmp = ipv4_frame(1, struct.pack("!BBHI", 3, 3, 0, 0) + quoted)
        assert ownership.frame_owner(icmp, 3) == ownership.ephemeral_udp_owner(sport, 3) == sport % 3
        moved += flow_queue(sport, 53, 3) != sport % 3
    assert moved  # the rule decides, not the flow hash
    quoted = ipv4_frame(17, struct.pack("!HHHH", 5353, 53, 8, 0), src=IP_A, dst=IP_B)[14:42]
    icmp = ipv4_frame(1, struct.pack("!BBHI", 3, 3, 0, 0) + quoted)
    assert ownership.frame_owner(icmp, 3) == flow_queue(5353, 53, 3)


def test_frames_without_ports_have_no_owner():
    tcp = tcp_bytes(30001, 80)
    assert ownership.frame_owner(ipv4_frame(6, tcp, flags_frag=0x2000), 2) is None  # first fragment (MF)
    assert ownership.frame_owner(ipv4_frame(6, tcp, flags_frag=0x0010), 2) is None  # a later one
    assert ownership.frame_owner(ipv4_frame(1, struct.pack("!BBHI", 8, 0, 0, 0)), 2) is None  # echo request
    assert ownership.frame_owner(arp_frame(1, IP_B, IP_A), 2) is None
    assert ownership.frame_owner(ipv4_frame(6, b"\x00"), 2) is None  # too short for ports
    assert ownership.frame_owner(b"\x00" * 10, 2) is None
    assert ownership.arp_news(arp_frame(2, IP_B, IP_A)) and ownership.arp_news(arp_frame(1, IP_B, IP_B))
    assert not ownership.arp_news(arp_frame(1, IP_B, IP_A))


def make_shard(shard, shards, forwarded):
    device = VirtualWire(mac_a=MAC_A, mac_b=MAC_B).a
    config = NativeConfig(host_ipv4_addr=int.from_bytes(IP_A, "big"), netmask_ipv4_addr=0xFFFFFF00)
    return NativeStack(device, config, rng=random.Random(shard), clock=lambda: 0.0, shard=shard, shards=shards,
                       forward=lambda owner, frame: forwarded.append((owner, frame)))


def test_a_shard_keeps_its_frames_and_hands_on_the_others():
    forwarded = []
    stack = make_shard(0, 2, forwarded)
    stack.ipv4.configure(int.from_bytes(IP_A, "big"), 0xFFFFFF00, 0, 0.0)
    mine, theirs = owned_port(0, 2, 80), owned_port(1, 2, 80)
    stack.receive_frames([ipv4_frame(6, tcp_bytes(mine, 80)), ipv4_frame(6, tcp_bytes(theirs, 80))])
    assert forwarded == [(1, ipv4_frame(6, tcp_bytes(theirs, 80)))]
    assert stack.stats["rx-forwarded"] == 1
    # Shard 0 answers ARP requests itself and shares replies with the other shards.
    forwarded.clear()
    stack.receive_frames([arp_frame(1, IP_B, IP_A), arp_frame(2, IP_B, IP_A)])
    assert forwarded == [(1, arp_frame(2, IP_B, IP_A))]
    assert stack.arp.stats["replies-sent"] == 1


def udp_frame(sport, dport, data):
    """A whole UDP datagram from B to A, checksums right."""
    src, dst = int.from_bytes(IP_B, "big"), int.from_bytes(IP_A, "big")
    return MAC_A + MAC_B + b"\x08\x00" + wire_ipv4.build(src, dst, 17, wire_udp.build(src, dst, sport, dport, data))


def udp_fragments(sport, dport, data, ident=7):
    """The frames of a UDP datagram cut in two IPv4 fragments (all steered to queue 0)."""
    l4 = wire_udp.build(int.from_bytes(IP_B, "big"), int.from_bytes(IP_A, "big"), sport, dport, data)
    cut = 1000  # a multiple of 8 (RFC 791)
    frames = []
    for off, piece, more in ((0, l4[:cut], True), (cut, l4[cut:], False)):
        header = bytearray(wire_ipv4.HEADER_LEN)
        wire_ipv4.emit(header, 0, int.from_bytes(IP_B, "big"), int.from_bytes(IP_A, "big"), 17, len(piece),
                       ident, mf=more, frag_offset=off)
        frames.append(MAC_A + MAC_B + b"\x08\x00" + bytes(header) + piece)
    return frames


class Inbox:
    def __init__(self):
        self.datagrams = []

    def datagram_received(self, data, addr, packet=None):
        self.datagrams.append((bytes(data), addr))


def linked_shards(n):
    """`n` configured stacks, shards of one interface, forwarding straight to each other."""
    stacks = []

    def forward(owner, frame):
        stacks[owner].receive_forwarded(frame)

    for shard in range(n):
        device = VirtualWire(mac_a=MAC_A, mac_b=MAC_B).a
        config = NativeConfig(host_ipv4_addr=int.from_bytes(IP_A, "big"), netmask_ipv4_addr=0xFFFFFF00)
        stack = NativeStack(device, config, rng=random.Random(shard), clock=lambda: 0.0, shard=shard, shards=n,
                            forward=forward)
        stack.wake = lambda: None  # no reactor here: the test drives the stacks
        stack.ipv4.configure(int.from_bytes(IP_A, "big"), 0xFFFFFF00, 0, 0.0)
        stacks.append(stack)
    return stacks


def test_a_datagram_reassembled_on_one_shard_goes_whole_to_the_shard_of_its_ports():
    """Fragments carry no ports, so the device sends them all to queue 0; the datagram
    they make belongs to the shard of its ports, which gets it whole."""
    stacks = linked_shards(2)
    theirs, mine = owned_port(1, 2, 5353), owned_port(0, 2, 5353)
    inboxes = [Inbox(), Inbox()]
    stacks[1].udp.bind(theirs, inboxes[1])
    stacks[0].udp.bind(mine, inboxes[0])
    data = bytes(range(256)) * 8
    stacks[0].receive_frames(udp_fragments(5353, theirs, data))
    assert inboxes[1].datagrams == [(data, (int.from_bytes(IP_B, "big"), 5353))]
    assert inboxes[0].datagrams == [] and stacks[0].stats["rx-forwarded"] == 1
    assert stacks[0].ipv4.stats["reassembled-handed-off"] == 1
    # A datagram of shard 0's own ports stays there.
    stacks[0].receive_frames(udp_fragments(5353, mine, data, ident=8))
    assert inboxes[0].datagrams == [(data, (int.from_bytes(IP_B, "big"), 5353))]
    assert stacks[0].stats["rx-forwarded"] == 1 and len(inboxes[1].datagrams) == 1


def test_replies_to_a_udp_client_reach_its_shard_whichever_queue_they_land_on():
    """A shard's ephemeral UDP ports are those `ephemeral_udp_owner` gives it; a reply the
    device steers (by both ports) to another shard is handed on to it. Ports nobody binds
    are answered with port unreachable where they land, and never bounce between shards."""
    stacks = linked_shards(3)
    for shard in range(3):
        channels = [stacks[shard].udp_channel(("", 0)) for _ in range(20)]
        assert {ownership.ephemeral_udp_owner(c.port, 3) for c in channels} == {shard}
        for channel in channels:
            lands = flow_queue(53, channel.port, 3)
            stacks[lands].receive_frames([udp_frame(53, channel.port, b"answer")])
            assert channel.stats["received"] == 1, (shard, lands, channel.port)
    assert sum(s.udp.stats["handed-off"] for s in stacks) > 0
    # an ephemeral port of shard 2 nobody binds, whose flow lands on shard 0: handed on once
    free = next(p for p in range(50000, 50100) if ownership.ephemeral_udp_owner(p, 3) == 2
                and flow_queue(53, p, 3) == 0)
    stacks[0].receive_frames([udp_frame(53, free, b"late")])
    assert [s.udp.drops["no-listener"] for s in stacks] == [0, 0, 1]
    # a port outside the ephemeral range: unreachable where it lands
    lands = flow_queue(53, 4000, 3)
    stacks[lands].receive_frames([udp_frame(53, 4000, b"x")])
    assert stacks[lands].udp.drops["no-listener"] == 1 + (lands == 2)
    assert sum(s.stats["rx-forwarded"] for s in stacks) == sum(s.udp.stats["handed-off"] for s in stacks)


def test_only_shard_0_announces_the_address():
    """Every shard holds the address; one gratuitous ARP series (RFC 5227 section 3) speaks for all."""
    for shard, announces in ((0, True), (1, False)):
        stack = make_shard(shard, 2, [])
        stack.ipv4.configure(int.from_bytes(IP_A, "big"), 0xFFFFFF00, 0, 0.0)
        for now in (0.0, 2.0, 4.0):
            stack.arp.poll(now)
        sent = [bytes(b"".join(bytes(v) for v in p.views())) for p in stack.arp.tx]
        assert bool(sent) == announces and stack.arp.stats["sent"] == len(sent)
        assert all(ownership.arp_news(frame) for frame in sent)  # announcements: sender = target


def test_a_shard_picks_local_ports_steered_back_to_it():
    for shard in range(3):
        stack = make_shard(shard, 3, [])
        assert all(stack.owns_flow(p, 11211) == (flow_queue(p, 11211, 3) == shard) for p in range(40000, 40100))


def test_stack_on_several_queues_needs_a_way_to_forward():
    device = VirtualWire(mac_a=MAC_A, mac_b=MAC_B).a
    with pytest.raises(ValueError, match="needs `forward`"):
        NativeStack(device, NativeConfig(host_ipv4_addr=1), rng=random.Random(), shards=2)


def test_dhcp_replies_belong_to_shard_0_wherever_they_land():
    dhcp_queue = [flow_queue(67, 68, n) for n in (3, 6)]
    assert dhcp_queue == [2, 2]  # the device steers them elsewhere: shard 0 must claim them
    for shards in (2, 3, 6):
        udp = ipv4_frame(17, struct.pack("!HHHH", 67, 68, 8, 0))
        assert ownership.frame_owner(udp, shards) == 0
        assert ownership.frame_owner(ipv4_frame(17, struct.pack("!HHHH", 68, 67, 8, 0)), shards) == 0
        # An ICMP error about a datagram the client sent (68 -> 67) is the client's too.
        quoted = ipv4_frame(17, struct.pack("!HHHH", 68, 67, 8, 0), src=IP_A, dst=IP_B)[14:42]
        assert ownership.frame_owner(ipv4_frame(1, struct.pack("!BBHI", 3, 3, 0, 0) + quoted), shards) == 0
        # TCP between those ports is an ordinary flow.
        assert ownership.frame_owner(ipv4_frame(6, tcp_bytes(67, 68)), shards) == flow_queue(67, 68, shards)


class SteppedReactor:
    """Stands in for the shard reactor: the test polls the stacks itself."""

    sleeping = False

    def add_poller(self, poller):
        pass

    def remove_poller(self, poller):
        pass


class ManualClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


SERVER_MAC = MAC_B
SERVER_IP = 0x0A010001
LEASED, NETMASK, ROUTER = 0x0A010032, 0xFFFFFF00, 0x0A0100FE


class DhcpShards:
    """Three stacks of one interface in one process, with DHCP: the hooks deliver at once
    (`forward` to the owner's `receive_forwarded`, `share_address` to `receive_address`)
    and record what they carried. Shard 0's device is one end of a virtual wire; the test
    reads the client's messages at the other end and plays the server."""

    def __init__(self, shards=3):
        self.clock = ManualClock()
        self.wire = VirtualWire(mac_a=MAC_A, mac_b=SERVER_MAC)
        self.forwarded = []
        self.shared = []
        config = NativeConfig(dhcp=True)
        self.stacks = []
        for shard in range(shards):
            device = self.wire.a if shard == 0 else VirtualWire(mac_a=MAC_A, mac_b=SERVER_MAC).a
            self.stacks.append(NativeStack(device, config, rng=random.Random(shard), clock=self.clock, shard=shard,
                                           shards=shards, forward=self._forward, share_address=self._share))
        for stack in self.stacks:
            stack.start(SteppedReactor())

    def _forward(self, owner, frame):
        self.forwarded.append(owner)
        self.stacks[owner].receive_forwarded(frame)

    def _share(self, shard, shared):
        self.shared.append((shard, shared))
        self.stacks[shard].receive_address(shared)

    def advance(self, seconds):
        """Let time pass in small steps, running the stacks' timers and transmit."""
        end = self.clock.now + seconds
        while self.clock.now < end:
            self.clock.now = min(end, self.clock.now + 0.1)
            for stack in self.stacks:
                stack.poller.poll()

    def client_messages(self):
        """The DHCP messages shard 0 sent, parsed (other frames, ARP probes, are skipped)."""
        self.stacks[0].poller.poll()
        out = []
        for frame in self.wire.b.rx_burst(100):
            eth = ethernet.parse(memoryview(bytes(frame)))
            if eth.ethertype != ethernet.ETHERTYPE_IPV4:
                continue
            ip, l4 = wire_ipv4.parse(eth.payload)
            header, payload = wire_udp.parse(l4, ip.src, ip.dst)
            assert (header.src_port, header.dst_port) == (68, 67)
            out.append(wire_dhcp.parse(payload))
        return out

    def reply(self, request, kind, shard, address=LEASED, lease=120):
        """The server's answer to `request`, received by `shard` (where the device steered it)."""
        options = [(wire_dhcp.OPT_MESSAGE_TYPE, bytes([kind])), (wire_dhcp.OPT_SERVER_ID, struct.pack("!I", SERVER_IP)),
                   (wire_dhcp.OPT_LEASE_TIME, struct.pack("!I", lease)),
                   (wire_dhcp.OPT_SUBNET_MASK, struct.pack("!I", NETMASK)),
                   (wire_dhcp.OPT_ROUTER, struct.pack("!I", ROUTER))]
        payload = wire_dhcp.build(wire_dhcp.OP_REPLY, request.xid, request.chaddr, options, yiaddr=address)
        datagram = wire_ipv4.build(SERVER_IP, 0xFFFFFFFF, 17, wire_udp.build(SERVER_IP, 0xFFFFFFFF, 67, 68, payload))
        self.stacks[shard].receive_frames([ethernet.build(ethernet.BROADCAST, SERVER_MAC, 0x0800, datagram)])

    def lease(self, address=LEASED, shard=2):
        """DISCOVER, OFFER, REQUEST, ACK (the replies landing on `shard`), then the RFC 5227 probe."""
        *_, discover = self.client_messages()  # the latest (earlier ones: renewals of a lost lease)
        assert discover.message_type == wire_dhcp.DISCOVER
        self.reply(discover, wire_dhcp.OFFER, shard, address)
        (request,) = self.client_messages()
        assert request.message_type == wire_dhcp.REQUEST
        self.reply(request, wire_dhcp.ACK, shard, address)
        self.advance(10)  # up to PROBE_WAIT + PROBE_NUM probes + ANNOUNCE_WAIT (RFC 5227 section 1.1)

    def addresses(self):
        return [(s.ipv4.address, s.ipv4.netmask, s.ipv4.gateway, s.configured) for s in self.stacks]


def test_with_dhcp_shard_0_leases_and_every_shard_takes_the_address():
    shards = DhcpShards()
    zero, one, two = shards.stacks
    assert zero.dhcp is not None and one.dhcp is None and two.dhcp is None  # one client, on shard 0
    assert shards.addresses() == [(0, 0, 0, False)] * 3
    shards.lease()
    assert shards.forwarded == [0, 0]  # the OFFER and the ACK, from the queue the device chose
    assert zero.stats["dhcp-bound"] == 1
    assert shards.addresses() == [(LEASED, NETMASK, ROUTER, True)] * 3
    assert shards.shared == [(1, (1, LEASED, NETMASK, ROUTER)), (2, (1, LEASED, NETMASK, ROUTER))]
    # Only shard 0 probed and announced the address; the others sent nothing on the link.
    assert zero.arp.stats["sent"] >= 2 and zero.dhcp.stats["probes"] == 3
    assert one.stats["tx-frames"] == 0 and two.stats["tx-frames"] == 0


def test_other_shards_follow_every_lease_event_of_shard_0():
    shards = DhcpShards()
    shards.lease()
    # No answer to the renewals: at the end of the lease (RFC 2131 section 4.4.5) it is lost everywhere.
    shards.advance(121)
    assert shards.stacks[0].stats["dhcp-lost"] == 1
    assert shards.addresses() == [(0, 0, 0, False)] * 3
    # The client starts over; a new address this time.
    new_address = LEASED + 1
    shards.lease(new_address, shard=1)
    assert shards.addresses() == [(new_address, NETMASK, ROUTER, True)] * 3
    assert [generation for _, (generation, *_rest) in shards.shared] == [1, 1, 2, 2, 3, 3]


def test_a_shared_address_overtaken_by_a_later_one_is_ignored():
    shards = DhcpShards()
    one = shards.stacks[1]
    one.receive_address((2, LEASED, NETMASK, ROUTER))
    one.receive_address((1, 0, 0, 0))  # the earlier event, late
    assert shards.addresses()[1] == (LEASED, NETMASK, ROUTER, True)
    assert one.stats["dhcp-stale-address"] == 1


def test_shard_0_releases_the_lease_on_stop_and_the_others_drop_it():
    async def main():
        shards = DhcpShards()
        shards.lease()
        stopping = asyncio.ensure_future(shards.stacks[0].stop())
        for _ in range(1000):  # time passes while the RELEASE waits for the server's MAC (bounded)
            if stopping.done():
                break
            shards.clock.now += 0.01
            await asyncio.sleep(0)
        await stopping
        return shards

    shards = asyncio.run(asyncio.wait_for(main(), 60))
    assert shards.stacks[0].dhcp.stats["releases"] == 1
    assert shards.shared[-2:] == [(1, (2, 0, 0, 0)), (2, (2, 0, 0, 0))]
    assert [s.configured for s in shards.stacks[1:]] == [False, False]


def test_dhcp_on_several_shards_needs_a_way_to_share_the_lease():
    device = VirtualWire(mac_a=MAC_A, mac_b=MAC_B).a
    with pytest.raises(ValueError, match="needs `share_address`"):
        NativeStack(device, NativeConfig(dhcp=True), rng=random.Random(), shards=2, forward=lambda *a: None)


def test_a_tap_that_cannot_be_opened_stops_the_app_before_the_shards_fork():
    out = subprocess.run([sys.executable, "-m", "shoal.apps.echo", "--smp", "2", "--network-stack", "native",
                          "--host-ipv4-addr", "10.9.9.2", "--tap-device", "x" * 20],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "longer than 15 bytes" in out.stderr and "Traceback" not in out.stderr


APP = textwrap.dedent("""
    import sys
    from shoal import net
    from shoal.runtime import smp

    async def serve(conn):
        await conn.read()
        await conn.write(b"shard %d\\n" % smp.this_shard())
        await conn.close()

    async def listen():
        server = net.listen(("", 7000))
        async def loop():
            async for conn in server:
                import asyncio
                asyncio.ensure_future(serve(conn))
        import asyncio
        asyncio.ensure_future(loop())

    async def call_kernel(host):
        conn = await net.connect((host, 7001), timeout=30)
        await conn.write(b"from shard %d\\n" % smp.this_shard())
        reply = b""
        while not reply.endswith(b"\\n"):
            data = await conn.read()
            if not data:
                break
            reply += bytes(data)
        await conn.close()
        return reply.decode().strip()

    async def ask_kernel_udp(host):
        # a new channel, so a new ephemeral port: the device steers the reply by both ports
        import asyncio
        chan = net.udp_channel(("", 0))
        try:
            await chan.send((host, 7002), b"udp from shard %d" % smp.this_shard())
            data, _ = await asyncio.wait_for(chan.receive(), 30)
            return bytes(data).decode()
        finally:
            chan.close()

    async def main():
        import asyncio
        await smp.invoke_on_all(listen)
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        while not (await loop.run_in_executor(None, sys.stdin.readline)).startswith("go"):
            pass
        replies = []
        for shard in range(smp.count):
            for _ in range(3):
                replies.append(await smp.submit_to(shard, call_kernel, sys.argv[1]))
        print("client:", ",".join(replies), flush=True)
        answers = []
        for shard in range(smp.count):
            for _ in range(8):
                answers.append(await smp.submit_to(shard, ask_kernel_udp, sys.argv[1]))
        print("udp:", ",".join(answers), flush=True)
        await asyncio.Event().wait()

    sys.exit(net.AppTemplate().run(main, sys.argv[2:]))
""")

KERNEL_CLIENTS = textwrap.dedent("""
    import socket, sys, collections
    seen = collections.Counter()
    for _ in range(int(sys.argv[2])):
        with socket.create_connection((sys.argv[1], 7000), timeout=30) as s:
            s.sendall(b"hi")
            data = b""
            while not data.endswith(b"\\n"):
                chunk = s.recv(100)
                assert chunk, "connection closed without an answer"
                data += chunk
            seen[data.decode().strip()] += 1
    print(dict(seen))
""")

KERNEL_SERVER = textwrap.dedent("""
    import socket, threading
    def echo_udp():
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("", 7002))
        while True:
            data, addr = udp.recvfrom(2048)
            udp.sendto(b"kernel heard " + data, addr)
    threading.Thread(target=echo_udp, daemon=True).start()
    srv = socket.create_server(("", 7001))
    print("listening", flush=True)
    while True:
        conn, _ = srv.accept()
        with conn:
            data = b""
            while not data.endswith(b"\\n"):
                chunk = conn.recv(100)
                if not chunk:
                    break
                data += chunk
            conn.sendall(b"kernel saw " + data)
""")


@pytest.mark.root
@pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))
@pytest.mark.parametrize("shards", [2, 4])
def test_shards_serve_and_open_connections_with_the_kernel(tmp_path, shards):
    """Each shard owns one queue of the TAP: the kernel's connections reach every shard and
    are answered there, and each shard's own connections and UDP clients get their replies
    (steered by both ports). Four shards run overprovisioned on a two-core machine."""
    app_path = tmp_path / "multishard_app.py"
    app_path.write_text(APP)
    with KernelPeer(subnet="10.213.9", open_device=False) as peer:
        server = peer.popen(["python3", "-u", "-c", KERNEL_SERVER], stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == "listening"
        app = subprocess.Popen([sys.executable, str(app_path), peer.kernel_ip, "--smp", str(shards), "--overprovisioned",
                                "--network-stack", "native", "--host-ipv4-addr", peer.shoal_ip,
                                "--tap-device", peer.ifname],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 60
            while not peer.interface_up():
                assert app.poll() is None and time.monotonic() < deadline, stop_process(app)
                time.sleep(0.05)
            peer.adopt()
            assert app.stdout.readline().strip() == "ready"
            clients = peer.run(["python3", "-c", KERNEL_CLIENTS, peer.shoal_ip, "40"], check=False, timeout=120)
            assert clients.returncode == 0, clients.stderr
            seen = eval(clients.stdout)  # a dict literal the client printed
            assert sum(seen.values()) == 40 and set(seen) == {f"shard {n}" for n in range(shards)}, seen
            app.stdin.write("go\n")
            app.stdin.flush()
            line = app.stdout.readline()
            replies = collections.Counter(line.removeprefix("client:").strip().split(","))
            assert replies == {f"kernel saw from shard {n}": 3 for n in range(shards)}, line
            # UDP clients on every shard: 8 ephemeral ports each, so some replies land on other shards
            line = app.stdout.readline()
            answers = collections.Counter(line.removeprefix("udp:").strip().split(","))
            assert answers == {f"kernel heard udp from shard {n}": 8 for n in range(shards)}, line
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- app output ---\n{stop_process(app)}") from None
        finally:
            output = stop_process(app)
        assert app.returncode == 0, output
