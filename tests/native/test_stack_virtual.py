"""Two native stacks over a virtual wire, driven by the runtime's reactor in one loop."""
import asyncio
import contextlib
import errno
import ipaddress
import multiprocessing
import os
import random

import pytest

from shoal.drivers.faults import FaultInjector, Faults
from shoal.drivers.pcap import PcapWriter, read_pcap
from shoal.drivers.virtual import SharedWire, VirtualWire
from shoal.net.native.config import NativeConfig
from shoal.net.native.stack import NativeStack
from shoal.net.native.wire import ethernet, ipv4 as wire_ipv4, udp as wire_udp
from shoal.runtime.reactor import Reactor
from test_native_tcp_virtual import connected_pair, until

A_IP, B_IP = "10.9.0.1", "10.9.0.2"
MASK = int(ipaddress.IPv4Address("255.255.255.0"))


def static(ip):
    return NativeConfig("unused", False, int(ipaddress.IPv4Address(ip)), MASK, None, None, None)


@contextlib.asynccontextmanager
async def two_stacks(mtu=1500, faults=None, seed=1, pcap=None):
    """Stacks A and B on a virtual wire; A's side can have faults and a capture (`pcap`: a path)."""
    loop = asyncio.get_running_loop()
    reactor = Reactor(loop, idle_poll_time=0.0005)
    wire = VirtualWire(mtu=mtu, randbytes=random.Random(seed).randbytes)
    dev_a = wire.a if faults is None else FaultInjector(wire.a, seed, rx=faults, tx=faults)
    if pcap is not None:
        dev_a = PcapWriter(dev_a, pcap)
    a = NativeStack(dev_a, static(A_IP), rng=random.Random(seed))
    b = NativeStack(wire.b, static(B_IP), rng=random.Random(seed + 1))
    a.start(reactor)
    b.start(reactor)
    reactor.start()
    try:
        yield a, b, wire
    finally:
        await a.stop()
        await b.stop()
        reactor.close()
        reactor.check_fatal()


async def receive(channel, timeout=10):
    data, source = await asyncio.wait_for(channel.receive(), timeout)
    return bytes(data), source


def test_udp_round_trip_resolves_arp_and_reports_sources():
    async def main():
        async with two_stacks() as (a, b, _):
            ca = a.udp_channel(("", 0))
            cb = b.udp_channel((B_IP, 5000))
            assert cb.local_address == (B_IP, 5000) and 49152 <= ca.port <= 65535
            await ca.send((B_IP, 5000), b"ping")
            data, source = await receive(cb)
            assert data == b"ping" and source == (A_IP, ca.port)
            await cb.send(source, memoryview(b"pong"))
            assert await receive(ca) == (b"pong", (B_IP, 5000))
            counters = a.counters()
            assert counters["arp"]["stats"]["sent"] >= 1 and counters["udp"]["stats"]["received"] == 1
            assert counters["ethernet"]["stats"]["rx-frames"] >= 2

    asyncio.run(main())


def test_datagrams_to_a_bound_port_take_the_one_unpack_path(monkeypatch):
    """A unicast datagram in the common layout to a bound port is taken by
    `wire.udp_frame.parse` and handed to its endpoint, counted as `Udp.receive` counts it;
    the three layers see it no more. One to a closed port, or fragmented, goes the long
    way (its ICMP error, its reassembly)."""
    from shoal.net.native.wire import udp_frame
    taken = []
    parse = udp_frame.parse

    def counting(*args):
        got = parse(*args)
        taken.append(got is not None)
        return got
    monkeypatch.setattr(udp_frame, "parse", counting)

    async def main():
        async with two_stacks() as (a, b, _):
            long_way = []
            udp_receive = b.ipv4.handlers[wire_ipv4.PROTO_UDP]
            b.ipv4.handlers[wire_ipv4.PROTO_UDP] = lambda *args: long_way.append(1) or udp_receive(*args)
            ca, cb = a.udp_channel(("", 0)), b.udp_channel(("", 7))
            for i in range(20):
                await ca.send((B_IP, 7), b"datagram %d" % i)
                assert await receive(cb) == (b"datagram %d" % i, (A_IP, ca.port))
            await cb.send((A_IP, ca.port), b"back")
            assert await receive(ca) == (b"back", (B_IP, 7))
            assert taken.count(True) == 21 and not long_way
            assert b.udp.stats["received"] == 20 and b.udp.stats["bytes-received"] == 210
            assert b.ipv4.stats["delivered"] == 20
            await ca.send((B_IP, 9), b"closed")
            await ca.send((B_IP, 7), bytes(3000))  # (two fragments)
            assert await receive(cb) == (bytes(3000), (A_IP, ca.port))
            assert b.udp.drops["no-listener"] == 1 and b.icmp.stats["errors-sent"] == 1
            assert len(long_way) == 2 and b.udp.stats["received"] == 21 and b.ipv4.stats["reassembled"] == 1

    asyncio.run(main())


