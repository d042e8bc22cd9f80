"""ARP, IPv4, ICMP and UDP of two hosts against each other over an in-memory wire.

`Host` is the minimal glue a stack provides (Ethernet demux, frame ownership); the
wire moves frames between the hosts' ARP `tx` queues, optionally dropping some.
"""
import errno
import random

from hypothesis import given, settings, strategies as st

from shoal.net.native.arp import Arp
from shoal.net.native.icmp import Icmp
from shoal.net.native.ipv4 import Ipv4
from shoal.net.native.packet import Packet
from shoal.net.native.udp import Udp
from shoal.net.native.wire import WireError, ethernet

A_IP, B_IP, MASK = 0x0A000001, 0x0A000002, 0xFFFFFF00


class Endpoint:
    def __init__(self):
        self.datagrams, self.errors = [], []

    def datagram_received(self, data, addr, packet):
        self.datagrams.append((bytes(data), addr))

    def error_received(self, exc, addr):
        self.errors.append((exc, addr))


class Host:
    def __init__(self, mac_last, ip, mtu=1500):
        self.mac = bytes(5) + bytes([mac_last])
        self.arp = Arp(self.mac, announce_count=1)
        self.ip = Ipv4(self.arp, mtu=mtu)
        self.icmp = Icmp(self.ip)
        self.udp = Udp(self.ip, self.icmp)
        self.ip.configure(ip, MASK, 0, 0.0)
        self.drops = {}
        self.released = 0

    def receive_frame(self, raw, now):
        """What the stack does per received frame; the release hook counts returned buffers."""
        view = memoryview(raw)
        pkt = Packet.wrap(view, release=self._recycle)
        try:
            f = ethernet.parse(view)
        except WireError as e:
            self.drops[e.reason] = self.drops.get(e.reason, 0) + 1
        else:
            if f.dst != self.mac and f.dst != ethernet.BROADCAST:
                self.drops["other-mac"] = self.drops.get("other-mac", 0) + 1
            elif f.ethertype == ethernet.ETHERTYPE_ARP:
                self.arp.receive(f.payload, now)
            elif f.ethertype == ethernet.ETHERTYPE_IPV4:
                self.ip.receive(f.payload, pkt, now)
        pkt.release()

    def _recycle(self):
        self.released += 1

    def poll(self, now):
        self.arp.poll(now)
        self.ip.poll(now)


def run_wire(a, b, now, drop=lambda raw: False, rounds=50):
    """Move frames both ways until both queues are empty; returns the frames carried."""
    carried = []
    for _ in range(rounds):
        moved = False
        for src, dst in ((a, b), (b, a)):
            while src.arp.tx:
                p = src.arp.tx.popleft()
                raw = bytes(p.linearize())
                p.release()
                moved = True
                carried.append(raw)
                if not drop(raw):
                    dst.receive_frame(raw, now)
        if not moved:
            return carried
    raise AssertionError("the hosts kept talking")


def _pair(mtu=1500):
    a, b = Host(1, A_IP, mtu), Host(2, B_IP, mtu)
    run_wire(a, b, 0.0)  # the announcements
    return a, b


class Echo(Endpoint):
    def __init__(self, udp):
        super().__init__()
        self.udp = udp

    def datagram_received(self, data, addr, packet):
        super().datagram_received(data, addr, packet)
        packet.hold()  # reply with the received memory itself, released once sent
        reply = Packet(data, release=packet.release)
        from shoal.net.native.wire import udp as wire_udp

        wire_udp.push(reply, self.udp.ipv4.address, addr[0], 7, addr[1])
        self.udp.ipv4.send(reply, addr[0], 17, 0.0)


def test_udp_echo_with_arp_resolution_and_fragmentation():
    a, b = _pair()
    client = Endpoint()
    port = a.udp.bind(0, client)
    b.udp.bind(7, Echo(b.udp))
    payloads = [b"small", bytes(random.Random(2).randbytes(4000)), bytes(1472), bytes(1473)]
    for p in payloads:
        a.udp.send(port, B_IP, 7, p, 0.0)
    run_wire(a, b, 0.0)
    assert client.datagrams == [(p, (B_IP, 7)) for p in payloads]
    assert a.ip.stats["fragmented"] == 2 and b.ip.stats["reassembled"] == 2 and a.ip.stats["reassembled"] == 2
    assert a.ip.drops == {} and b.ip.drops == {} and a.udp.drops == {} and b.udp.drops == {}
    assert a.arp.lookup(B_IP, 1.0) == b.mac and b.arp.lookup(A_IP, 1.0) == a.mac


def test_ping_both_ways_including_fragmented():
    a, b = _pair(mtu=1500)
    replies = []
    a.icmp.echo_reply_handler = lambda hdr, m, now: replies.append((hdr.src, m.echo_id, m.echo_seq, bytes(m.payload)))
    big = bytes(range(256)) * 16  # a 4096-byte ping fragments both ways
    a.icmp.echo_request(B_IP, 9, 1, b"hello", 0.0)
    a.icmp.echo_request(B_IP, 9, 2, big, 0.0)
    run_wire(a, b, 0.0)
    assert replies == [(B_IP, 9, 1, b"hello"), (B_IP, 9, 2, big)]
    assert b.icmp.stats["echo-replies"] == 2


def test_closed_port_reports_econnrefused_to_sender():
    a, b = _pair()
    client = Endpoint()
    port = a.udp.bind(5000, client)
    a.udp.send(port, B_IP, 9999, b"anyone?", 0.0)
    run_wire(a, b, 0.0)
    assert b.udp.drops["no-listener"] == 1 and b.icmp.stats["errors-sent"] == 1
    (exc, addr), = client.errors
    assert exc.errno == errno.ECONNREFUSED and addr == (B_IP, 9999) and exc.icmp_type == 3


def test_unanswered_arp_fails_the_send():
    a, b = _pair()
    errors = []
    a.udp.bind(5000, Endpoint())
    a.udp.send(5000, 0x0A000063, 9, b"nobody", 0.0, on_error=errors.append)
    for t in (1.0, 2.0, 3.0):
        a.poll(t)
        run_wire(a, b, t)
    assert [e.errno for e in errors] == [errno.EHOSTUNREACH] and a.arp.pending == {}


def test_lost_arp_reply_is_retried():
    a, b = _pair()
    client = Endpoint()
    a.udp.bind(5000, client)
    b.udp.bind(7, Echo(b.udp))
    dropped = []

    def drop_first_reply(raw):
        f = ethernet.parse(memoryview(raw))
        if f.ethertype == ethernet.ETHERTYPE_ARP and raw[21] == 2 and not dropped:
            dropped.append(raw)
            return True
        return False

    a.udp.send(5000, B_IP, 7, b"retry", 0.0)
    run_wire(a, b, 0.0, drop=drop_first_reply)
    assert client.datagrams == [] and dropped
    a.poll(1.0)
    run_wire(a, b, 1.0)
    assert client.datagrams == [(b"retry", (B_IP, 7))]


def test_buffers_are_recycled():
    a, b = _pair()
    b.udp.bind(7, Echo(b.udp))
    a.udp.bind(5000, Endpoint())
    a.udp.send(5000, B_IP, 7, bytes(3000), 0.0)
    carried = run_wire(a, b, 0.0)
    assert a.released + b.released == len(carried) + 2  # + the announcements at start


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([0x0800, 0x0806]))
def test_garbage_frames_never_raise(junk, ethertype):
    a, b = _pair()
    frame = ethernet.build(b.mac, a.mac, ethertype, junk)
    b.receive_frame(frame, 0.0)
    b.receive_frame(junk, 0.0)
    b.poll(40.0)
    run_wire(a, b, 40.0)