def test_a_udp_flood_does_not_starve_the_shards_tcp():
    """UDP datagrams queue for the device at once (their sender waits only at
    `TX_HIGH_WATER`), while TCP's segments are pulled when there is room: a sender that
    keeps the queue full must leave TCP a share of each burst. (Seen as an iperf3 -u -R
    test whose TEST_START never left the control connection.)"""
    async def main():
        async with two_stacks() as (a, b, _):
            _server, client, conn = await connected_pair(a, b, 8000)
            ca, cb = a.udp_channel(("", 0)), b.udp_channel(("", 7))
            flooding = True
            sent = 0

            async def flood():
                nonlocal sent
                while flooding and sent < 200_000:  # (bounded: a stack that starves TCP never ends it)
                    await ca.send((B_IP, 7), bytes(200))
                    sent += 1
            flooder = asyncio.ensure_future(flood())
            await until(lambda: len(a.arp.tx) > 300, "a queue full of datagrams")
            await client.write(b"over TCP, during the flood")
            assert await asyncio.wait_for(conn.read(), 30) == b"over TCP, during the flood"
            assert not flooder.done()  # (it arrived during the flood, not after)
            flooding = False
            await flooder
            cb.close()

    asyncio.run(main())


def test_large_datagrams_fragment_and_reassemble():
    async def main():
        async with two_stacks(mtu=1500) as (a, b, _):
            ca, cb = a.udp_channel(("", 0)), b.udp_channel(("", 7))
            payload = bytes(random.Random(3).randbytes(8000))
            await ca.send((B_IP, 7), payload)
            data, _ = await receive(cb)
            assert data == payload
            assert a.ipv4.stats["fragmented"] == 1 and b.ipv4.stats["reassembled"] == 1

    asyncio.run(main())


def test_closed_port_gives_icmp_port_unreachable_to_the_sender():
    async def main():
        async with two_stacks() as (a, b, _):
            ca = a.udp_channel(("", 0))
            await ca.send((B_IP, 9), b"anyone?")
            for _ in range(1000):
                if ca.errors:
                    break
                await asyncio.sleep(0.01)
            (err,) = ca.errors
            assert err.errno == errno.ECONNREFUSED and f"{B_IP}:9" in str(err)
            assert b.udp.drops["no-listener"] == 1 and b.icmp.stats["errors-sent"] == 1

    asyncio.run(main())


def test_unresolvable_neighbour_fails_the_send_later():
    async def main():
        async with two_stacks() as (a, _b, _):
            a.arp.retry_interval = 0.02
            ca = a.udp_channel(("", 0))
            await ca.send(("10.9.0.77", 9), b"nobody")
            for _ in range(1000):
                if ca.errors:
                    break
                await asyncio.sleep(0.01)
            assert ca.errors[0].errno == errno.EHOSTUNREACH
            assert a.arp.stats["resolution-failures"] == 1
            with pytest.raises(OSError) as info:
                await ca.send(("192.0.2.1", 9), b"off-link")  # no gateway configured
            assert info.value.errno == errno.ENETUNREACH and "192.0.2.1:9" in str(info.value)
            assert len(ca.errors) == 1  # raised at once, so not also kept for later

    asyncio.run(main())


def test_bad_frames_are_counted_by_reason_and_never_raise():
    async def main():
        async with two_stacks() as (a, b, wire):
            ca, cb = a.udp_channel(("", 0)), b.udp_channel(("", 7))
            await ca.send((B_IP, 7), b"warm-up")  # resolves ARP both ways
            await receive(cb)
            src, dst = a.mac, b.mac
            good_ip = wire_ipv4.build(int(ipaddress.IPv4Address(A_IP)), int(ipaddress.IPv4Address(B_IP)),
                                      wire_ipv4.PROTO_UDP,
                                      wire_udp.build(int(ipaddress.IPv4Address(A_IP)),
                                                     int(ipaddress.IPv4Address(B_IP)), 1, 7, b"x"))
            bad = [
                b"\x01\x02",  # truncated
                ethernet.build(b"\x02" * 6, src, ethernet.ETHERTYPE_IPV4, good_ip),  # another host's MAC
                ethernet.build(b"\x01\x00\x5e\x00\x00\x01", src, ethernet.ETHERTYPE_IPV4, good_ip),  # multicast
                ethernet.build(dst, src, ethernet.ETHERTYPE_IPV4, good_ip, vlans=(5,)),
                ethernet.build(dst, src, ethernet.ETHERTYPE_IPV6, bytes(40)),
                ethernet.build(dst, src, 0x88B5, b"local experimental"),
                ethernet.build(dst, dst, ethernet.ETHERTYPE_IPV4, good_ip),  # our own source MAC
                ethernet.build(dst, src, ethernet.ETHERTYPE_IPV4, good_ip[:10]),  # truncated IPv4
                ethernet.build(dst, src, ethernet.ETHERTYPE_ARP, b"\x00" * 5),  # truncated ARP
            ]
            wire.a.tx_burst(bad + [ethernet.build(dst, src, ethernet.ETHERTYPE_IPV4, good_ip)])
            data, source = await receive(cb)
            assert (data, source) == (b"x", (A_IP, 1))
            assert b.drops == {"truncated": 1, "not-our-mac": 1, "multicast": 1, "vlan-tagged": 1, "ipv6": 1,
                               "unknown-ethertype": 1, "own-source-mac": 1}
            assert b.ipv4.drops["truncated"] == 1 and b.arp.drops["truncated"] == 1

    asyncio.run(main())


def test_terrible_network_delivers_only_intact_datagrams(tmp_path):
    faults = Faults(loss=0.1, duplicate=0.1, reorder=0.1, corrupt=0.1)
    capture = tmp_path / "a.pcap"
    macs = []

    async def main():
        async with two_stacks(faults=faults, seed=11, pcap=capture) as (a, b, _):
            macs.append(a.mac)
            ca, cb = a.udp_channel(("", 0)), b.udp_channel(("", 7))
            sent = {b"datagram-%04d" % i + bytes(50) for i in range(300)}
            for payload in sorted(sent):
                await ca.send((B_IP, 7), payload)
                await asyncio.sleep(0)
            got = []
            with contextlib.suppress(asyncio.TimeoutError):
                while True:
                    got.append((await receive(cb, timeout=0.5))[0])
            assert set(got) <= sent and len(got) > 150
            stats = a.device.inner.stats
            assert stats["tx_corrupted"] > 0 and stats["tx_duplicated"] > 0 and stats["tx_lost"] > 0
            dropped = sum(b.ipv4.drops.values()) + sum(b.udp.drops.values()) + sum(b.drops.values())
            assert dropped > 0

    asyncio.run(main())
    frames = [f for _, f in read_pcap(capture)]
    # the capture sits above the fault injector: it holds what A sent and what reached A
    assert sum(1 for f in frames if f[6:12] == macs[0]) >= 300


def _stack_echo_process(port, count):
    """Child process: a native stack with a UDP echo service on `port` (a SharedWire port)."""
    async def serve():
        reactor = Reactor(asyncio.get_running_loop(), idle_poll_time=0.0005)
        stack = NativeStack(port, static(B_IP), rng=random.Random(2))
        stack.start(reactor)
        reactor.start()
        channel = stack.udp_channel(("", 7))
        for _ in range(count):
            data, source = await channel.receive()
            await channel.send(source, data)
        for _ in range(100):  # let the last reply leave before the process exits
            if not stack.arp.tx and not stack.device_poller.has_pending_tx():
                break
            await asyncio.sleep(0.01)
        await stack.stop()
        reactor.close()

    asyncio.run(serve())
    os._exit(0)


def test_two_stacks_in_two_processes_over_shared_memory():
    count = 50
    with SharedWire(randbytes=random.Random(4).randbytes) as wire:
        child = multiprocessing.get_context("fork").Process(target=_stack_echo_process, args=(wire.b, count))
        child.start()
        try:
            async def main():
                reactor = Reactor(asyncio.get_running_loop(), idle_poll_time=0.0005)
                a = NativeStack(wire.a, static(A_IP), rng=random.Random(1))
                a.start(reactor)
                reactor.start()
                try:
                    channel = a.udp_channel(("", 0))
                    for i in range(count):
                        payload = b"%d" % i * (1 + i * 40)  # up to ~8 KB: fragmented across the processes
                        await channel.send((B_IP, 7), payload)
                        assert await receive(channel) == (payload, (B_IP, 7))
                finally:
                    await a.stop()
                    reactor.close()

            asyncio.run(main())
            child.join(30)
            assert child.exitcode == 0
        finally:
            if child.is_alive():
                child.kill()
                child.join()


def test_closing_a_channel_frees_its_port_and_fails_its_receive():
    async def main():
        async with two_stacks() as (a, b, _):
            cb = b.udp_channel(("", 53))
            with pytest.raises(OSError) as info:
                b.udp_channel(("", 53))
            assert info.value.errno == errno.EADDRINUSE
            with pytest.raises(OSError) as info:
                b.udp_channel((A_IP, 54))  # not this interface's address
            assert info.value.errno == errno.EADDRNOTAVAIL
            pending = asyncio.ensure_future(cb.receive())
            await asyncio.sleep(0)
            cb.close()
            with pytest.raises(ConnectionAbortedError):
                await pending
            with pytest.raises(ConnectionAbortedError):
                await cb.send((A_IP, 1), b"late")
            again = b.udp_channel(("", 53))
            assert again.port == 53 and b._channels == {again}

    asyncio.run(main())
